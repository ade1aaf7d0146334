"""``r1kit bench train``: seconds per GRPO step and peak memory, r1kit against TRL, in one run.

Step time. Three contenders train the same tiny Qwen3-MoE (float32, the same number of OpenMP
threads: ``--threads``, 1 by default, see below) on the same synthetic arithmetic prompts: 4
prompts x a group of 8 = 32 completions of exactly 64 tokens per step, loss DAPO (token mean,
PPO-clip 0.2 / 0.28), beta 0, lr 1e-6, one optimiser step per generation batch, the same trivial
reward (``digit_reward``):

- ``trl_hf``: TRL's ``GRPOTrainer`` with transformers generation (``use_vllm=False``,
  generation_batch_size 32, ``router_aux_loss_coef=0`` so that it optimises what r1kit does:
  TRL's MoE default adds the router load-balancing loss, r1kit's ``algo.aux_loss_coef`` is 0).
- ``r1kit_hf``: ``r1kit.train.build_trainer`` + ``run_step`` with ``rollout.engine=hf``
  (``rollout.batch_size=32``: one generate call, as TRL; dynamic sampling and truncation masking
  off, as TRL's defaults).
- ``r1kit_vllm``: the same with the colocated vLLM engine (``VLLM_CPU_KVCACHE_SPACE=1``).
- ``r1kit_hf_v4``: ``r1kit_hf``'s run on the tiny DeepSeek-V4 (``tiny:deepseek_v4``: mHC, hash
  and top-k MoE, compressed attention) beside the tiny Qwen3-MoE, with ``rollout.batch_size=8``
  (one prompt's group per generate call: V4 must not be left-padded, docs/TRAINING.md). No TRL
  counterpart; the table gives its seconds per step and completion tokens per second next to
  ``r1kit_hf``'s.

Completions are forced to the full 64 tokens on every engine: ``min_new_tokens=64`` in TRL's
``generation_kwargs``, ``rollout.min_tokens=64`` for r1kit (``Sampling.min_tokens``, which the HF
engine's decode loop and vLLM's ``min_tokens`` honour). Each contender runs 1 warm-up step, then
K timed steps; a step is everything between two steps (generation, reward, advantages, loss,
backward, optimiser, weight sync, logging); the figure is the median. Peak RSS is the worker's
``ru_maxrss`` (reward worker processes not included).

Memory. A Qwen3-MoE as small as the tiny one but with Qwen's 151,936-token vocabulary (random
init, no tokenizer), 8 sequences x (512 prompt + 512 completion) tokens: one on-policy log-prob +
GRPO loss + backward through r1kit's ``grpo.update.microbatch_loss`` (chunked LM head,
the default ``train.logprob_chunk``) against TRL's ``compute_loss`` on a constructed trainer (its
``_get_per_token_logps_and_entropies``: the fused, tiled LM head TRL patches in; on CPU it scores
every position). The figure is the peak RSS increase over the RSS just before the call:
``ru_maxrss`` after the call minus the RSS before it (exact, as long as the call's peak is the
process's highest, which the worker checks), with a 1 ms psutil sampler as a cross-check.

``--async`` runs two other contenders instead: ``r1kit_server_sync`` and ``r1kit_server_async``,
``r1kit_hf``'s step with the ``vllm_server`` engine and ``train.async_steps`` 0 and 1, the
sampler's processes pinned to the last core and the trainer to the others (what each would have
with hardware of its own; vLLM's default binds its threads to every core). The table gives
seconds per step, the median generate, update and sync-plus-wait times that explain them, the
staleness, and the speedup of one-step-off over synchronous (target 1.3x).

``--grid`` runs ``r1kit_hf`` against ``trl_hf`` on rows of settings (a ``Row`` each): the tiny
Qwen3-MoE and the tiny DeepSeek-V3 (MLA, sigmoid routing with a shared expert) x beta 0 and 0.04
(KL to the reference, k3, in the loss) x router aux loss 0 and 0.001, both trainers given the same
prompt token ids (R1-Zero text). Per row, ``--pairs`` (3) interleaved pairs of fresh runs of
1 + ``--steps`` steps; per run the mean of all steps (the first included: what a short job pays)
and of steps 2-N; per row the median over pairs of each, and r1kit's ratio to TRL as the median of
the pairs' ratios (target <= 0.6 on both). The table lists the settings in which the two runs of a
row differ (``Row.differences``), and r1kit's scoring seconds in step 1 against later steps.

Every contender runs in a fresh subprocess (``python -m bench.train --worker NAME``), so one's
memory and threads never touch another's. ``OMP_NUM_THREADS`` is set for each (default 1): on a
small shared machine, two spinning OpenMP threads per process made the same step 8x slower and
swing from run to run when other jobs were busy; one thread gives stable figures (the JSON records
the 1-minute load average around each contender). Prints a table and writes JSON.

Run: ``r1kit bench train [--steps 5] [--out runs/bench_train.json] [--no-vocab-bench] [--quick]``,
``r1kit bench train --grid [FAMILY,BETA,AUX ...] [--pairs 3]`` (also ``python -m bench.train``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

from bench.harness import Stopwatch, interleaved, machine, parser, table, timed, write_result

PROMPTS, GROUP, MAX_TOKENS = 4, 8, 64
LR, CLIP_LOW, CLIP_HIGH = 1e-6, 0.2, 0.28
VOCAB = 151_936
MEMORY_SHAPE = {"full": (8, 512, 512), "quick": (2, 128, 128)}  # sequences, prompt, completion
STEP_CONTENDERS = ("trl_hf", "r1kit_hf", "r1kit_vllm", "r1kit_hf_v4")
MEMORY_CONTENDERS = ("trl_memory", "r1kit_memory")
ASYNC_CONTENDERS = ("r1kit_server_sync", "r1kit_server_async")
ASYNC_TARGET = 1.3
"""``--async``: one-step-off training at least this many times faster than synchronous."""
TARGETS = {"r1kit_hf": 0.5, "r1kit_vllm": 0.33, "r1kit_memory": 0.25}
"""r1kit's goal as a ratio to TRL (step time for the step contenders, peak memory increase)."""


