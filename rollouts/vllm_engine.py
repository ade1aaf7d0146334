"""The colocated vLLM engine: vLLM runs in the trainer's process and takes weights from memory.

``VLLMEngine`` satisfies ``rollouts.engine.Engine``. It keeps vLLM's engine core in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so weight updates pass tensors by reference through
``collective_rpc`` into ``rollouts.vllm_worker.WeightSyncExtension``; no files are written.

What it guarantees:

- Logprobs are those of the raw model distribution. vLLM's ``logprobs_mode`` decides what a
  sampled token's logprob means: ``"raw_logprobs"`` (vLLM's default) is log-softmax of the model's
  logits before temperature, top-k/top-p or any logits processor; ``"processed_logprobs"`` is after
  them. GRPO's importance ratio needs the policy's own distribution (temperature 1), so this engine
  sets ``raw_logprobs`` explicitly; the trainer's HF forward at temperature 1 computes the same
  quantity. With ``logprobs=0`` vLLM returns exactly the sampled token's logprob.
- After ``update_weights(model)`` the engine samples from ``model``'s current weights exactly as a
  fresh vLLM load of them would (fused MoE experts split, LoRA merged, the CPU MoE repack and a
  tied lm_head's CPU repack redone: see ``rollouts.vllm_worker``); the prefix cache is reset. ``last_sync_seconds`` is its duration.
- Each of the ``n`` completions of a prompt is its own vLLM request; with ``Sampling(seed=s)``
  completion ``j`` of prompt ``i`` gets seed ``s + (first_prompt + i) * n + j``: reproducible and
  distinct (``Sampling.first_prompt`` places a share of a larger batch).
- Building the engine leaves the caller's global RNG where it was: vLLM seeds Python's ``random``,
  numpy and torch (CPU and every CUDA device) with ``seed`` when it starts (it logs "The global
  random seed is set to ..."); ``_caller_rng_kept`` saves those states and puts them back, so a
  training script's random draws continue as if no engine had been built, as with ``HFEngine``.
  (Sampling itself is not covered: an unseeded request draws from vLLM's, i.e. torch's, RNG.)
- Bad input fails before any sampling: ``n < 1``, a prompt with no room in the context (its
  token count is at least ``max_model_len``; the error names the index and both lengths), and, before
  vLLM starts, a missing checkpoint folder or one whose ``config.json`` is not a causal LM.

What it does not do (vLLM 0.32):

- MLA in float32 on CPU: vLLM prefers its AMX MLA backend where the CPU has AMX, and that
  backend packs only bf16/fp16/int8 weights; with ``dtype="float32"`` on CPU this engine asks for
  the reference ``CPU_MLA`` backend instead.
- Routed experts: vLLM can return each token's routed experts (``enable_return_routed_experts``),
  but only with Model Runner V2, which needs Triton; on CPU vLLM rejects the option at startup.
  ``return_routed_experts=True`` is therefore passed through only on GPU; on CPU it raises, and
  ``Completion.routed_experts`` stays None.
- Sleep mode: vLLM raises "Sleep mode is not supported on current platform" on CPU, so
  ``enable_sleep_mode=True`` raises ``ValueError`` there; without sleep mode ``sleep()``/``wake()``
  log that there is nothing to give back and do nothing. On GPU they call
  ``llm.sleep(level=1)`` (weights offloaded to host, KV cache dropped) and ``llm.wake_up()``.
- LoRA as a vLLM adapter (``lora_mode="adapter"``): vLLM's CPU engine does start with
  ``enable_lora=True`` for Qwen3-MoE, but vLLM only loads adapters from a path
  (``LoRARequest(lora_path=...)``), so pushing one from memory needs a worker-side adapter loader
  that this engine does not have; it raises ``ValueError``. LoRA policies are synced merged
  (``lora_mode="merge"``), which is exact.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rollouts.engine import check_generate_args, peak_memory_bytes
from rollouts.model_check import check_causal_lm
from rollouts.prompts import encode_prompt
from rollouts.types import Completion, GenerationStats, Group, Sampling

log = logging.getLogger(__name__)

WORKER_EXTENSION = "rollouts.vllm_worker.WeightSyncExtension"
LORA_MODES = ("merge", "adapter")


def _on_cpu() -> bool:
    # vLLM is an optional extra, slow to import: loaded only where an engine needs it
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


# torch's seed for a CUDA generator that was never seeded (c10 ``default_rng_seed_val``).
_TORCH_DEFAULT_SEED = 67280421310721


@contextlib.contextmanager
def _caller_rng_kept():
    """Restore Python's, numpy's and torch's (CPU, CUDA) global RNG states on exit. CUDA states are
    saved only if CUDA is already initialised (saving would initialise it); otherwise generators
    that the block initialised are put back to torch's never-seeded state."""
    import numpy as np
    import torch

    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        elif torch.cuda.is_initialized():
            for gen in torch.cuda.default_generators:
                gen.manual_seed(_TORCH_DEFAULT_SEED)


