"""The one place a rollout engine is chosen from configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollouts.engine import Engine

ENGINES = ("hf", "vllm", "vllm_server")


class UnsupportedByVLLM(ValueError):
    """vLLM cannot load or run this checkpoint; the HF engine can."""


def check_vllm_can_load(model_path: str | Path) -> None:
    """Refuse, in one line and before vLLM starts, checkpoints vLLM 0.32 is known to fail on.

    DeepSeek-V4 as transformers writes it (``DeepseekV4ForCausalLM``, ``model_type
    "deepseek_v4"``): vLLM parses ``config.json`` with its own ``DeepseekV4Config``, whose
    validator rejects transformers' ``mlp_layer_types`` (it accepts only ``sparse``/``dense``); its
    model reads ``compress_ratios``, ``num_hash_layers`` and ``qk_rope_head_dim`` instead of
    ``layer_types``/``mlp_layer_types``/``partial_rotary_factor``. Past the config, its V4 layers
    (CPU ones included) build only the published geometry (a compressor KV cache for head_dim 512
    or 128, compression rates 4 or 128), load only DeepSeek's native tensor names, and on CPU the
    first prefill fails in a Triton kernel of the sparse sliding-window attention metadata
    (docs/TRAINING.md, "DeepSeek-V4 policies", has each error).
    """
    import json

    cfg_file = Path(model_path).expanduser() / "config.json"
    if not cfg_file.is_file():
        return  # the engine's own checks name a missing checkpoint
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError:
        return  # as above: rollouts.model_check.check_causal_lm says what is wrong
    if cfg.get("model_type") == "deepseek_v4" and "mlp_layer_types" in cfg:
        raise UnsupportedByVLLM(
            f"{model_path}: vLLM 0.32 cannot load a transformers DeepSeek-V4 checkpoint (its "
            "config class rejects mlp_layer_types values 'hash_moe'/'moe', and on CPU its V4 "
            "attention needs Triton); use rollout.engine=hf")


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
    data_parallel_size: int = 1,
    tensor_parallel_size: int = 1,
    sleep_mode: bool = False,
) -> Engine:
    """Start an engine of ``kind`` on the checkpoint at ``model_path``.

    A trainer passes its live ``model`` (and ``tokenizer``): the HF engine then samples from
    that very object (no copy); the vLLM engines load ``model_path`` and are synced from
    ``model`` by the trainer. ``record_routing`` asks for each token's routed experts where the
    engine can report them (the HF engine; vLLM only on GPU). ``data_parallel_size`` and
    ``tensor_parallel_size`` size the ``vllm_server`` engine; the others run one replica.
    ``sleep_mode``: the colocated vLLM engine can ``sleep`` (GPU only)."""
    if kind == "hf":
        import torch

        from rollouts.hf import HFEngine

        if model is not None:  # the trainer's policy: float32 masters under mixed precision
            held = next(model.parameters()).dtype
            want = getattr(torch, dtype)
            return HFEngine(model, tokenizer, batch_size=batch_size, max_model_len=max_model_len,
                            record_routing=record_routing,
                            compute_dtype=want if want != held else None)
        return HFEngine(model_path, dtype=getattr(torch, dtype), batch_size=batch_size,
                        max_model_len=max_model_len, record_routing=record_routing)
    if kind in ("vllm", "vllm_server"):
        check_vllm_can_load(model_path)
    if kind == "vllm":
        from rollouts.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                          gpu_memory_utilization=gpu_memory_utilization,
                          return_routed_experts=record_routing, enable_sleep_mode=sleep_mode)
    if kind == "vllm_server":
        import torch

        from rollouts.server import VLLMServerEngine

        args = ("--dtype", dtype, "--max-model-len", str(max_model_len), "--seed", str(seed),
                "--gpu-memory-utilization", str(gpu_memory_utilization))
        if not torch.cuda.is_available():
            args += ("--enforce-eager",)  # as the colocated engine: no graphs to capture on CPU
            if dtype == "float32":  # AMX MLA packs only bf16/fp16 weights (rollouts.vllm_engine)
                args += ("--attention-backend", "CPU_MLA")
        return VLLMServerEngine(model_path, extra_args=args,
                                data_parallel_size=data_parallel_size,
                                tensor_parallel_size=tensor_parallel_size)
    raise ValueError(f"unknown engine {kind!r}; expected one of {ENGINES}")
