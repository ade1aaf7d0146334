"""The embedded tiny policies: a tiny Qwen3-MoE, a tiny DeepSeek-V3, a tiny dense Qwen3 and a tiny
DeepSeek-V4 (mHC, hash-routed and top-k MoE, compressed attention), built locally from a seed.

All are ordinary HF checkpoints (``config.json``, ``model.safetensors``, tokenizer files) that
``AutoModelForCausalLM``, peft and vLLM load. Weights are random-init; nothing is downloaded. The
tokenizer is a byte-level BPE trained here on text from the synthetic task family, with
``<think>``, ``</think>``, ``<answer>``, ``</answer>`` as single tokens and a chat template.

Sizes are chosen for what vLLM's CPU backend accepts: attention head_dim 32 (16 is rejected), and
for DeepSeek-V3's Multi-head Latent Attention ``kv_lora_rank=512, qk_rope_head_dim=64``.
DeepSeek-V4 is sampled by the HF engine only (vLLM cannot run it here:
``rollouts.factory.check_vllm_can_load``), so its sizes are chosen for CPU speed instead.

Input and output embeddings are untied for the MoE families (as in Qwen3-30B-A3B and DeepSeek-V3)
and tied for ``qwen3`` (as in Qwen3-0.6B and Qwen2.5-0.5B); ``build_tiny(...,
tie_word_embeddings=...)`` overrides a family's default, so weight sync can be tested both ways.
``qwen3_dense`` is the dense Qwen3 under the name distillation gives its student (same config,
its own cache folder); ``qwen2`` is a Qwen2/2.5-style dense model (biased q/k/v, no q/k norm),
tied as well.

A build is cached under ``cache_dir / f"{family}-seed{seed}-v{BUILD_VERSION}"``, or
``f"{family}-tied-seed{seed}-v{BUILD_VERSION}"`` when tied; a second call returns that path without
work. A build writes to a temporary folder and renames it, so an
interrupted build never leaves a half checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from r1kit.tasks import arithmetic_tasks
from rollouts.prompts import r1kit_zero_prompt

FAMILIES = ("qwen3_moe", "deepseek_v3", "qwen3", "deepseek_v4", "qwen3_dense", "qwen2")
TIED_BY_DEFAULT = {"qwen3_moe": False, "deepseek_v3": False, "qwen3": True, "deepseek_v4": False,
                   "qwen3_dense": True, "qwen2": True}
BUILD_VERSION = 2  # bump when the recipe below changes, so old caches are not reused
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Single tokens but not "special": decoding with skip_special_tokens=True keeps them, as in the
# tokenizers of Qwen3 and DeepSeek-R1.
REASONING_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
VOCAB_SIZE = 1024
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>{% endif %}"
)


def default_cache_dir() -> Path:
    """``$R1KIT_CACHE`` or ``~/.cache/r1kit``."""
    return Path(os.environ.get("R1KIT_CACHE", Path.home() / ".cache" / "r1kit"))


def _corpus(seed: int) -> list[str]:
    tasks = arithmetic_tasks("train", 2000, seed=seed) + arithmetic_tasks("heldout", 300, seed=seed)
    lines = []
    for t in tasks:
        lines.append(r1kit_zero_prompt(t.question))
        lines.append(f" {t.expression} = {t.answer} </think> <answer> {t.answer} </answer>")
    return lines


def build_tokenizer(seed: int = 0):
    """A byte-level BPE tokenizer trained on task text; deterministic for a seed."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(family: str, vocab_size: int, eos_id: int, tie_word_embeddings: bool = False):
    """The model config of a family; a few million parameters at most."""
    common = dict(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=tie_word_embeddings,
        eos_token_id=eos_id, pad_token_id=eos_id, bos_token_id=None,
    )
    if family in ("qwen3", "qwen3_dense"):  # qwen3_dense: the distillation student's name
        from transformers import Qwen3Config

        return Qwen3Config(**common, num_key_value_heads=1, head_dim=32, intermediate_size=128)
    if family == "qwen2":  # Qwen2/2.5-style dense (qkv bias, no q/k norm), tied
        from transformers import Qwen2Config

        return Qwen2Config(**common, num_key_value_heads=1, intermediate_size=128)
    if family == "qwen3_moe":
        from transformers import Qwen3MoeConfig

        return Qwen3MoeConfig(
            **common, num_key_value_heads=1, head_dim=32, intermediate_size=128,
            moe_intermediate_size=64, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
            decoder_sparse_step=1,
        )
    if family == "deepseek_v3":
        from transformers import DeepseekV3Config

        cfg = DeepseekV3Config(
            **common, num_key_value_heads=2, intermediate_size=128, moe_intermediate_size=32,
            n_shared_experts=1, n_routed_experts=16, num_experts_per_tok=2, n_group=1,
            topk_group=1, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
            kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64, qk_nope_head_dim=32,
            v_head_dim=32, num_mtp_layers=0,
        )
        # What DeepSeek-V3's own config.json states and vLLM reads: sigmoid scores with the
        # aux-loss-free correction bias (e_score_correction_bias) used for top-k selection.
        cfg.topk_method = "noaux_tc"
        cfg.scoring_func = "sigmoid"
        return cfg
    if family == "deepseek_v4":
        return _deepseek_v4_config(common)
    raise ValueError(f"unknown tiny family {family!r}; expected one of {FAMILIES}")