class VLLMEngine:
    """vLLM in this process, sampling groups and taking weights straight from the trainer."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        dtype: str = "float32",
        max_model_len: int = 2048,
        gpu_memory_utilization: float = 0.5,
        seed: int = 0,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        enable_sleep_mode: bool = False,
        return_routed_experts: bool = False,
        **llm_kwargs: Any,
    ):
        check_causal_lm(model_path)
        self.model_path = Path(model_path).expanduser()
        self.max_model_len = max_model_len
        self.last_stats: GenerationStats | None = None
        self.last_sync_seconds: float | None = None
        self._asleep: set[str] = set()  # what sleep() gave back and wake() has not restored
        cpu = _on_cpu()
        if enable_sleep_mode and cpu:
            raise ValueError("vLLM has no sleep mode on CPU; use enable_sleep_mode=False")
        if return_routed_experts and cpu:
            raise ValueError("vLLM returns routed experts only with Model Runner V2 (Triton), "
                             "which the CPU backend lacks")
        # In-process engine core: collective_rpc then passes tensors by reference.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # vLLM is an optional extra, slow to import: loaded only when this engine starts
        from vllm import LLM

        from rollouts.vllm_patches import apply_cpu_patches

        apply_cpu_patches()  # before the model is built: MLA's rotary embedding on CPU

        extra = dict(llm_kwargs)
        extra.setdefault("enforce_eager", cpu)  # no CUDA graphs on CPU; compile time not worth it
        if cpu:
            # vLLM 0.32 on CPU: a seeded request whose prompt is split by chunked prefill rewinds
            # its torch.Generator ("CPU Generator does not use offset") and kills the engine.
            extra.setdefault("enable_chunked_prefill", False)
            if dtype == "float32":
                # On CPUs with AMX vLLM picks its AMX MLA backend, whose weight packing takes only
                # bf16/fp16/int8 ("expect weight to be bfloat16, ..."): float32 MLA models need
                # the reference CPU backend. Other attention ignores this setting.
                extra.setdefault("attention_backend", "CPU_MLA")
        if enable_lora:
            extra.update(enable_lora=True, max_lora_rank=max_lora_rank)
        if return_routed_experts:
            extra["enable_return_routed_experts"] = True
        self.enable_sleep_mode = enable_sleep_mode
        with _caller_rng_kept():  # vLLM seeds random/numpy/torch globally with `seed`
            self.llm = LLM(
                model=str(self.model_path), dtype=dtype, max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                enable_sleep_mode=enable_sleep_mode, logprobs_mode="raw_logprobs",
                worker_extension_cls=WORKER_EXTENSION, **extra,
            )
        self.tokenizer = self.llm.get_tokenizer()

    # -- sampling -------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], n: int, sampling: Sampling) -> list[Group]:
        """Sample ``n`` completions per prompt; one ``Group`` per prompt, in order."""
        check_generate_args(prompts, n)
        if self._asleep:
            raise RuntimeError("the engine is asleep; call wake() before generate()")
        prompt_ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        for i, ids in enumerate(prompt_ids):
            if len(ids) >= self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens but the context holds {self.max_model_len} "
                    f"(max_model_len), leaving no room to generate"
                )
        requests, params = [], []
        for i, ids in enumerate(prompt_ids):
            for j in range(n):
                seed = (None if sampling.seed is None
                        else sampling.seed + (sampling.first_prompt + i) * n + j)
                requests.append({"prompt_token_ids": ids})
                params.append(self._sampling_params(sampling, seed))
        start = time.perf_counter()
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        groups = [Group(prompt=p, prompt_token_ids=list(ids)) for p, ids in zip(prompts, prompt_ids)]
        for k, out in enumerate(outputs):
            groups[k // n].completions.append(
                _completion(out.outputs[0], len(prompt_ids[k // n])))
        new_tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
        self.last_stats = GenerationStats(
            prompts=len(prompts), completions=len(outputs), new_tokens=new_tokens,
            seconds=seconds, peak_memory_bytes=peak_memory_bytes(),
        )
        return groups

    @staticmethod
    def _sampling_params(sampling: Sampling, seed: int | None):
        # vLLM is an optional extra, slow to import: loaded only where an engine needs it
        from vllm import SamplingParams

        return SamplingParams(
            n=1, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
            top_p=sampling.top_p, top_k=max(0, sampling.top_k),
            seed=seed, stop=list(sampling.stop) or None, logprobs=0,
            min_tokens=sampling.min_tokens,
        )

    # -- weights --------------------------------------------------------------------------------
    def update_weights(self, model: Any, lora_mode: str = "merge") -> None:
        """Load ``model``'s current weights (transformers or peft, MoE or dense) into vLLM."""
        from rollouts.weights import iter_checkpoint_weights

        if lora_mode not in LORA_MODES:
            raise ValueError(f"lora_mode must be one of {LORA_MODES}, got {lora_mode!r}")
        if lora_mode == "adapter":
            raise ValueError("lora_mode='adapter' is not supported: vLLM 0.32 loads LoRA adapters "
                             "only from disk; use lora_mode='merge' (exact) instead")
        if "weights" in self._asleep:
            raise RuntimeError("the engine's weights are asleep; call wake(['weights']) before "
                               "update_weights()")
        start = time.perf_counter()
        self.llm.collective_rpc("update_weights_from_tensors",
                                args=(iter_checkpoint_weights(model),))
        self.llm.reset_prefix_cache()
        self.last_sync_seconds = time.perf_counter() - start

    def update_weights_from_safetensors(self, path: str | os.PathLike) -> None:
        """Load every weight from one safetensors file (checkpoint names), as a fresh load would."""
        start = time.perf_counter()
        self.llm.collective_rpc("update_weights_from_safetensors", args=(str(path),))
        self.llm.reset_prefix_cache()
        self.last_sync_seconds = time.perf_counter() - start

    # -- memory and lifetime --------------------------------------------------------------------
    def sleep(self, level: int = 1) -> None:
        """Drop the KV cache and give the weights' memory back (GPU, sleep mode on): level 1
        offloads them to the host, level 2 discards them for ``update_weights`` to replace
        (``wake(["weights"])`` first). Otherwise a logged no-op."""
        if not self.enable_sleep_mode:
            log.info("VLLMEngine.sleep: sleep mode is off (always on CPU); nothing to give back")
            return
        self.llm.sleep(level=level)
        self._asleep = {"weights", "kv_cache"}

    def wake(self, tags: Sequence[str] | None = None) -> None:
        """Undo ``sleep``, for everything or only ``tags`` (``"weights"``, ``"kv_cache"``); the
        engine samples again once both are back."""
        if not self._asleep:
            return
        wanted = self._asleep & (set(tags) if tags is not None else self._asleep)
        if wanted:
            self.llm.wake_up(tags=sorted(wanted))
        self._asleep -= wanted
        if "kv_cache" in wanted:
            self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Shut the engine core down and free its memory; safe to call twice."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        gc.collect()
        # vLLM is an optional extra, slow to import: loaded only where an engine needs it
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _completion(out: Any, prompt_len: int) -> Completion:
    """One vLLM ``CompletionOutput`` as a ``Completion`` (sampled-token logprobs, finish reason;
    routed experts in the layout ``Completion.routed_experts`` documents)."""
    token_ids = list(out.token_ids)
    logprobs = [float(step[tok].logprob) for step, tok in zip(out.logprobs or [], token_ids)]
    if len(logprobs) != len(token_ids):
        raise RuntimeError(f"vLLM returned {len(logprobs)} logprobs for {len(token_ids)} tokens")
    routed = None
    if getattr(out, "routed_experts", None) is not None:  # [seq_len, layers, topk], prompt first
        import torch

        # Every position the engine ran forward on: the prompt and all but the last new token.
        routed = torch.as_tensor(out.routed_experts)[: prompt_len + len(token_ids) - 1]
        routed = routed.to(torch.int16)
    return Completion(
        text=out.text, token_ids=token_ids, logprobs=logprobs,
        finish_reason="length" if out.finish_reason == "length" else "stop",
        routed_experts=routed,
    )
