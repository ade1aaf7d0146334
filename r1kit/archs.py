"""Architectures of the real-model recipes: hub id -> transformers ``model_type`` and config values.

The values in ``ARCHS`` are transcribed by hand from each model's published ``config.json`` on the
Hugging Face hub (nothing is downloaded here: this machine has no network); where a model folder
exists locally, ``full_config`` reads its ``config.json`` instead. Keys transformers does not use
(``torch_dtype``, ``architectures``) are left out; keys the original remote code reads but
transformers' class ignores (DeepSeek-V2's ``scoring_func``, ``aux_loss_alpha``, ``seq_aux``,
``moe_layer_freq``) are kept, as the file has them. DeepSeek-V4-Flash-Base is transcribed from
the defaults of transformers' ``DeepseekV4Config`` (5.19), which its docstring gives as that
checkpoint's (``@auto_docstring(checkpoint="deepseek-ai/DeepSeek-V4-Flash-Base")``, and the
``DeepseekV4GroupedLinear`` docstring's V4-Flash shape: 64 heads of 512, 8 output groups of rank
1,024, width 4,096); its ``layer_types``/``mlp_layer_types`` are the ones that config derives (2
heavily compressed layers then compressed sparse / heavily compressed alternating; 3 hash-routed
MoE layers then top-k). ``tests/test_dry_run.py`` checks that each
full config has the parameter count its report states, which catches a mistyped size.

``reduced_config`` keeps what makes an architecture itself (model type, attention kind: GQA or
MLA with its latent and rotary widths, MoE with shared experts and leading dense layers, routing
function, rotary scaling, tied or untied embeddings) and shrinks only sizes: width 64, 2 layers, 2
heads, 8 routed experts of width 32, and the vocabulary to the tokenizer's (``r1kit.tiny``'s
embedded tokenizer in a dry run). MLA keeps ``kv_lora_rank=512`` and ``qk_rope_head_dim=64``:
vLLM's CPU MLA backend accepts no other values (``r1kit.tiny``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Arch:
    model_type: str
    """transformers ``model_type`` (``AutoConfig.for_model`` key)."""
    config: dict[str, Any]
    """The published ``config.json`` values."""
    reduce: dict[str, Any] = field(default_factory=dict)
    """What ``reduced_config`` overrides on top of the common reductions."""


_QWEN2_5_7B = {  # Qwen2.5-7B shape, shared by Qwen2.5-Math-7B and Qwen2.5-Coder-7B
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4, "hidden_act": "silu", "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "vocab_size": 152064, "bos_token_id": 151643, "use_sliding_window": False,
    "max_window_layers": 28,
    "attention_dropout": 0.0, "initializer_range": 0.02,
}
_QWEN3_30B_A3B = {
    "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "hidden_act": "silu", "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False, "vocab_size": 151936, "bos_token_id": 151643,
    "rope_theta": 1000000.0,
    "attention_bias": False, "attention_dropout": 0.0, "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 48, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "moe_intermediate_size": 768,
    "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True,
    "router_aux_loss_coef": 0.001,
    "output_router_logits": False, "initializer_range": 0.02,
}
_DEEPSEEK_V4_FLASH = {  # transformers' DeepseekV4Config defaults = DeepSeek-V4-Flash-Base
    "vocab_size": 129280, "hidden_size": 4096, "moe_intermediate_size": 2048,
    "num_hidden_layers": 43, "num_attention_heads": 64, "num_key_value_heads": 1,
    "head_dim": 512, "partial_rotary_factor": 0.125, "q_lora_rank": 1024,
    "num_experts_per_tok": 6, "n_routed_experts": 256, "n_shared_experts": 1,
    "scoring_func": "sqrtsoftplus", "norm_topk_prob": True, "routed_scaling_factor": 1.5,
    "max_position_embeddings": 1048576, "rope_theta": 10000.0, "compress_rope_theta": 160000.0,
    "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
    "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "num_hash_layers": 3,
    "swiglu_limit": 10.0, "sliding_window": 128, "o_groups": 8, "o_lora_rank": 1024,
    "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512, "num_nextn_predict_layers": 1,
    "hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    "bos_token_id": 0, "eos_token_id": 1, "router_aux_loss_coef": 0.001,
    "initializer_range": 0.02,
}
# As r1kit.tiny's deepseek_v4: 4 layers so that both MoE kinds and all three attention kinds
# remain, and windows short enough that every compressor fires within a dry run's 24 tokens.
_DEEPSEEK_V4_REDUCE = {
    "num_hidden_layers": 4, "head_dim": 32, "partial_rotary_factor": 0.5, "q_lora_rank": 32,
    "moe_intermediate_size": 32, "n_routed_experts": 8, "num_experts_per_tok": 2,
    "sliding_window": 16, "o_groups": 2, "o_lora_rank": 16, "index_n_heads": 16,
    "index_head_dim": 16, "index_topk": 2, "num_nextn_predict_layers": 0,
    "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
    "layer_types": ["sliding_attention", "compressed_sparse_attention",
                    "heavily_compressed_attention", "compressed_sparse_attention"],
    "mlp_layer_types": ["hash_moe", "hash_moe", "moe", "moe"],
}
_QWEN3_MOE_REDUCE = {"head_dim": 32, "moe_intermediate_size": 32, "num_experts": 8,
                     "num_experts_per_tok": 2, "max_window_layers": 2}

ARCHS: dict[str, Arch] = {
    "Qwen/Qwen3-30B-A3B-Base": Arch("qwen3_moe", dict(
        _QWEN3_30B_A3B, max_position_embeddings=32768, eos_token_id=151643),
        _QWEN3_MOE_REDUCE),
    "Qwen/Qwen3-30B-A3B": Arch("qwen3_moe", dict(
        _QWEN3_30B_A3B, max_position_embeddings=40960, eos_token_id=151645),
        _QWEN3_MOE_REDUCE),
    "deepseek-ai/DeepSeek-V2-Lite": Arch("deepseek_v2", {
        "hidden_size": 2048, "intermediate_size": 10944, "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "num_key_value_heads": 16, "hidden_act": "silu", "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "vocab_size": 102400, "bos_token_id": 100000, "eos_token_id": 100001,
        "max_position_embeddings": 163840, "rope_theta": 10000,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                         "mscale_all_dim": 0.707},
        "attention_bias": False, "attention_dropout": 0.0, "q_lora_rank": None, "kv_lora_rank": 512,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1, "moe_intermediate_size": 1408, "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_experts_per_tok": 6, "n_group": 1, "topk_group": 1, "topk_method": "greedy",
        "scoring_func": "softmax", "norm_topk_prob": False, "routed_scaling_factor": 1.0,
        "aux_loss_alpha": 0.001, "seq_aux": True, "initializer_range": 0.02},
        # keeps MLA (512/64 rotary: vLLM CPU needs them), 2 shared experts, 1 leading dense layer
        {"num_key_value_heads": 2, "moe_intermediate_size": 32, "n_routed_experts": 8,
         "num_experts_per_tok": 2, "qk_nope_head_dim": 32, "v_head_dim": 32}),
    "deepseek-ai/DeepSeek-V4-Flash-Base": Arch("deepseek_v4", _DEEPSEEK_V4_FLASH,
                                               _DEEPSEEK_V4_REDUCE),
    "Qwen/Qwen2.5-Math-7B": Arch("qwen2", dict(
        _QWEN2_5_7B, max_position_embeddings=4096, rope_theta=10000.0, sliding_window=4096,
        eos_token_id=151643), {"max_window_layers": 2}),
    "Qwen/Qwen2.5-Coder-7B-Instruct": Arch("qwen2", dict(
        _QWEN2_5_7B, max_position_embeddings=32768, rope_theta=1000000.0, sliding_window=131072,
        eos_token_id=151645), {"max_window_layers": 2}),
    "Qwen/Qwen2.5-32B": Arch("qwen2", {
        "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
        "num_attention_heads": 40,
        "num_key_value_heads": 8, "hidden_act": "silu", "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "vocab_size": 152064, "bos_token_id": 151643, "eos_token_id": 151643,
        "max_position_embeddings": 131072, "rope_theta": 1000000.0, "use_sliding_window": False,
        "sliding_window": 131072, "max_window_layers": 64, "attention_dropout": 0.0,
        "initializer_range": 0.02}, {"max_window_layers": 2}),
}

# Sizes every reduced architecture gets; ``Arch.reduce`` adds or overrides per model.
REDUCED = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
"num_key_value_heads": 1,
               "intermediate_size": 128}


def _local_config(path: str) -> dict[str, Any] | None:
    file = Path(path).expanduser() / "config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def arch_of(model_path: str) -> Arch:
    """The architecture of a hub id in ``ARCHS``, or of a local folder's ``config.json``."""
    local = _local_config(model_path)
    if local is not None:
        known = ARCHS.get(local.get("_name_or_path", ""))
        reduce = known.reduce if known and known.model_type == local["model_type"] else {}
        return Arch(local["model_type"], local, reduce)
    if model_path not in ARCHS:
        raise KeyError(f"no architecture known for {model_path!r}: r1kit.archs has "
                       f"{', '.join(ARCHS)}, or give a local folder with a config.json")
    return ARCHS[model_path]


