"""What one architecture holds: parameters (by kind and by decoder layer), the KV cache and the
activations one token keeps, from its transformers config (``r1kit plan``'s inputs; the per-GPU
model built on them is ``r1kit/estimate.py``).

Parameters are counted exactly on the meta device (``count_params``). Activations
(``activation_bytes``) are the bytes one token keeps for the backward pass, counted tensor by
tensor from what transformers' decoder layers save (``torch.autograd.graph.saved_tensors_hooks``
lists them), with activations of ``a`` bytes (the compute dtype):

- each RMSNorm of width w keeps its float32 input, the normalised value and its output,
  ``(4 + 2a) w``; Qwen3's per-head q/k norms ``(4 + a)`` per element (their output goes into the
  rotary product, which keeps only cos and sin);
- SDPA keeps the rotated queries, keys, values and its output, ``a (2q + 2kv)`` for q = heads x
  head_dim and kv = kv_heads x head_dim; with a padding mask (rows of a micro-batch differ in
  length) transformers repeats K and V to every query head first (``use_gqa_in_sdpa``), so
  ``4aq``; plus a float32 log-sum-exp per head (flash and memory-efficient SDPA keep no s x s
  scores);
- a SwiGLU MLP of width I keeps gate, activation, up and product, ``4aI``; an MoE layer, per
  routed expert of a token, the gathered input, the gate/up output (2f), activation, product and
  down output, ``a k (2h + 4f)``, with float32 router probabilities and four int64 routing indices
  per (token, expert) pair (transformers' ``grouped_mm`` sort and gather); shared experts as a
  SwiGLU MLP;
- MLA (DeepSeek-V2/V3): the latent and its norm, queries, keys, values and output (approximate:
  not measured);
- architectures not derived here (DeepSeek-V4: mHC streams, compressed attention) fall back to
  Korthikanti et al. 2022's ``ACT_BYTES_PER_HIDDEN_LAYER``;
- outside the layers: the final norm, the completion positions' hidden states, rotary cos and sin.

With activation checkpointing (transformers' non-reentrant gradient checkpointing per decoder
layer) each layer keeps only its input (``h x a``; ``hc_mult`` streams of it under mHC) and one
layer's activations exist at a time, recomputed in the backward pass. ``tests/test_plan_memory.py``
measures these on a Qwen3-MoE in float32, without and with checkpointing.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from r1kit.archs import full_config
from r1kit.config import ConfigError, ModelConfig
from r1kit.tiny import TIED_BY_DEFAULT, build_tokenizer, tiny_config

# Activation bytes kept per token, per hidden unit, per layer with 2-byte activations and no
# recomputation, for architectures ``activation_bytes`` does not derive: Korthikanti et al. 2022,
# "Reducing Activation Recomputation in Large Transformer Models", eq. 1: sbh(34 + 5as/h) with
# tensor parallelism 1, without the s x s scores (5as/h) that SDPA / flash attention never store.
ACT_BYTES_PER_HIDDEN_LAYER = 34
QK_NORM_TYPES = ("qwen3", "qwen3_moe")  # per-head RMSNorm of queries and keys

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
    root: int = 0
    """Parameters outside the decoder layers (embeddings, final norm, LM head): FSDP2's root."""
    layer_max: int = 0
    """Parameters of the largest decoder layer (an FSDP2 unit)."""
    lora_layer_max: int = 0
    """LoRA parameters of the decoder layer with the most."""
    largest: int = 0
    """Elements of the largest parameter tensor."""

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


def _layer_of(name: str) -> int | None:
    """The decoder layer index in a parameter's name (``model.layers.3.mlp...`` -> 3)."""
    parts = name.split(".")
    for a, b in itertools.pairwise(parts):
        if a == "layers" and b.isdigit():
            return int(b)
    return None


def count_params(config, lora_rank: int = 0, lora_targets: list[str] = (),
                 lora_parameters: list[str] = ()) -> Counts:
    """Exact counts from the model built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    per_layer: dict[int, int] = {}
    lora_layer: dict[int, int] = {}
    total = routed = root = largest = 0
    for name, p in model.named_parameters():
        total += p.numel()
        largest = max(largest, p.numel())
        routed += p.numel() if ".experts." in name else 0
        i = _layer_of(name)
        if i is None:
            root += p.numel()
        else:
            per_layer[i] = per_layer.get(i, 0) + p.numel()
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed
    n_experts, per_tok = _experts(config)
    lora = lora_experts = 0
    if lora_rank:  # peft's rule: a Linear whose name is, or ends with ".", a target
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in lora_targets:
                n = lora_rank * (mod.in_features + mod.out_features)
                lora += n
                i = _layer_of(name)
                if i is not None:
                    lora_layer[i] = lora_layer.get(i, 0) + n
        for name, p in model.named_parameters():  # peft's ParamWrapper: rank r per expert
            if p.dim() == 3 and any(name == t or name.endswith("." + t) for t in lora_parameters):
                n = lora_rank * p.shape[0] * (p.shape[1] + p.shape[2])
                lora_experts += n
                i = _layer_of(name)
                if i is not None:
                    lora_layer[i] = lora_layer.get(i, 0) + n
    return Counts(total, embed.numel(), tied, routed,
                  per_tok / n_experts if routed and n_experts else 1.0, lora + lora_experts,
                  lora_experts, root=root, layer_max=max(per_layer.values(), default=0),
                  lora_layer_max=max(lora_layer.values(), default=0), largest=largest)


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


def kv_shards(config, tp: int) -> int:
    """Over how many of a tensor-parallel engine's GPUs one token's KV cache is divided: its KV
    heads split over the GPUs (vLLM replicates them where there are fewer heads than GPUs); MLA's
    latent and DeepSeek-V4's shared entry are on every GPU."""
    if getattr(config, "kv_lora_rank", None) or getattr(config, "compress_rates", None):
        return 1
    return max(1, min(tp, getattr(config, "num_key_value_heads", None)
                      or config.num_attention_heads))