NO_HF_AUX_LOSS = ("deepseek_v3",)
"""Families whose transformers model returns no router aux loss (``outputs.aux_loss`` is None)."""
COMMON_DIFFERENCES = (
    ("reward: r1kit scores in its reward worker processes (reward.workers=2, started with the "
     "trainer), TRL calls the function in its own process"),
    "prompt order: each trainer's own seeded shuffle of the same 64 problems")
"""``--grid``: where r1kit's and TRL's runs of every row differ, besides the trainers' code."""


@dataclass(frozen=True)
class Row:
    """One configuration that r1kit and TRL both train: ``--grid`` runs several, each in
    interleaved pairs; the default bench runs ``DEFAULT_ROW``."""

    family: str = "qwen3_moe"
    """Tiny model family (``r1kit.tiny``): the same checkpoint for both trainers."""
    beta: float = 0.0
    """KL coefficient to the reference model; k3 estimator, a per-token loss term, in both."""
    aux_loss_coef: float = 0.0
    """MoE router load-balancing loss coefficient: r1kit's ``algo.aux_loss_coef``, TRL's
    ``router_aux_loss_coef`` (the model's own ``load_balancing_loss_func``)."""
    prompt_style: str = "r1_zero"
    """r1kit's ``rollout.prompt_style``. TRL is given the R1-Zero text, so ``r1_zero`` feeds both
    the same prompt token ids."""

    @property
    def name(self) -> str:
        return f"{self.family} beta={self.beta:g} aux={self.aux_loss_coef:g}"

    @property
    def arg(self) -> str:
        """The row as ``--row`` takes it.

        >>> Row.parse(Row("deepseek_v3", 0.04, 0.001).arg)
        Row(family='deepseek_v3', beta=0.04, aux_loss_coef=0.001, prompt_style='r1_zero')
        """
        return f"{self.family},{self.beta:g},{self.aux_loss_coef:g},{self.prompt_style}"

    @classmethod
    def parse(cls, text: str) -> Row:
        """``FAMILY,BETA,AUX[,PROMPT_STYLE]``."""
        family, beta, aux, *style = text.split(",")
        return cls(family, float(beta), float(aux), *style)

    @property
    def trl_aux_loss_coef(self) -> float:
        """TRL's coefficient: 0 where transformers' model has no aux loss to weight (TRL would
        fail on the missing ``aux_loss``); r1kit computes DeepSeek-V3's sequence-wise one."""
        return 0.0 if self.family in NO_HF_AUX_LOSS else self.aux_loss_coef

    def differences(self) -> list[str]:
        """Where the two trainers' runs of this row differ, besides the trainers' own code.

        >>> Row().differences() == list(COMMON_DIFFERENCES)
        True
        >>> for line in Row("deepseek_v3", 0.04, 0.001, "chat_think").differences()[2:]:
        ...     print(line)
        prompts: r1kit's chat_think template, TRL the R1-Zero text
        aux loss: TRL none (its deepseek_v3 has no aux_loss), r1kit's sequence-wise one x 0.001
        """
        out = list(COMMON_DIFFERENCES)
        if self.prompt_style != "r1_zero":
            out.append(f"prompts: r1kit's {self.prompt_style} template, TRL the R1-Zero text")
        if self.aux_loss_coef != self.trl_aux_loss_coef:
            out.append(f"aux loss: TRL none (its {self.family} has no aux_loss), r1kit's "
                       f"sequence-wise one x {self.aux_loss_coef:g}")
        return out


