"""The GRPO-step sections of ``make gpu-check`` (run in one process by ``bench.gpu_sections``).

The policy is a random-init Qwen3-MoE saved to a temporary folder (``BIG``: 151,936-token
vocabulary, 16 layers of 24 experts, top-4, about 1.2B parameters; ``--small``: the 27M model of
``bench.shard`` at the tiny tokenizer's vocabulary), with the tokenizer of ``r1kit.tiny`` (its
few hundred tokens; the model's other ids decode to nothing). The trainer is built as ``r1kit
train`` builds it (``r1kit.train.build_trainer`` on ``recipes/tiny_grpo_hf.yaml`` with overrides:
the HF engine, ``model.dtype: bfloat16`` over float32 masters, the ``seeded_noise`` reward, no
zero-variance filter).

- ``grpo_step``: one rollout (``GRPOTrainer.rollout``: prompts x n completions of up to
  ``max_tokens``; tokens/s), ``prepare``, then ``update`` twice on that batch (cold, warm): seconds,
  peak ``torch.cuda.max_memory_allocated``, and MFU of the warm update = 6 x active matmul
  parameters (``r1kit.footprint.Counts.matmul_active``: routed experts at top-k / experts, the LM
  head, no embedding lookup) x the batch's tokens (prompts and completions, padding not
  counted) / seconds / the device's dense bf16 peak (``PEAK_BF16``; "unknown" for a device not
  in it).
- ``logprob_memory``: forward + backward of the trainer's policy (float32 masters under bf16
  autocast, as in ``update``) over ``lp_rows`` x ``lp_tokens`` random tokens: r1kit's chunked
  pass (``grpo.logprobs.completion_logprobs``) at each ``logprob_chunk`` of the sweep, against the
  full ``(B, C, V)`` logits with ``log_softmax`` + ``gather`` (what TRL's trainer computes): peak
  memory over what was allocated before, seconds, and the largest log-prob difference between
  the two. The recommended chunk is the smallest within 5% of the fastest.
- ``sync_debug``: ``torch.cuda.set_sync_debug_mode("warn")`` around one ``update`` and one HF
  ``generate``: the synchronizing-operation warnings counted per call, with their most frequent
  source lines (a count, not a failure; on the CPU there is no CUDA to sync with: 0, mode n/a).
- ``deterministic`` (``bench.gpu_deterministic``, a fresh process with ``CUBLAS_WORKSPACE_CONFIG``
  set before CUDA starts, ``train.deterministic: true``): the same seeded ``generate`` twice and
  the same ``update`` twice from the same weights and optimiser state; token ids, loss, gradient
  norm and updated weights bit-identical, or the error.
- ``trl_step``: the same step through TRL's ``GRPOTrainer`` (``bench.gpu_trl``), where TRL and
  ``datasets`` are installed; skipped, with that reason, elsewhere.

Memory figures are "n/a" on the CPU (no CUDA counters); so is MFU.
"""

from __future__ import annotations

import collections
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUDGET_SPENT = "the time budget was spent before it started"
BIG = {"vocab_size": 151936, "hidden_size": 1024, "num_hidden_layers": 16,
       "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 64,
       "moe_intermediate_size": 768, "num_experts": 24, "num_experts_per_tok": 4,
       "max_position_embeddings": 8192}
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
             ("A100", 312e12), ("B200", 2250e12))
"""Dense bf16 tensor-core peak FLOP/s (NVIDIA datasheets, without sparsity), first match of a
name fragment in ``torch.cuda.get_device_name``."""


@dataclass(frozen=True)
class Sizes:
    prompts: int
    """Prompts of the GRPO step."""
    n: int
    """Completions per prompt."""
    max_tokens: int
    """Tokens per completion (a random model rarely samples EOS: nearly all run to the end)."""
    lp_rows: int
    """Rows of the log-prob memory batch."""
    lp_tokens: int
    """Tokens per row of that batch (``lp_prompt`` prompt, the rest completion)."""
    lp_prompt: int
    chunks: tuple[int, ...]
    """The ``logprob_chunk`` sweep."""
    det_prompts: int
    """Prompts, completions and tokens of the deterministic section (kept short: deterministic
    kernels are slower)."""
    det_n: int
    det_tokens: int
    sync_tokens: int
    """Tokens per completion of the generate under ``sync_debug``."""


SIZES = {
    False: Sizes(prompts=8, n=4, max_tokens=256, lp_rows=8, lp_tokens=1024, lp_prompt=64,
                 chunks=(256, 1024, 4096, 16384), det_prompts=4, det_n=2, det_tokens=64,
                 sync_tokens=32),
    True: Sizes(prompts=2, n=2, max_tokens=8, lp_rows=2, lp_tokens=48, lp_prompt=8,
                chunks=(16, 64, 256), det_prompts=1, det_n=2, det_tokens=4, sync_tokens=4),
}


def model_config(small: bool):
    """``bench.shard``'s 27M Qwen3-MoE config, or with ``BIG``'s fields unless ``small``."""
    from bench.shard import moe_config

    cfg = moe_config()
    if not small:
        for key, value in BIG.items():
            setattr(cfg, key, value)
    return cfg


