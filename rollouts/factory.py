"""The one place a rollout engine is chosen from configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollouts.engine import Engine

ENGINES = ("hf", "vllm", "vllm_server")


def make_engine(
    kind: str,
    model_path: str | Path,
    *,
    dtype: str = "float32",
    max_model_len: int = 1024,
    seed: int = 0,
    gpu_memory_utilization: float = 0.5,
    batch_size: int = 16,
    model: Any = None,
    tokenizer: Any = None,
    record_routing: bool = False,
) -> Engine:
    """Start an engine of ``kind`` on the checkpoint at ``model_path``.

    A trainer passes its live ``model`` (and ``tokenizer``): the HF engine then samples from
    that very object (no copy); the vLLM engines load ``model_path`` and are synced from
    ``model`` by the trainer. ``record_routing`` asks for each token's routed experts where the
    engine can report them (the HF engine; vLLM only on GPU)."""
    if kind == "hf":
        import torch

        from rollouts.hf import HFEngine

        if model is not None:
            return HFEngine(model, tokenizer, batch_size=batch_size, max_model_len=max_model_len,
                            record_routing=record_routing)
        return HFEngine(model_path, dtype=getattr(torch, dtype), batch_size=batch_size,
                        max_model_len=max_model_len, record_routing=record_routing)
    if kind == "vllm":
        from rollouts.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                          gpu_memory_utilization=gpu_memory_utilization,
                          return_routed_experts=record_routing)
    if kind == "vllm_server":
        import torch

        from rollouts.server import VLLMServerEngine

        args = ("--dtype", dtype, "--max-model-len", str(max_model_len), "--seed", str(seed),
                "--gpu-memory-utilization", str(gpu_memory_utilization))
        if not torch.cuda.is_available():
            args += ("--enforce-eager",)  # as the colocated engine: no graphs to capture on CPU
            if dtype == "float32":  # AMX MLA packs only bf16/fp16 weights (rollouts.vllm_engine)
                args += ("--attention-backend", "CPU_MLA")
        return VLLMServerEngine(model_path, extra_args=args)
    raise ValueError(f"unknown engine {kind!r}; expected one of {ENGINES}")