DEFAULT_ROW = Row(prompt_style="chat_think")
"""The default bench's configuration: r1kit in its default prompt style (chat_think), TRL on the
R1-Zero text, as the bench has always run them."""
V4_ROW = Row("deepseek_v4", prompt_style="chat_think")
"""``r1kit_hf_v4``: the default bench on the tiny DeepSeek-V4."""
GRID = tuple(Row(family, beta, aux) for family in ("qwen3_moe", "deepseek_v3")
             for beta in (0.0, 0.04) for aux in (0.0, 0.001))
GRID_TARGET = 0.6
"""``--grid``: r1kit's step time at most this many times TRL's, on the 6-step mean (first step
included) and on steps 2-N, median of the interleaved pairs."""


def digit_reward(completions: list[str], **_: Any) -> list[float]:
    """Share of a completion's characters that are digits: a trivial reward with some variance.

    >>> digit_reward(["a1", "22", ""])
    [0.5, 1.0, 0.0]
    """
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]


# ---------------------------------------------------------------------------------------------
# Measurements


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class PeakSampler:
    """The highest RSS seen by a thread polling every ``interval`` seconds."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.peak = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> Self:
        self.peak = _rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _step_summary(seconds: list[float], extra: dict[str, Any]) -> dict[str, Any]:
    timed = seconds[1:]  # the first step is the warm-up
    return {"s_per_step": statistics.median(timed), "step_seconds": seconds,
            "peak_rss_mb": _maxrss_mb(), **extra}


def _problems() -> list[str]:
    """TRL's prompts: the R1-Zero text of the problems r1kit draws (``data.num_prompts=64``)."""
    from r1kit.config import DataConfig
    from r1kit.generate import load_problems
    from rollouts.prompts import r1_zero_prompt

    return [r1_zero_prompt(p.question) for p in load_problems(DataConfig(num_prompts=64))]


# ---------------------------------------------------------------------------------------------
# Step-time workers


def worker_trl_hf(steps: int, row: Row = DEFAULT_ROW) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1kit.tiny import build_tiny

    path = build_tiny(row.family)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.watch = Stopwatch()
            self.lengths: list[float] = []

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.watch.restart()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.watch.lap()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
                   **k: Any) -> None:
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    out = tempfile.mkdtemp(prefix="bench-trl-")
    args = GRPOConfig(
        output_dir=out, report_to="none", use_vllm=False, use_cpu=True, bf16=False,
        temperature=1.0, num_generations=GROUP, per_device_train_batch_size=PROMPTS * GROUP,
        generation_batch_size=PROMPTS * GROUP, max_completion_length=MAX_TOKENS,
        generation_kwargs={"min_new_tokens": MAX_TOKENS}, beta=row.beta, loss_type="dapo",
        epsilon=CLIP_LOW, epsilon_high=CLIP_HIGH, learning_rate=LR, max_grad_norm=1.0,
        router_aux_loss_coef=row.trl_aux_loss_coef, max_steps=1 + steps, save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=0)
    clock = Clock()
    trainer = GRPOTrainer(
        model=model, reward_funcs=lambda completions, **kw: digit_reward(completions),
        args=args, train_dataset=Dataset.from_dict({"prompt": _problems()}),
        processing_class=tok, callbacks=[clock])
    trainer.train()
    return _step_summary(clock.watch.laps, {"completion_len": statistics.mean(clock.lengths)})