def peak_bf16(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a device by name, None when not in ``PEAK_BF16``.

    >>> peak_bf16("NVIDIA H100 80GB HBM3"), peak_bf16("NVIDIA H100 PCIe"), peak_bf16("cpu")
    (989000000000000.0, 756000000000000.0, None)
    """
    return next((flops for key, flops in PEAK_BF16 if key in device_name), None)


def seeded_noise(completions: list[str], **kwargs) -> list[float]:
    """The step's reward: a fixed pseudo-random number in [0, 1) per completion (the same
    stream on every call), so that every group has advantages to train on. The BIG model samples
    from 151,936 ids, of which the tiny tokenizer decodes a few hundred (the rest decode to
    nothing): a reward read from the text would be 0 nearly everywhere.

    >>> [round(x, 3) for x in seeded_noise(["", "", "x"])]
    [0.844, 0.758, 0.421]
    """
    rng = random.Random(0)
    return [rng.random() for _ in completions]


def save_model(folder: Path, small: bool, device: str) -> Path:
    """The random-init policy (seed 0, bf16) and the tiny tokenizer, saved into ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM

    from r1kit.tiny import build_tokenizer

    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds, not a minute on the CPU
        model = AutoModelForCausalLM.from_config(model_config(small), dtype=torch.bfloat16)
    model.save_pretrained(folder)
    build_tokenizer(0).save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def trainer_config(folder: Path, out: Path, device: str, prompts: int, n: int, tokens: int,
                   extra: list[str] = ()):
    """The recipe ``r1kit train`` would run: ``tiny_grpo_hf.yaml`` pointed at ``folder``."""
    from r1kit.config import load_config

    return load_config(REPO / "recipes/tiny_grpo_hf.yaml", [
        f"model.path={folder}", f"log.out_dir={out}", "model.dtype=bfloat16",
        "reward.funcs=[bench.gpu_step:seeded_noise]", "reward.weights=[1.0]", "reward.workers=1",
        "algo.filter_zero_variance=false", "algo.mask_truncated=false",
        f"rollout.n={n}", f"rollout.max_tokens={tokens}", f"rollout.max_model_len={tokens + 256}",
        f"rollout.batch_size={prompts * n}", f"train.prompts_per_step={prompts}",
        f"train.token_budget={max(4096, prompts * n * (tokens + 64))}", f"train.device={device}",
        "train.steps=1", "train.lr=1e-5", "train.save_every=0", "train.sample_every=0",
        "train.tensorboard=false", *extra])


class Context:
    """What the sections share: sizes, the saved model, and one trainer built on first use."""

    def __init__(self, device: str, small: bool, folder: Path, out_dir: Path):
        import torch

        self.device, self.small, self.folder, self.out_dir = device, small, folder, out_dir
        self.cuda = device == "cuda"
        self.sizes = SIZES[small]
        self.name = torch.cuda.get_device_name(0) if self.cuda else "cpu"
        self._trainer = None
        self.batch = None  # the grpo_step's TrainBatch, reused by sync_debug
        self.early_deterministic = None  # bench.gpu_deterministic's process, started early

    def trainer(self):
        if self._trainer is None:
            from r1kit.train import build_trainer

            s = self.sizes
            self._trainer = build_trainer(trainer_config(
                self.folder, self.out_dir / "run", self.device, s.prompts, s.n, s.max_tokens),
                show_progress=False)
        return self._trainer

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> int:
        """Clear the peak counter; the bytes allocated now (0 on the CPU)."""
        import torch

        if not self.cuda:
            return 0
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak(self) -> int | None:
        import torch

        return torch.cuda.max_memory_allocated() if self.cuda else None

    def close(self) -> None:
        """Stop the trainer and free its memory (the sections after it start their own)."""
        import gc

        import torch

        if self._trainer is not None:
            self._trainer.p.close()
            self._trainer.p.parallel.close()
            self._trainer = self.batch = None
        gc.collect()  # the policy may sit in reference cycles (engine, recorder hooks)
        if self.cuda:
            torch.cuda.empty_cache()


def timed_update(ctx: Context, trainer, batch) -> dict[str, Any]:
    before = ctx.reset_peak()
    t0 = time.perf_counter()
    stats = trainer.update(batch)
    ctx.sync()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_bytes": ctx.peak(), "allocated_before": before,
            "loss": stats["loss"], "grad_norm": stats["grad_norm"]}


def grpo_step(ctx: Context) -> dict[str, Any]:
    from r1kit.footprint import count_params

    trainer = ctx.trainer()
    ro = trainer.rollout()
    stats = trainer.p.engine.last_stats
    batch = trainer.prepare(ro)
    ctx.batch = batch
    tokens = sum(len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids))
    cold = timed_update(ctx, trainer, batch)
    warm = timed_update(ctx, trainer, batch)
    counts = count_params(model_config(ctx.small))
    peak = peak_bf16(ctx.name) if ctx.cuda else None
    flops = 6 * counts.matmul_active * tokens
    return {
        "parameters": counts.total, "active_matmul_parameters": counts.matmul_active,
        "rows": batch.rows, "update_tokens": tokens, "logprob_chunk": trainer.cfg.train.logprob_chunk,
        "generate": {"completions": stats.completions, "new_tokens": stats.new_tokens,
                     "seconds": stats.seconds, "tokens_per_s": stats.new_tokens / stats.seconds,
                     "peak_bytes": stats.peak_memory_bytes if ctx.cuda else None},
        "update_cold": cold, "update_warm": warm,
        "update_flops": flops, "peak_bf16_flops": peak if peak else "unknown",
        "mfu": flops / warm["seconds"] / peak if peak and ctx.cuda else None,
        "finite": all(math.isfinite(u[k]) for u in (cold, warm) for k in ("loss", "grad_norm")),
    }