# -- activations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Activations:
    """Bytes one token keeps for the backward pass (see the module docstring)."""

    layers: list[float]
    """In each decoder layer."""
    layer_input: float
    """A layer's input: all a checkpointed layer keeps."""
    outside: float
    """Outside the layers: final norm, the completion positions' hidden states, cos and sin."""
    derived: bool
    """False: the generic per-hidden-unit constant (an architecture not derived here)."""

    def recomputed(self, tokens: int) -> float:
        """Bytes of the layer a checkpointed backward recomputes (the largest)."""
        return tokens * max(self.layers, default=0)

    def kept(self, tokens: int, checkpointing: bool) -> float:
        """Bytes of ``tokens`` tokens' activations at the start of the backward pass."""
        if checkpointing:
            per_token = len(self.layers) * self.layer_input + max(self.layers, default=0)
        else:
            per_token = sum(self.layers)
        return tokens * (per_token + self.outside)


def _moe_layer(config, i: int) -> bool:
    n, _ = _experts(config)
    if not n:
        return False
    if getattr(config, "first_k_dense_replace", None) is not None:  # DeepSeek
        return i >= config.first_k_dense_replace and i % getattr(config, "moe_layer_freq", 1) == 0
    step = getattr(config, "decoder_sparse_step", 1) or 1  # Qwen-MoE
    return i not in (getattr(config, "mlp_only_layers", None) or []) and (i + 1) % step == 0


def _mlp_bytes(config, i: int, a: int) -> float:
    h = config.hidden_size
    if not _moe_layer(config, i):
        return 4 * a * config.intermediate_size  # gate, silu(gate), up, product
    n, k = _experts(config)
    f = config.moe_intermediate_size
    out = a * k * (2 * h + 4 * f) + 4 * n + 4 * 8 * k  # experts; fp32 router probs; int64 indices
    shared = (getattr(config, "n_shared_experts", 0) or 0) * f \
        or getattr(config, "shared_expert_intermediate_size", 0) or 0
    return out + 4 * a * shared


def _attention_bytes(config, a: int, padded: bool) -> float:
    heads = config.num_attention_heads
    if getattr(config, "kv_lora_rank", None):  # MLA, approximate
        r, rope = config.kv_lora_rank, config.qk_rope_head_dim
        qk = config.qk_nope_head_dim + rope
        out = a * (r + rope) + (4 + 2 * a) * r + a * heads * (2 * qk + 2 * config.v_head_dim)
        if getattr(config, "q_lora_rank", None):
            out += (4 + 2 * a) * config.q_lora_rank
        return out + 4 * heads
    d = getattr(config, "head_dim", None) or config.hidden_size // heads
    q = heads * d
    kv = (getattr(config, "num_key_value_heads", None) or heads) * d
    out = a * (2 * q + (2 * q if padded else 2 * kv)) + 4 * heads  # q, out, K and V; lse
    if config.model_type in QK_NORM_TYPES:
        out += (4 + a) * (q + kv)
    return out


def activation_bytes(config, a: int, padded: bool = True) -> Activations:
    """What one token keeps for the backward pass with activations of ``a`` bytes; ``padded``:
    micro-batches whose rows differ in length (SDPA gets a mask)."""
    h, layers = config.hidden_size, config.num_hidden_layers
    streams = getattr(config, "hc_mult", None) or 1
    heads = config.num_attention_heads
    d = getattr(config, "head_dim", None) or h // heads
    outside = (4 + 2 * a) * h + a * h + 2 * a * d
    if streams > 1 or getattr(config, "compress_rates", None):  # DeepSeek-V4: not derived
        per = ACT_BYTES_PER_HIDDEN_LAYER * h * a / 2
        return Activations([per] * layers, streams * h * a, outside, False)
    norms = 2 * (4 + 2 * a) * h  # input and post-attention RMSNorm
    att = _attention_bytes(config, a, padded)
    return Activations([norms + att + _mlp_bytes(config, i, a) for i in range(layers)],
                       h * a, outside, True)