def _r1kit_steps(engine: str, steps: int, row: Row = DEFAULT_ROW,
                 async_steps: int = 0) -> dict[str, Any]:
    from r1kit.config import load_config, validate_training
    from r1kit.train import build_trainer

    out = tempfile.mkdtemp(prefix=f"bench-r1kit-{engine}-")
    cfg = load_config(None, [
        f"rollout.engine={engine}", f"rollout.n={GROUP}", f"rollout.max_tokens={MAX_TOKENS}",
        f"rollout.min_tokens={MAX_TOKENS}",
        f"rollout.batch_size={GROUP if row.family == 'deepseek_v4' else PROMPTS * GROUP}",
        f"rollout.prompt_style={row.prompt_style}", f"model.path=tiny:{row.family}",
        "data.num_prompts=64",
        "reward.funcs=[bench.train:digit_reward]", "reward.weights=[1.0]",
        "algo.filter_zero_variance=false", "algo.mask_truncated=false", f"algo.beta={row.beta}",
        "algo.kl_estimator=k3", f"algo.aux_loss_coef={row.aux_loss_coef}",
        "algo.aggregation=token_mean", "algo.policy_loss=ppo_clip",
        f"algo.clip_low={CLIP_LOW}", f"algo.clip_high={CLIP_HIGH}",
        f"train.prompts_per_step={PROMPTS}", f"train.steps={1 + steps}", f"train.lr={LR}",
        "train.device=cpu", "train.sample_every=0", "train.save_every=0",
        "train.tensorboard=false", "train.resume=never", f"log.out_dir={out}",
        f"train.async_steps={async_steps}", "log.level=WARNING"])
    validate_training(cfg)
    if engine in ("vllm", "vllm_server"):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU
    split = engine == "vllm_server" and (os.cpu_count() or 1) > 1
    if split:
        # Trainer and sampler on their own cores, as they would be on their own GPUs: the
        # server's processes (API server, engine core, worker) start pinned to the last core,
        # which vLLM's CPU worker also binds its OpenMP threads to; the trainer then moves to
        # the others. (vLLM's default binds to every core, and a trainer thread on one of them
        # stalls its parallel regions.) Both server contenders get the same placement.
        last = os.cpu_count() - 1
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(last)
        os.sched_setaffinity(0, {last})  # children started now inherit it
    trainer = build_trainer(cfg, show_progress=False)
    if split:
        os.sched_setaffinity(0, set(range(last)))
    watch, metrics = Stopwatch(), []
    try:
        for _ in range(1 + steps):
            metrics.append(trainer.run_step())
            watch.lap()
    finally:
        trainer.close()
        trainer.p.close()
    seconds = watch.laps
    parts = {f"median_{k.replace('/', '_')}": statistics.median(m.get(k, 0.0) for m in metrics[1:])
             for k in ("time/generate", "time/rollout", "time/update", "time/sync",
                       "time/wait_rollout", "staleness")}
    tokens = statistics.mean(m["response_len"] for m in metrics) * PROMPTS * GROUP
    return _step_summary(seconds, {"completion_len": statistics.mean(
        m["response_len"] for m in metrics), **parts,
        "tokens_per_s": tokens / statistics.median(seconds[1:] or seconds),
        "step_parts": [{k: v for k, v in m.items() if k.startswith("time/")} for m in metrics]})


# ---------------------------------------------------------------------------------------------
# Memory workers: one log-prob + loss + backward at a 151,936-token vocabulary


def _big_vocab_model():
    import torch
    from transformers import AutoModelForCausalLM

    from r1kit.tiny import tiny_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("qwen3_moe", VOCAB, eos_id=0),
                                             dtype=torch.float32)
    return model.train()


def _measure(fn: Callable[[], Any], setup: dict[str, Any]) -> dict[str, Any]:
    import gc

    gc.collect()
    before, peak_before = _rss_mb(), _maxrss_mb()
    with PeakSampler() as sampler:
        _, seconds = timed(fn)
    peak_after = _maxrss_mb()
    exact = peak_after > peak_before  # the call set the process's peak: ru_maxrss is its peak
    return {"peak_increase_mb": (peak_after if exact else sampler.peak) - before,
            "peak_increase_mb_sampled": sampler.peak - before, "exact": exact,
            "rss_before_mb": before, "seconds": seconds, "peak_rss_mb": peak_after, **setup}


def worker_r1kit_memory(quick: bool) -> dict[str, Any]:
    import torch

    from grpo.batch import TrainBatch, make_micro_batch
    from grpo.losses import ClipParams, Norm
    from grpo.update import Objective, Sums, microbatch_loss
    from r1kit.config import TrainConfig

    b, p, c = MEMORY_SHAPE["quick" if quick else "full"]
    model = _big_vocab_model()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(VOCAB, (b, p + c), generator=g).tolist()
    ones = torch.ones(b, c)
    batch = TrainBatch(
        prompt_ids=[r[:p] for r in ids], completion_ids=[r[p:] for r in ids],
        sampler_logp=torch.zeros(b, c), mask=ones, token_mask=ones.clone(),
        advantages=torch.randn(b, generator=g), rewards=torch.zeros(b),
        truncated=torch.zeros(b, dtype=torch.bool), routed=[None] * b)  # old_logp None: on-policy
    obj = Objective(policy_loss="ppo_clip", aggregation="token_mean",
                    clip=ClipParams(CLIP_LOW, CLIP_HIGH), mismatch="none", max_tokens=c,
                    logprob_chunk=TrainConfig().logprob_chunk)
    mb = make_micro_batch(batch, list(range(b)), 0, "cpu")

    def step() -> None:
        out = microbatch_loss(model, batch, mb, obj, Norm.of(batch.mask, c), Sums())
        out.loss.backward()

    return _measure(step, {"shape": [b, p, c]})