def build_tiny(
    family: str = "qwen3_moe", seed: int = 0, cache_dir: Path | None = None, force: bool = False,
    tie_word_embeddings: bool | None = None,
) -> Path:
    """Build (or reuse) the tiny checkpoint of ``family`` and return its folder;
    ``tie_word_embeddings=None`` keeps the family's default (``TIED_BY_DEFAULT``)."""
    import torch
    from transformers import AutoModelForCausalLM

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; expected one of {FAMILIES}")
    tied = TIED_BY_DEFAULT[family] if tie_word_embeddings is None else bool(tie_word_embeddings)
    name = f"{family}{'-tied' if tied else ''}-seed{seed}-v{BUILD_VERSION}"
    out = Path(cache_dir or default_cache_dir()) / name
    if out.is_dir() and (out / "model.safetensors").exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        tokenizer = build_tokenizer(seed)
        config = tiny_config(family, len(tokenizer), tokenizer.eos_token_id, tied)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if family in ("deepseek_v3", "deepseek_v4"):
            _randomize_correction_bias(model, seed)
        if family == "deepseek_v4":
            fill_hash_tables(model, seed)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta = {"family": family, "seed": seed, "build_version": BUILD_VERSION,
            "tie_word_embeddings": tied, "parameters": sum(p.numel() for p in model.parameters())}
    return save_checkpoint(model, tokenizer, meta, out, tmp)


def save_checkpoint(model, tokenizer, meta: dict, out: Path, tmp: Path | None = None) -> Path:
    """Write model, tokenizer and ``r1kit_tiny.json`` into ``tmp`` (a fresh temporary folder
    beside ``out`` if None), then rename it to ``out``: a reader never sees half a checkpoint."""
    tmp = tmp or Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "r1kit_tiny.json").write_text(json.dumps(meta, indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _randomize_correction_bias(model, seed: int) -> None:
    """Give the routing correction bias non-zero values, so a sync that drops it is caught."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    for name, buf in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)


def _deepseek_v4_config(common: dict):
    """A DeepSeek-V4 with every component at least once: mHC (4 streams), hash-routed MoE
    (layers 0-1) then top-k MoE (layers 2-3), a shared expert, and the three attention types
    (sliding window, compressed sparse with its lightning indexer, heavily compressed).
    Compression rates 4 and 8 and a 16-token window make every branch fire on prompts of a few
    dozen tokens (the published 4 / 128 / 128 would leave HCA idle); the indexer keeps 2 entries,
    so its top-k selection really drops some."""
    from transformers import DeepseekV4Config

    common = {**common, "num_hidden_layers": 4}
    return DeepseekV4Config(
        **common, num_key_value_heads=1, head_dim=32, partial_rotary_factor=0.5, q_lora_rank=32,
        moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
        routed_scaling_factor=1.5, hc_mult=4, hc_sinkhorn_iters=20, sliding_window=16,
        o_groups=2, o_lora_rank=16, index_n_heads=16, index_head_dim=16, index_topk=2,
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
        layer_types=["sliding_attention", "compressed_sparse_attention",
                     "heavily_compressed_attention", "compressed_sparse_attention"],
        mlp_layer_types=["hash_moe", "hash_moe", "moe", "moe"], num_nextn_predict_layers=0,
    )


def fill_hash_tables(model, seed: int) -> None:
    """Fill each hash-MoE layer's frozen token -> experts table (``tid2eid``, zeros after
    init) with k distinct experts per token, as a trained V4 checkpoint ships it."""
    import torch

    g = torch.Generator().manual_seed(seed + 2)
    for name, buf in model.named_buffers():
        if name.endswith("tid2eid"):
            vocab, k = buf.shape
            experts = model.config.n_routed_experts
            table = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(vocab)])
            buf.copy_(table)