def logprob_batch(ctx: Context, vocab: int):
    import torch

    s, dev = ctx.sizes, torch.device(ctx.device)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, vocab, (s.lp_rows, s.lp_tokens), generator=g).to(dev)
    plens = torch.full((s.lp_rows,), s.lp_prompt, device=dev)
    return ids, torch.ones_like(ids), plens, torch.full_like(plens, s.lp_tokens - s.lp_prompt)


def full_logits_logprobs(model, ids, mask, plens):
    """(B, C) log-probs of the completion tokens from whole ``(B, C, V)`` logits, as TRL's
    trainer gets them (``logits_to_keep`` = C + 1, the last position dropped), then a float32
    ``log_softmax`` and ``gather``. Rows share one prompt length here."""
    import torch

    c = ids.shape[1] - int(plens[0])
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=c + 1,
                   use_cache=False).logits[:, :-1]  # (B, C, V)
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, C, V)
    return logp.gather(-1, ids[:, -c:, None]).squeeze(-1)  # (B, C)


def logprob_memory(ctx: Context) -> dict[str, Any]:
    import torch

    from grpo.logprobs import completion_logprobs
    from grpo.update import autocast_to

    trainer = ctx.trainer()
    model, compute = trainer.p.policy, trainer.p.objective.compute_dtype
    model.train()
    ids, mask, plens, clens = logprob_batch(ctx, model.config.vocab_size)

    def run(chunk: int | None):
        model.zero_grad(set_to_none=True)
        before = ctx.reset_peak()
        t0 = time.perf_counter()
        with autocast_to(ids.device, compute):
            if chunk is None:
                logp = full_logits_logprobs(model, ids, mask, plens)
            else:
                logp = completion_logprobs(model, ids, mask, plens, clens,
                                           chunk_tokens=chunk).logp
        logp.float().mean().backward()
        ctx.sync()
        seconds = time.perf_counter() - t0
        peak = ctx.peak()
        model.zero_grad(set_to_none=True)
        return logp.detach().float(), {"seconds": seconds,
                                       "peak_extra_bytes": None if peak is None else peak - before}

    s = ctx.sizes
    run(s.chunks[0])  # warm-up: kernels, allocator
    sweep, diffs = [], []
    ref, full = run(None)
    for chunk in s.chunks:
        logp, rec = run(chunk)
        diffs.append(float((logp - ref).abs().max()))
        sweep.append({"chunk": chunk, **rec})
    fastest = min(r["seconds"] for r in sweep)
    best = min(r["chunk"] for r in sweep if r["seconds"] <= 1.05 * fastest)
    finite = bool(torch.isfinite(ref).all()) and all(math.isfinite(r["seconds"]) for r in sweep)
    return {"rows": s.lp_rows, "tokens": s.lp_tokens,
            "completion_tokens": int(clens.sum()), "vocab": model.config.vocab_size,
            "full_logits": full, "chunked": sweep, "max_abs_logp_diff": max(diffs),
            "recommended_chunk": best, "finite": finite}


def count_syncs(ctx: Context, fn: Callable[[], Any]) -> dict[str, Any]:
    """``fn()`` under ``set_sync_debug_mode("warn")`` (CUDA): the synchronizing-operation
    warnings it raised and their most frequent source lines."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if ctx.cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
            ctx.sync()
        finally:
            if ctx.cuda:
                torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    sites = collections.Counter(f"{os.path.relpath(w.filename, REPO)}:{w.lineno}" for w in syncs)
    return {"syncs": len(syncs), "other_warnings": len(caught) - len(syncs),
            "top_sites": sites.most_common(8), "mode": "warn" if ctx.cuda else "n/a (cpu)"}


def sync_debug(ctx: Context) -> dict[str, Any]:
    from rollouts.types import Sampling

    trainer = ctx.trainer()
    s = ctx.sizes
    if ctx.batch is None:  # grpo_step did not get as far as a batch
        ctx.batch = trainer.prepare(trainer.rollout())
    prompts = [trainer.p.prompt_fn(p.question) for p in trainer.p.data.take(s.prompts)]
    engine = trainer.p.engine
    return {"update": count_syncs(ctx, lambda: trainer.update(ctx.batch)),
            "generate": count_syncs(ctx, lambda: engine.generate(
                prompts, s.n, Sampling(max_tokens=s.sync_tokens, seed=3))),
            "generate_tokens": s.prompts * s.n * s.sync_tokens}


def error_of(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip()[-1500:]}"
