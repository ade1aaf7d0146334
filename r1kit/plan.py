"""``r1kit plan``: per-GPU memory and step time of a recipe, estimated from its architecture.

``r1kit train`` runs one process, or data-parallel ranks (DDP: every rank holds the whole policy,
gradients and optimiser) under ``torchrun`` / ``accelerate launch``; it does not run the sharded
FSDP2 update yet. The ``plan`` section of a recipe states the hardware it is meant for
(``plan.gpu``, ``plan.gpus``, ``plan.sharding``), and this module estimates what one GPU would
hold and how long one GRPO step would take there. Every number is an estimate from the
constants below and the model's config; nothing is measured.

What the memory model counts, per GPU, from what the trainer does (``r1kit/train.py``):

- weights: full fine-tuning under ``train.mixed_precision`` (the default) holds float32 master
  weights whatever ``model.dtype`` is (forward passes autocast to it); without it, or with LoRA
  (frozen base), the parameters are in ``model.dtype``, plus a LoRA adapter in float32 (peft casts
  adapters of bf16/fp16 models to float32: ``get_peft_model(autocast_adapter_dtype=True)``).
- gradients and optimizer: ``torch.optim.AdamW`` over the trainable parameters. Its two moments
  are ``zeros_like(param)``: in the parameter's dtype (float32 masters under mixed precision;
  bf16 moments in pure-bf16 training, where an update far below a weight's bf16 resolution is
  lost). LoRA: only the adapter has gradients and moments.
- reference: a second copy of the weights only for ``algo.beta > 0`` with full fine-tuning (LoRA's
  reference is the adapter switched off).
- KV cache: the vLLM engines (colocated or server, no sleep mode during training) hold
  ``rollout.gpu_memory_utilization`` of the GPU for their own weight copy, KV cache and workspace
  throughout; the HF engine holds a dynamic KV cache for ``rollout.batch_size`` sequences, only
  while sampling (so its peak and the update's activations are not added).
- activations of one micro-batch of ``train.token_budget`` tokens: the decoder runs without
  activation checkpointing (r1kit never enables it), so every layer keeps its activations for
  the backward pass (``ACT_BYTES_PER_HIDDEN_LAYER``); the LM head keeps ``LOGIT_BUFFERS`` buffers
  of ``train.logprob_chunk x vocab`` float32 (``grpo/logprobs.py``).
- ``plan.sharding: fsdp`` divides weights, gradients, optimizer state and reference by
  ``plan.gpus``; activations, LM head and the engine are per GPU.

Not counted: the CUDA context and allocator fragmentation (~1 to 3 GiB), vLLM's activation
workspace and CUDA graphs inside its reservation, the gathered full layer FSDP holds while it
computes, MoE routing records.

The step-time model (each GPU does ``1 / plan.gpus`` of the sequences; every sequence is counted
at full length, prompt ``rollout.max_model_len - rollout.max_tokens`` then ``rollout.max_tokens``
completion tokens, so times are upper bounds on work and lower bounds on achieved speed):

- generation = prefill (2 x active params x prompt tokens FLOPs at ``mfu`` x peak) + decode,
  which is memory-bound: each decoding step reads the weights the batch touches (an MoE layer's
  experts that at least one of the batch's tokens routes to, routing taken as uniform) and the KV
  cache so far, at peak HBM bandwidth; the roofline takes the larger of that and the step's
  FLOPs. When the KV cache does not hold every sequence at once, sequences run in waves.
- log-probs = 2 x active params x tokens FLOPs per forward pass: one for the reference
  (``algo.beta > 0``) and one for the rollout policy's log-probs (``train.epochs`` or
  ``train.minibatches`` > 1).
- update = 6 x active params x tokens FLOPs per epoch (forward 2, backward 4: Kaplan et al. 2020;
  LoRA skips the weight gradients of frozen weights: 4).
- sync = the weights' bytes: gathered over NVLink under FSDP, then copied into the colocated
  engine (read + write in HBM) or written to ``/dev/shm`` and read by the server (twice over
  PCIe); 0 with the HF engine, which samples from the trainer's own weights.

Not modelled: attention's quadratic FLOPs, FSDP/DDP communication during the update (assumed
overlapped), reward scoring, dynamic-sampling refills, Python and kernel-launch overhead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1kit.archs import full_config
from r1kit.config import Config, ConfigError, ModelConfig, config_help, load_config
from r1kit.tiny import TIED_BY_DEFAULT, build_tokenizer, tiny_config

GIB = 2**30


# -- every constant of the model, with where it comes from -----------------------------------
@dataclass(frozen=True)
class GPU:
    memory_gib: float
    """Total memory as nvidia-smi reports it (MiB / 1024)."""
    bf16_tflops: float
    """Dense bf16/fp16 tensor-core peak (the datasheet's figure without sparsity)."""
    fp32_tflops: float
    """Plain fp32 peak: PyTorch leaves TF32 matmuls off by default and r1kit does not turn them
    on, so a float32 policy runs at this rate."""
    hbm_tb_s: float
    """HBM bandwidth."""
    nvlink_gb_s: float
    """NVLink bandwidth per direction (half the datasheet's bidirectional total)."""
    pcie_gb_s: float
    """PCIe x16 bandwidth per direction (Gen5: 64 GB/s, Gen4: 32 GB/s)."""


# NVIDIA datasheets: H100 SXM5 80GB, H200 SXM 141GB, A100 SXM4 80GB / 40GB.
GPUS: dict[str, GPU] = {
    "h100": GPU(memory_gib=81559 / 1024, bf16_tflops=989, fp32_tflops=67, hbm_tb_s=3.35,
                nvlink_gb_s=450, pcie_gb_s=64),
    "h200": GPU(memory_gib=143771 / 1024, bf16_tflops=989, fp32_tflops=67, hbm_tb_s=4.8,
                nvlink_gb_s=450, pcie_gb_s=64),
    "a100_80g": GPU(memory_gib=81920 / 1024, bf16_tflops=312, fp32_tflops=19.5, hbm_tb_s=2.039,
                    nvlink_gb_s=300, pcie_gb_s=32),
    "a100_40g": GPU(memory_gib=40960 / 1024, bf16_tflops=312, fp32_tflops=19.5, hbm_tb_s=1.555,
                    nvlink_gb_s=300, pcie_gb_s=32),
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LORA_BYTES = 4  # peft keeps adapters in float32 (autocast_adapter_dtype=True)
ADAM_MOMENTS = 2  # exp_avg and exp_avg_sq, each the size and dtype of its parameter
# Activation bytes kept per token, per hidden unit, per layer with 2-byte activations and no
# recomputation: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
# Models", eq. 1: sbh(34 + 5as/h) with tensor parallelism 1. The 5as/h term is the s x s attention
# scores, which SDPA / flash attention (transformers' default) never store, so it is dropped. The
# 34 is for a GPT block (4h GeLU MLP, dropout masks); SwiGLU and MoE blocks differ by tens of
# percent either way. Scaled by dtype bytes / 2 for float32.
ACT_BYTES_PER_HIDDEN_LAYER = 34
# float32 (chunk, vocab) buffers alive at once in the chunked LM head (grpo/logprobs.py:_head_chunk):
# logits, softmax and their product in the forward, and the logits' gradient in the backward.
LOGIT_BUFFERS = 4
FWD_FLOPS, TRAIN_FLOPS, LORA_TRAIN_FLOPS = 2, 6, 4  # per active parameter per token


# -- what the model is ------------------------------------------------------------------------
def arch_config(m: ModelConfig):
    """The transformers config of ``model.path``: a checkpoint folder's config.json, the embedded
    tiny family's config, ``r1kit.archs.full_config(hub_id)`` where that table knows the id, else
    the hub's config.json (or the local hub cache)."""
    from transformers import AutoConfig

    if m.path.startswith("tiny:"):
        family = m.path[len("tiny:"):].partition("/")[0]
        tok = build_tokenizer(m.tiny_seed)  # the vocabulary size depends on the trained BPE
        return tiny_config(family, len(tok), tok.eos_token_id, TIED_BY_DEFAULT[family])
    if Path(m.path).expanduser().is_dir():
        return AutoConfig.from_pretrained(Path(m.path).expanduser())
    try:
        return full_config(m.path)
    except KeyError:
        pass
    try:
        return AutoConfig.from_pretrained(m.path)
    except OSError as e:
        raise ConfigError(f"model.path: no architecture for {m.path!r}: not a folder, not in "
                          f"r1kit.archs, and its hub config.json could not be read "
                          f"({str(e).splitlines()[0]})") from None


@dataclass
class Counts:
    """Parameter counts of one architecture (tied embeddings counted once)."""

    total: int
    embedding: int
    """Input embedding (a lookup: no FLOPs)."""
    tied: bool
    routed: int
    """Parameters of routed experts (module path contains ``.experts.``; shared experts are not
    routed and always active)."""
    active_frac: float
    """Routed experts per token / routed experts (1 for dense models)."""
    lora: int
    """LoRA parameters, modules and 3-D parameters together."""
    lora_experts: int = 0
    """The part of ``lora`` on 3-D (fused expert) parameters."""

    @property
    def active(self) -> float:
        return self.total - self.routed + self.routed * self.active_frac

    @property
    def matmul_dense(self) -> int:
        """Parameters every token multiplies by: all but the routed experts and the embedding
        lookup (the LM head is counted, also when tied to the embedding)."""
        return self.total - self.routed - (0 if self.tied else self.embedding)

    @property
    def matmul_active(self) -> float:
        return self.matmul_dense + self.routed * self.active_frac


def _experts(config) -> tuple[int, int]:
    """(routed experts, experts per token) from the config's fields; (0, 0) when dense."""
    n = next((getattr(config, k) for k in ("num_experts", "n_routed_experts", "num_local_experts")
              if getattr(config, k, None)), 0)
    return n, getattr(config, "num_experts_per_tok", 0) or 0


def count_params(config, lora_rank: int = 0, lora_targets: list[str] = (),
                 lora_parameters: list[str] = ()) -> Counts:
    """Exact counts from the model built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    routed = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed
    n_experts, per_tok = _experts(config)
    lora = 0
    if lora_rank:  # peft's rule: a Linear whose name is, or ends with ".", a target
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in lora_targets:
                lora += lora_rank * (mod.in_features + mod.out_features)
    lora_experts = 0
    for name, p in model.named_parameters():  # peft's ParamWrapper: rank r per expert
        if lora_rank and p.dim() == 3 and any(name == t or name.endswith("." + t)
                                              for t in lora_parameters):
            lora_experts += lora_rank * p.shape[0] * (p.shape[1] + p.shape[2])
    return Counts(total, embed.numel(), tied, routed,
                  per_tok / n_experts if routed and n_experts else 1.0, lora + lora_experts,
                  lora_experts)


def kv_elements_per_token(config) -> int:
    """KV-cache elements one token keeps over all layers: 2 x kv_heads x head_dim per layer, or
    MLA's compressed latent plus rotary key (kv_lora_rank + qk_rope_head_dim), or DeepSeek-V4's
    compressed entries (``_deepseek_v4_kv``)."""
    layers = config.num_hidden_layers
    if getattr(config, "compress_rates", None) and getattr(config, "layer_types", None):
        return _deepseek_v4_kv(config)
    if getattr(config, "kv_lora_rank", None):
        return layers * (config.kv_lora_rank + config.qk_rope_head_dim)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers * 2 * kv_heads * head_dim


def _deepseek_v4_kv(config) -> int:
    """DeepSeek-V4 (transformers' ``DeepseekV4HCACache``/``DeepseekV4CSACache``): one shared K=V
    entry of head_dim per compressed window of ``compress_rates[type]`` tokens, plus, in compressed
    sparse layers, the indexer's own index_head_dim entry per window. The sliding-window K=V ring
    (``sliding_window`` x head_dim per layer and sequence, whatever the length) is left out: it
    does not grow with the tokens."""
    total = 0.0
    for kind in config.layer_types:
        rate = config.compress_rates.get(kind)
        if rate:
            extra = config.index_head_dim if kind == "compressed_sparse_attention" else 0
            total += (config.head_dim + extra) / rate
    return math.ceil(total)


# -- the plan ---------------------------------------------------------------------------------
def plan(cfg: Config, arch_config) -> dict[str, Any]:
    """Per-GPU memory (bytes) and step time (seconds) of ``cfg`` on ``cfg.plan``'s hardware."""
    p = cfg.plan
    if p.gpus < 1:
        raise ConfigError(f"{cfg.source}: plan.gpus: must be >= 1, got {p.gpus}")
    if not 0 < p.mfu <= 1:
        raise ConfigError(f"{cfg.source}: plan.mfu: must be in (0, 1], got {p.mfu}")
    t = cfg.train
    c = count_params(arch_config, t.lora_rank, t.lora_targets, t.lora_target_parameters)
    if t.lora_rank and not c.lora:
        raise ConfigError(f"{cfg.source}: train.lora_targets: no Linear module of "
                          f"{type(arch_config).__name__} is named {t.lora_targets}")
    if t.lora_target_parameters and not c.lora_experts:
        raise ConfigError(f"{cfg.source}: train.lora_target_parameters: no 3-D parameter of "
                          f"{type(arch_config).__name__} is named {t.lora_target_parameters}")
    memory, kv = _memory(cfg, arch_config, c)
    peak = sum(memory.values()) - (min(memory["kv_cache"], memory["activations"]
                                       + memory["lm_head"]) if cfg.rollout.engine == "hf" else 0)
    gpu = GPUS[p.gpu]
    result = {
        "gpu": p.gpu, "gpus": p.gpus, "sharding": p.sharding, "dtype": cfg.model.dtype,
        "engine": cfg.rollout.engine,
        "params": c.total, "active_params": c.active, "trainable_params": c.lora or c.total,
        "memory": memory, "total": peak, "gpu_memory": gpu.memory_gib * GIB,
        "fits": peak <= gpu.memory_gib * GIB, "largest": max(memory, key=memory.get),
        "kv": kv, "time": _step_time(cfg, arch_config, c, kv), "warnings": [],
    }
    result["warnings"] = _warnings(cfg, result)
    return result


def _memory(cfg: Config, arch, c: Counts) -> tuple[dict[str, float], dict[str, Any]]:
    p, t, r = cfg.plan, cfg.train, cfg.rollout
    wb = DTYPE_BYTES[cfg.model.dtype]
    # Full fine-tuning under train.mixed_precision keeps float32 master weights (r1kit/train.py).
    mb = 4 if t.mixed_precision and not t.lora_rank else wb
    shard = p.gpus if p.sharding == "fsdp" else 1
    trainable, tb = (c.lora, LORA_BYTES) if t.lora_rank else (c.total, mb)
    weights = c.total * mb + c.lora * LORA_BYTES
    seqs = math.ceil(t.prompts_per_step * r.n / p.gpus)  # sequences per GPU
    kv_token = kv_elements_per_token(arch) * wb
    if r.engine == "hf":  # a dynamic cache for one generate batch, only while sampling
        seqs = min(r.batch_size, seqs)
        kv_needed = seqs * r.max_model_len * kv_token
        engine, kv_space = kv_needed, kv_needed
    else:  # vLLM's reservation holds its own weight copy, then the KV cache
        kv_needed = seqs * r.max_model_len * kv_token
        engine = r.gpu_memory_utilization * GPUS[p.gpu].memory_gib * GIB
        kv_space = engine - c.total * wb
    memory = {
        "weights": weights / shard,
        "gradients": trainable * tb / shard,
        "optimizer": ADAM_MOMENTS * trainable * tb / shard,
        "reference": (c.total * wb / shard) if cfg.algo.beta > 0 and not t.lora_rank else 0,
        "kv_cache": engine,
        "activations": (t.token_budget * arch.hidden_size * arch.num_hidden_layers
                        * ACT_BYTES_PER_HIDDEN_LAYER * wb / 2),
        "lm_head": t.logprob_chunk * arch.vocab_size * 4 * LOGIT_BUFFERS,
    }
    kv = {"bytes_per_token": kv_token, "sequences": seqs, "needed": kv_needed,
          "space": kv_space, "covers": kv_space >= kv_needed}
    return memory, kv


def _step_time(cfg: Config, arch, c: Counts, kv: dict[str, Any]) -> dict[str, float]:
    p, t, r, a = cfg.plan, cfg.train, cfg.rollout, cfg.algo
    gpu, wb = GPUS[p.gpu], DTYPE_BYTES[cfg.model.dtype]
    flops_s = (gpu.bf16_tflops if wb == 2 else gpu.fp32_tflops) * 1e12 * p.mfu
    hbm = gpu.hbm_tb_s * 1e12
    seqs = t.prompts_per_step * r.n / p.gpus  # sequences per GPU
    prompt, gen = r.max_model_len - r.max_tokens, r.max_tokens
    tokens = seqs * r.max_model_len
    # generation: prefill (compute), then decode in waves of what the KV cache holds
    prefill = FWD_FLOPS * c.matmul_active * seqs * prompt / flops_s
    if r.engine == "hf":
        waves = math.ceil(seqs / r.batch_size)
    else:
        waves = math.ceil(kv["needed"] / kv["space"]) if kv["space"] > 0 else math.inf
    batch = seqs / waves
    touched = 1 - (1 - c.active_frac) ** batch if c.routed else 1.0  # experts hit per step
    weight_read = gen * (c.matmul_dense + c.routed * touched) * wb
    kv_read = batch * gen * (prompt + gen / 2) * kv["bytes_per_token"]
    decode_flops = FWD_FLOPS * c.matmul_active * batch * gen
    decode = waves * max((weight_read + kv_read) / hbm, decode_flops / flops_s)
    passes = (a.beta > 0) + (t.epochs > 1 or t.minibatches > 1)
    per_token = LORA_TRAIN_FLOPS if t.lora_rank else TRAIN_FLOPS
    weights = c.total * wb
    if r.engine == "hf":
        sync = 0.0
    else:
        gather = weights * (p.gpus - 1) / p.gpus / (gpu.nvlink_gb_s * 1e9) \
            if p.sharding == "fsdp" else 0.0
        copy = (2 * weights / hbm if r.engine == "vllm"
                else 2 * weights / (gpu.pcie_gb_s * 1e9))
        sync = gather + copy
    time = {
        "generation": prefill + decode,
        "logprobs": passes * FWD_FLOPS * c.matmul_active * tokens / flops_s,
        "update": t.epochs * per_token * c.matmul_active * tokens / flops_s,
        "sync": sync,
    }
    time["total"] = sum(time.values())
    time["decode_waves"] = waves
    return time


def _warnings(cfg: Config, res: dict[str, Any]) -> list[str]:
    out = []
    if not res["fits"]:
        big = res["largest"]
        out.append(f"does not fit: {res['total'] / GIB:.1f} GiB needed per GPU, "
                   f"{res['gpu_memory'] / GIB:.1f} GiB on a {res['gpu']}; largest: {big} "
                   f"({res['memory'][big] / GIB:.1f} GiB)")
    kv = res["kv"]
    if cfg.rollout.engine != "hf" and kv["space"] <= 0:
        out.append(f"the engine's weights ({res['params'] * DTYPE_BYTES[cfg.model.dtype] / GIB:.1f}"
                   f" GiB) do not fit rollout.gpu_memory_utilization="
                   f"{cfg.rollout.gpu_memory_utilization}: vLLM would not start")
    elif not kv["covers"]:
        out.append(f"the KV cache holds {kv['space'] / GIB:.1f} of the {kv['needed'] / GIB:.1f} GiB "
                   f"{kv['sequences']} full-length sequences need: generation runs in "
                   f"{res['time']['decode_waves']} waves")
    return out


# -- output -----------------------------------------------------------------------------------
LABELS = {"weights": "weights", "gradients": "gradients", "optimizer": "optimizer (AdamW)",
          "reference": "reference model", "kv_cache": "KV cache / engine",
          "activations": "activations", "lm_head": "LM head chunks"}


def render(res: dict[str, Any]) -> str:
    """The plan as text: memory table, warnings, step-time table."""
    kv = res["kv"]
    head = (f"r1kit plan (an estimate, not a measurement): {res['gpus']} x {res['gpu']}, "
            f"sharding {res['sharding']}, {res['dtype']}, engine {res['engine']}")
    counts = (f"parameters {res['params']:,} (active per token {res['active_params']:,.0f}, "
              f"trainable {res['trainable_params']:,})")
    lines = [head, counts, "", f"{'per GPU':24s}{'GiB':>10s}"]
    for key, value in res["memory"].items():
        lines.append(f"{LABELS[key]:24s}{value / GIB:10.2f}")
    lines += [f"{'total (peak)':24s}{res['total'] / GIB:10.2f}",
              f"{'GPU memory':24s}{res['gpu_memory'] / GIB:10.2f}",
              f"KV cache: {kv['bytes_per_token'] / 2**10:.1f} KiB per token; " + (
                  f"the HF engine's batch of {kv['sequences']} full-length sequences needs "
                  f"{kv['needed'] / GIB:.2f} GiB while sampling (the peak counts the larger of "
                  "it and the update's activations)" if res["engine"] == "hf" else
                  f"{kv['sequences']} full-length sequences per GPU need {kv['needed'] / GIB:.2f} "
                  f"GiB, vLLM's reservation has {max(kv['space'], 0) / GIB:.2f} GiB for them after "
                  f"its weights ({'covers' if kv['covers'] else 'does not cover'})")]
    lines += [f"WARNING: {w}" for w in res["warnings"]]
    lines += ["", f"{'step time':24s}{'s':>10s}"]
    for key in ("generation", "logprobs", "update", "sync", "total"):
        lines.append(f"{key:24s}{res['time'][key]:10.2f}")
    return "\n".join(lines)


def _finite(x: Any) -> Any:
    """JSON has no infinity: an unbounded time (the engine cannot start) becomes null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    return None if isinstance(x, float) and not math.isfinite(x) else x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="r1kit plan", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Estimate per-GPU memory (weights, gradients, optimizer, reference, KV "
        "cache, activations) and step time (generation, log-probs, update, sync) of a recipe "
        "on the hardware its plan section states. Constants and models: r1kit/plan.py.",
        epilog="settings (section.key=value):\n" + config_help(["plan"]))
    ap.add_argument("recipe", nargs="?", help="recipe YAML (defaults apply without one)")
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. plan.gpus=8")
    ap.add_argument("--json", metavar="PATH", help="also write the plan as JSON")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    recipe, overrides = args.recipe, args.overrides
    if recipe is not None and "=" in recipe:  # no recipe, only overrides
        recipe, overrides = None, [recipe, *overrides]
    try:
        cfg = load_config(recipe, overrides, check_data=False)
        res = plan(cfg, arch_config(cfg.model))
    except ConfigError as e:
        print(f"r1kit: config error: {e}", file=sys.stderr)
        return 2
    print(render(res))
    if args.json:
        Path(args.json).write_text(json.dumps(_finite(res), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
