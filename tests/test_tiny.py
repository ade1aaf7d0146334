"""The embedded tiny policies: deterministic, cached, loadable by transformers and peft."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from r1kit.tiny import REASONING_TOKENS, build_tiny


def _digest(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_build_is_deterministic_and_cached(tmp_path, tiny_qwen):
    again = build_tiny("qwen3_moe", cache_dir=tmp_path)  # a fresh build elsewhere
    assert _digest(again) == _digest(tiny_qwen)
    assert (again / "tokenizer.json").read_text() == (tiny_qwen / "tokenizer.json").read_text()
    mtime = (again / "model.safetensors").stat().st_mtime_ns
    t = time.perf_counter()
    assert build_tiny("qwen3_moe", cache_dir=tmp_path) == again
    assert time.perf_counter() - t < 0.5  # a cache hit does no work
    assert (again / "model.safetensors").stat().st_mtime_ns == mtime
    other_seed = build_tiny("qwen3_moe", seed=1, cache_dir=tmp_path)
    assert _digest(other_seed) != _digest(again)


def test_qwen3_moe_shape(tiny_qwen):
    cfg = AutoConfig.from_pretrained(tiny_qwen)
    assert cfg.model_type == "qwen3_moe"
    assert cfg.num_experts >= 8 and cfg.num_experts_per_tok == 2 and cfg.head_dim >= 32
    meta = json.loads((tiny_qwen / "r1kit_tiny.json").read_text())
    assert meta["parameters"] <= 5_000_000


def test_deepseek_v3_shape(tiny_deepseek):
    cfg = AutoConfig.from_pretrained(tiny_deepseek)
    assert cfg.model_type == "deepseek_v3"
    assert cfg.n_shared_experts == 1 and cfg.n_routed_experts >= 8
    assert cfg.topk_method == "noaux_tc" and cfg.scoring_func == "sigmoid"
    assert cfg.kv_lora_rank == 512 and cfg.qk_rope_head_dim == 64
    model = AutoModelForCausalLM.from_pretrained(tiny_deepseek)
    bias = [b for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")]
    assert bias and all(b.abs().sum() > 0 for b in bias)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_tokenizer_reasoning_tags_are_single_tokens(family, tiny_cache):
    tok = AutoTokenizer.from_pretrained(build_tiny(family, cache_dir=tiny_cache))
    for tag in REASONING_TOKENS:
        ids = tok(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (tag, ids)
        # not "special": decoding keeps them even when special tokens are skipped
        assert tok.decode(ids, skip_special_tokens=True) == tag
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 1 + 1?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<think>") and "What is 1 + 1?" in prompt


def test_peft_wraps_and_trains(tiny_qwen):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)
    assert torch.isfinite(loss)


def test_tied_variants_are_separate_builds(tmp_path, tiny_qwen):
    """Tied embeddings: qwen3's default, an option for the MoE families; untied names unchanged."""
    dense = build_tiny("qwen3", cache_dir=tmp_path)
    moe_tied = build_tiny("qwen3_moe", cache_dir=tmp_path, tie_word_embeddings=True)
    untied = build_tiny("qwen3_moe", cache_dir=tmp_path, tie_word_embeddings=False)
    assert dense.name.startswith("qwen3-tied-seed0-") and moe_tied.name.startswith("qwen3_moe-tied-")
    assert untied.name == tiny_qwen.name  # existing caches stay valid
    assert _digest(untied) == _digest(tiny_qwen)
    for path, model_type in ((dense, "qwen3"), (moe_tied, "qwen3_moe")):
        cfg = AutoConfig.from_pretrained(path)
        assert cfg.model_type == model_type and cfg.tie_word_embeddings and cfg.head_dim >= 32
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert json.loads((path / "r1kit_tiny.json").read_text())["tie_word_embeddings"]
    assert not AutoConfig.from_pretrained(untied).tie_word_embeddings


def test_unknown_family_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny family"):
        build_tiny("llama", cache_dir=tmp_path)