def worker_trl_memory(quick: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from r1kit.tiny import build_tiny

    b, p, c = MEMORY_SHAPE["quick" if quick else "full"]
    model = _big_vocab_model()
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-mem-"), report_to="none", use_vllm=False,
        use_cpu=True, bf16=False, num_generations=2, per_device_train_batch_size=b,
        max_completion_length=c, beta=0.0, loss_type="dapo", epsilon=CLIP_LOW,
        epsilon_high=CLIP_HIGH, router_aux_loss_coef=0.0, save_strategy="no")
    trainer = GRPOTrainer(  # the tokenizer is only needed to construct the trainer
        model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
        train_dataset=Dataset.from_dict({"prompt": ["x"] * 4}),
        processing_class=AutoTokenizer.from_pretrained(build_tiny("qwen3_moe")))
    trainer.current_gradient_accumulation_steps = 1  # set by transformers' training loop
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(VOCAB, (b, p + c), generator=g)
    inputs = {"prompt_ids": ids[:, :p], "prompt_mask": torch.ones(b, p, dtype=torch.long),
              "completion_ids": ids[:, p:], "completion_mask": torch.ones(b, c, dtype=torch.long),
              "advantages": torch.randn(b, generator=g), "num_items_in_batch": torch.tensor(b * c)}
    model.train()

    def step() -> None:
        trainer.compute_loss(model, inputs).backward()

    return _measure(step, {"shape": [b, p, c]})


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "trl_hf": lambda a: worker_trl_hf(a.steps, a.row),
    "r1kit_hf": lambda a: _r1kit_steps("hf", a.steps, a.row),
    "r1kit_vllm": lambda a: _r1kit_steps("vllm", a.steps),
    "r1kit_hf_v4": lambda a: _r1kit_steps("hf", a.steps, V4_ROW),
    "r1kit_server_sync": lambda a: _r1kit_steps("vllm_server", a.steps),
    "r1kit_server_async": lambda a: _r1kit_steps("vllm_server", a.steps, async_steps=1),
    "trl_memory": lambda a: worker_trl_memory(a.quick),
    "r1kit_memory": lambda a: worker_r1kit_memory(a.quick),
}


# ---------------------------------------------------------------------------------------------
# The driver