def full_config(model_path: str):
    """The model's full-size transformers config."""
    from transformers import AutoConfig

    arch = arch_of(model_path)
    values = {k: v for k, v in arch.config.items() if k not in ("model_type", "architectures")}
    return AutoConfig.for_model(arch.model_type, **values)


def reduced_config(model_path: str, vocab_size: int | None = None, **token_ids: int | None):
    """The same architecture at toy size (``REDUCED`` and the model's own reductions);
    ``vocab_size`` and token ids (``eos_token_id=...``) set to those of the tokenizer that will
    drive it."""
    from transformers import AutoConfig

    arch = arch_of(model_path)
    values = {k: v for k, v in arch.config.items() if k not in ("model_type", "architectures")}
    values.update(REDUCED)
    values.update(arch.reduce)
    if vocab_size is not None:
        values["vocab_size"] = vocab_size
    values.update(token_ids)
    return AutoConfig.for_model(arch.model_type, **values)


def parameter_counts(config) -> tuple[int, int]:
    """``(total, active per token)`` parameters of a config's causal LM, counted on the meta
    device (no memory). Active counts ``num_experts_per_tok`` of the routed experts of each MoE
    layer, and everything else (shared experts, attention, both embeddings) in full."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = routed = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if ".experts." in name:  # fused routed experts: (E, ...); shared_experts do not match
            routed += p.numel()
    experts = getattr(config, "num_experts", None) or getattr(config, "n_routed_experts", None)
    active = total - routed
    if experts:
        active += routed * config.num_experts_per_tok // experts
    return total, active


def describe(config) -> str:
    """One line: the shape of a config (for the dry run's summary)."""
    c = config
    parts = [c.model_type, f"hidden {c.hidden_size}", f"layers {c.num_hidden_layers}",
             f"heads {c.num_attention_heads}/{c.num_key_value_heads} kv"]
    if getattr(c, "kv_lora_rank", None):
        parts.append(f"MLA kv_lora {c.kv_lora_rank} rope {c.qk_rope_head_dim}")
    experts = getattr(c, "num_experts", None) or getattr(c, "n_routed_experts", None)
    if experts:
        moe = f"MoE {experts} experts top-{c.num_experts_per_tok}"
        if getattr(c, "n_shared_experts", None):
            moe += f" + {c.n_shared_experts} shared"
        if getattr(c, "first_k_dense_replace", 0):
            moe += f", first {c.first_k_dense_replace} dense"
        if getattr(c, "mlp_layer_types", None):
            moe += f", first {c.mlp_layer_types.count('hash_moe')} hash-routed"
        parts.append(moe)
    if getattr(c, "hc_mult", None):
        kinds = {"sliding_attention": "SW", "compressed_sparse_attention": "CSA",
                 "heavily_compressed_attention": "HCA"}
        parts.append(f"mHC {c.hc_mult} streams, attention "
                     + "/".join(kinds[t] for t in dict.fromkeys(c.layer_types)))
    parts.append(f"vocab {c.vocab_size}")
    return ", ".join(parts)