def run_worker(name: str, steps: int, quick: bool, threads: int, timeout_s: float = 1800,
               row: Row | None = None) -> dict[str, Any]:
    """Run one contender in a fresh ``python -m bench.train --worker`` process (on ``row``'s
    configuration where the contender takes one, ``DEFAULT_ROW`` if None)."""
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.train", "--worker", name, "--steps", str(steps),
               "--result", str(result)] + (["--quick"] if quick else []) + (
               ["--row", row.arg] if row else [])
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get(
            "VLLM_CPU_KVCACHE_SPACE", "1"), "TOKENIZERS_PARALLELISM": "false"}
        env["TMPDIR"] = tmp  # run folders the worker makes are removed with this one
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        try:
            proc, wall = timed(subprocess.run, cmd, env=env, capture_output=True, text=True,
                               timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s"}
        if proc.returncode != 0 or not result.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
        return {**json.loads(result.read_text()), "worker_wall_s": wall}


def run(steps: int, vocab_bench: bool, quick: bool, threads: int = 1,
        async_mode: bool = False) -> dict[str, Any]:
    import torch

    names = list(STEP_CONTENDERS) + (list(MEMORY_CONTENDERS) if vocab_bench else [])
    if async_mode:
        names = list(ASYNC_CONTENDERS)
    results = {}
    load = [os.getloadavg()[0]]
    for name in names:
        print(f"  running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_worker(name, steps, quick, threads)
        load.append(os.getloadavg()[0])
        print(f"  {name}: {_brief(results[name])}", file=sys.stderr, flush=True)
    return {
        "benchmark": "train_async" if async_mode else "train",
        "settings": {"prompts": PROMPTS, "group": GROUP, "max_tokens": MAX_TOKENS,
                     "timed_steps": steps, "warmup_steps": 1, "quick": quick,
                     "memory_shape": MEMORY_SHAPE["quick" if quick else "full"],
                     "vocab": VOCAB, "dtype": "float32"},
        "machine": {**machine(torch=True), "threads": threads or torch.get_num_threads(),
                    "load_average_1min": load},
        "contenders": results,
        "ratios": _ratios(results),
        "targets": TARGETS,
    }


def _brief(r: dict[str, Any]) -> str:
    if "error" in r:
        return "ERROR " + r["error"]
    if "s_per_step" in r:
        return f"{r['s_per_step']:.2f} s/step, peak RSS {r['peak_rss_mb']:.0f} MB"
    return f"peak increase {r['peak_increase_mb']:.0f} MB"


def _ratios(results: dict[str, Any]) -> dict[str, float | None]:
    def ratio(name: str, base: str, key: str) -> float | None:
        a, b = results.get(name, {}), results.get(base, {})
        if key in a and key in b and b[key] > 0:
            return a[key] / b[key]
        return None

    out = {}
    for name in ("r1kit_hf", "r1kit_vllm"):
        out[f"{name}/time"] = ratio(name, "trl_hf", "s_per_step")
        out[f"{name}/rss"] = ratio(name, "trl_hf", "peak_rss_mb")
    out["r1kit_memory/memory"] = ratio("r1kit_memory", "trl_memory", "peak_increase_mb")
    if any(name in results for name in ASYNC_CONTENDERS):  # --async runs only these
        return {"async_speedup": ratio("r1kit_server_sync", "r1kit_server_async", "s_per_step")}
    return out


def _fmt(x: float | None, spec: str) -> str:
    """``x`` as ``spec`` formats it, or ``-`` where there is no finite number."""
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def _contender_rows(names: tuple[str, ...], res: dict[str, Any],
                    cells: Callable[[str, dict[str, Any]], list[str]]) -> list[list[str]]:
    """A table row per contender: its name, then ``cells(name, result)``, or its error (one
    cell over the columns left)."""
    return [[name, f"ERROR {res[name]['error'][:100]}"] if "error" in res.get(name, {})
            else [name, *cells(name, res.get(name, {}))] for name in names]


def _async_table(result: dict[str, Any]) -> str:
    """``--async``: synchronous against one-step-off training, with the parts of a step."""
    res, s = result["contenders"], result["settings"]
    rows = _contender_rows(ASYNC_CONTENDERS, res, lambda name, r: [
        _fmt(r.get(key), spec) for key, spec in (
            ("s_per_step", ".2f"), ("median_time_generate", ".2f"), ("median_time_update", ".2f"),
            ("median_time_sync", ".2f"), ("median_time_wait_rollout", ".2f"),
            ("median_staleness", ".0f"))])
    x = result["ratios"].get("async_speedup")
    return "\n".join([
        (f"async benchmark: vllm_server engine, tiny Qwen3-MoE, {s['prompts']} prompts x "
         f"{s['group']} of {s['max_tokens']} tokens, median of {s['timed_steps']} steps "
         f"after {s['warmup_steps']} warm-up; the parts are medians too"),
        table(("contender", "s/step", "generate", "update", "sync+wait", "wait ro", "staleness"),
              rows, widths=(19, 7, 9, 7, 10, 8, 9)),
        (f"speedup of one-step-off over synchronous: {_fmt(x, '.2f')}x "
         f"(target >= {ASYNC_TARGET}). generate: the engine's sampling of a rollout (in "
         "the background when async); sync+wait: waiting for it, then the weight sync; "
         "wait ro: a step's wait for its rollout")])


def _table(result: dict[str, Any]) -> str:
    res, rat, s = result["contenders"], result["ratios"], result["settings"]

    def target(name: str) -> str:
        return f"<= {TARGETS[name]}" if name in TARGETS else ""

    steps = _contender_rows(STEP_CONTENDERS, res, lambda name, r: [
        _fmt(r.get("s_per_step"), ".2f"),
        _fmt(rat.get(f"{name}/time", 1.0 if name == "trl_hf" else None), ".2f"),
        _fmt(r.get("peak_rss_mb"), ".0f"),
        _fmt(rat.get(f"{name}/rss", 1.0 if name == "trl_hf" else None), ".2f"), target(name)])
    lines = [(f"train benchmark: {s['prompts']} prompts x {s['group']} = "
              f"{s['prompts'] * s['group']} completions of {s['max_tokens']} tokens, median of "
              f"{s['timed_steps']} steps after {s['warmup_steps']} warm-up; "
              f"{result['machine']['threads']} thread(s) per contender, float32"),
             table(("contender", "s/step", "x TRL", "peak RSS MB", "x TRL", "target"), steps,
                   widths=(14, 8, 6, 12, 6, 7))]
    moe = [(n, res[n]) for n in ("r1kit_hf", "r1kit_hf_v4") if "s_per_step" in res.get(n, {})]
    if moe:
        lines.append("tiny MoE families, HF engine: " + "; ".join(
            f"{n} {r['s_per_step']:.2f} s/step, {r['tokens_per_s']:.0f} completion tokens/s"
            for n, r in moe))
    if "r1kit_memory" in res or "trl_memory" in res:
        b, p, c = s["memory_shape"]
        memory = _contender_rows(MEMORY_CONTENDERS, res, lambda name, r: [
            _fmt(r.get("peak_increase_mb"), ".0f"),
            _fmt(1.0 if name == "trl_memory" else rat.get("r1kit_memory/memory"), ".2f"),
            _fmt(r.get("peak_increase_mb_sampled"), ".0f"), _fmt(r.get("seconds"), ".2f"),
            target(name)])
        lines += [(f"memory: log-prob + loss + backward, vocab {s['vocab']:,}, {b} x "
                   f"({p} prompt + {c} completion) tokens; peak RSS increase over the "
                   "RSS before the call"),
                  table(("contender", "peak +MB", "x TRL", "sampled", "seconds", "target"),
                        memory, widths=(14, 9, 6, 8, 8, 7))]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# --grid: rows of settings, r1kit against TRL in interleaved pairs

GRID_CONTENDERS = ("r1kit_hf", "trl_hf")


def run_grid(rows: Sequence[Row], steps: int, pairs: int, threads: int = 1,
             save: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """Each row's contenders in ``pairs`` interleaved rounds (the harness's ``interleaved``:
    r1kit, TRL, then TRL, r1kit, ...), each run a fresh worker of 1 + ``steps`` steps;
    ``save`` gets the result so far after every row (a long run keeps its finished rows)."""
    import torch

    load = [os.getloadavg()[0]]
    result = {
        "benchmark": "train_grid",
        "settings": {"prompts": PROMPTS, "group": GROUP, "max_tokens": MAX_TOKENS,
                     "steps": 1 + steps, "pairs": pairs, "dtype": "float32",
                     "order": "per row, pairs interleaved r1kit/TRL, alternating who goes first"},
        "machine": {**machine(torch=True), "threads": threads or torch.get_num_threads(),
                    "load_average_1min": load},
        "rows": {},
        "target": GRID_TARGET,
    }
    for row in rows:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in GRID_CONTENDERS}
        for pair, name in interleaved(range(pairs), GRID_CONTENDERS):
            print(f"  {row.name}, pair {pair + 1}/{pairs}: {name} ...", file=sys.stderr,
                  flush=True)
            runs[name].append(run_worker(name, steps, False, threads, row=row))
            load.append(os.getloadavg()[0])
            print(f"    {_brief(runs[name][-1])}", file=sys.stderr, flush=True)
        result["rows"][row.name] = {"row": asdict(row), "differences": row.differences(),
                                    "runs": runs, **_pair_summary(runs)}
        if save:
            save(result)
    return result


def _pair_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per span (``all`` steps, the first included; ``after_first``: steps 2-N) each contender's
    median over pairs of its mean step, and r1kit's ratio to TRL: the median of the pairs'
    ratios (a pair shares the machine's load). With r1kit's scoring seconds of step 1 and the
    median of the later steps'."""
    errors = [r["error"] for rs in runs.values() for r in rs if "error" in r]
    if errors:
        return {"error": errors[0]}
    out: dict[str, Any] = {}
    for span, first in (("all", 0), ("after_first", 1)):
        means = {name: [statistics.mean(r["step_seconds"][first:]) for r in rs]
                 for name, rs in runs.items()}
        ratios = [a / b for a, b in zip(means["r1kit_hf"], means["trl_hf"])]
        out[span] = {**{name: statistics.median(m) for name, m in means.items()},
                     "ratio": statistics.median(ratios), "pair_ratios": ratios}
    out["met"] = all(out[span]["ratio"] <= GRID_TARGET for span in ("all", "after_first"))
    score = [[p.get("time/score", math.nan) for p in r["step_parts"]] for r in runs["r1kit_hf"]]
    out["r1kit_score_first_s"] = statistics.median(s[0] for s in score)
    out["r1kit_score_later_s"] = statistics.median(statistics.median(s[1:] or s) for s in score)
    return out


def _grid_table(result: dict[str, Any]) -> str:
    s, rows = result["settings"], result["rows"]
    cells = []
    for name, r in rows.items():
        if "error" in r:
            cells.append([name, f"ERROR {r['error'][:100]}"])
            continue
        a, b = r["all"], r["after_first"]
        cells.append([name, *(_fmt(x, ".2f") for x in (
            a["r1kit_hf"], a["trl_hf"], a["ratio"], b["r1kit_hf"], b["trl_hf"], b["ratio"])),
            "yes" if r["met"] else "no",
            _fmt(r["r1kit_score_first_s"], ".2f"), _fmt(r["r1kit_score_later_s"], ".3f")])
    n = s["steps"]
    extra = {d: [name for name, r in rows.items() if d in r["differences"]]
             for r in rows.values() for d in r["differences"] if d not in COMMON_DIFFERENCES}
    return "\n".join([
        (f"train grid: {s['prompts']} prompts x {s['group']} completions of {s['max_tokens']} "
         f"tokens, {n} steps per run, r1kit (HF engine) and TRL in {s['pairs']} interleaved "
         f"pair(s) per row, median over pairs; {result['machine']['threads']} thread(s), "
         f"float32; x TRL: median of the pairs' ratios, target <= {result['target']} on both"),
        table(("row", "r1kit all", "TRL all", "x TRL", "r1kit 2-N", "TRL 2-N", "x TRL",
               "met", "score 1st", "later"), cells, widths=(31, 9, 7, 5, 9, 7, 5, 3, 9, 6)),
        (f"all: mean of the {n} steps, the first included; 2-N: mean of steps 2-{n}; score: "
         "r1kit's scoring seconds in step 1 and later (median)"),
        "differences in every row: " + "; ".join(COMMON_DIFFERENCES),
        *(f"differences in {', '.join(names)}: {d}" for d, names in extra.items())])


def main(argv: list[str] | None = None) -> int:
    ap = parser("r1kit bench train", __doc__,
                out_help="JSON output path (default runs/bench_train.json; with --async, "
                "runs/bench_train_async.json; with --grid, runs/bench_train_grid.json)",
                quick=f"a small memory case {MEMORY_SHAPE['quick']} (for smoke tests)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after 1 warm-up step")
    ap.add_argument("--vocab-bench", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the 151,936-vocabulary memory test (default on)")
    ap.add_argument("--threads", type=int, default=1,
                    help="OpenMP/torch threads of every contender (0: the libraries' default); 1 "
                    "keeps a busy shared machine from thrashing OpenMP's spinning threads")
    ap.add_argument("--async", dest="async_mode", action="store_true",
                    help="instead: synchronous against one-step-off training (train.async_steps"
                    "=1) with the vllm_server engine, seconds per step and their parts")
    ap.add_argument("--grid", nargs="*", type=Row.parse, metavar="FAMILY,BETA,AUX",
                    help="instead: r1kit_hf against TRL on rows of settings (default: "
                    "qwen3_moe and deepseek_v3 x beta 0, 0.04 x aux loss 0, 0.001), in "
                    "interleaved pairs; the mean of all steps and of steps 2-N")
    ap.add_argument("--pairs", type=int, default=3, help="--grid: interleaved pairs per row")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--row", type=Row.parse, default=DEFAULT_ROW, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.pairs < 1:
        ap.error("--steps and --pairs must be >= 1")
    if args.worker:  # inside a subprocess started by run_worker
        import torch

        threads = torch.get_num_threads()  # vLLM disables set_num_threads once it starts
        out = WORKERS[args.worker](args)
        Path(args.result).write_text(json.dumps({**out, "torch_threads": threads}))
        return 0
    if args.grid is not None:
        path = args.out or Path("runs/bench_train_grid.json")
        result = run_grid(args.grid or GRID, args.steps, args.pairs, args.threads,
                          save=lambda r: write_result(path, r))
        print(_grid_table(result))
        return 0 if not any("error" in r for r in result["rows"].values()) else 1
    result = run(args.steps, args.vocab_bench, args.quick, args.threads, args.async_mode)
    print(_async_table(result) if args.async_mode else _table(result))
    write_result(args.out or ("runs/bench_train_async.json" if args.async_mode
                              else "runs/bench_train.json"), result)
    return 0 if not any("error" in r for r in result["contenders"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
