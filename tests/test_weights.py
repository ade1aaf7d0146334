"""``iter_checkpoint_weights``: names and values equal the saved checkpoint; LoRA merge equals
peft's ``merge_and_unload``; the trainer's model is left untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from r1kit.tiny import build_tiny
from rollouts.weights import iter_checkpoint_weights

FAMILIES = ("qwen3_moe", "deepseek_v3")


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tiny")
    paths = {f: build_tiny(f, cache_dir=cache) for f in FAMILIES}
    paths["qwen3"] = build_tiny("qwen3", cache_dir=cache)  # dense, tied embeddings
    paths["qwen3_moe_tied"] = build_tiny("qwen3_moe", cache_dir=cache, tie_word_embeddings=True)
    return paths


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _lora(model, family: str):
    """LoRA on attention projections and on both fused expert parameters, plus a trained
    lm_head copy; B made non-zero so the merge is not a no-op."""
    from peft import LoraConfig, get_peft_model

    attn = ["q_proj", "v_proj"] if family == "qwen3_moe" else ["q_proj", "kv_b_proj"]
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=attn, modules_to_save=["lm_head"],
                     target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return pm


@pytest.mark.parametrize("family", [*FAMILIES, "qwen3", "qwen3_moe_tied"])
def test_round_trip_equals_saved_checkpoint(tiny_paths, family):
    saved = load_file(str(tiny_paths[family] / "model.safetensors"))
    got = dict(iter_checkpoint_weights(_load(tiny_paths[family])))
    assert sorted(got) == sorted(saved)
    for name, tensor in saved.items():
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name
        assert got[name].is_contiguous() and not got[name].requires_grad
    if family in ("qwen3", "qwen3_moe_tied"):  # tied: sent once, as save_pretrained writes it
        assert "lm_head.weight" not in got and "model.embed_tokens.weight" in got
    if family == "deepseek_v3":  # the routing bias is a buffer, and must be in the sync
        bias = got["model.layers.1.mlp.gate.e_score_correction_bias"]
        assert bias.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_expert_split_is_gate_then_up(tiny_paths, family):
    model = _load(tiny_paths[family])
    experts = model.model.layers[1].mlp.experts
    got = dict(iter_checkpoint_weights(model))
    inter = experts.down_proj.shape[-1]
    e = experts.gate_up_proj.shape[0] - 1  # last expert: catches an off-by-one in expert order
    pre = f"model.layers.1.mlp.experts.{e}."
    assert torch.equal(got[pre + "gate_proj.weight"], experts.gate_up_proj[e, :inter])
    assert torch.equal(got[pre + "up_proj.weight"], experts.gate_up_proj[e, inter:])
    assert torch.equal(got[pre + "down_proj.weight"], experts.down_proj[e])


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_merge_equals_merge_and_unload_without_mutating(tiny_paths, family):
    pm = _lora(_load(tiny_paths[family]), family)
    before = {k: v.clone() for k, v in pm.state_dict().items()}
    got = dict(iter_checkpoint_weights(pm))
    after = pm.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "the peft model was mutated"

    merged = copy.deepcopy(pm).merge_and_unload()
    want = dict(iter_checkpoint_weights(merged))
    saved = load_file(str(tiny_paths[family] / "model.safetensors"))
    assert sorted(got) == sorted(want) == sorted(saved)
    changed = 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)
        changed += not torch.equal(got[name], saved[name])
    # attention LoRA, both expert params (every expert) and lm_head must all have moved
    moved = {n for n in got if not torch.equal(got[n], saved[n])}
    assert "lm_head.weight" in moved
    assert "model.layers.1.self_attn.q_proj.weight" in moved
    assert "model.layers.1.mlp.experts.3.gate_proj.weight" in moved
    assert "model.layers.1.mlp.experts.3.down_proj.weight" in moved
    assert changed == len(moved)


def test_disabled_adapter_yields_base_weights(tiny_paths):
    pm = _lora(_load(tiny_paths["qwen3_moe"]), "qwen3_moe")
    saved = load_file(str(tiny_paths["qwen3_moe"] / "model.safetensors"))
    with pm.disable_adapter():
        got = dict(iter_checkpoint_weights(pm))
    assert all(torch.equal(got[n], saved[n]) for n in saved)


def test_rejects_non_transformers_model():
    with pytest.raises(TypeError, match="PreTrainedModel"):
        list(iter_checkpoint_weights(torch.nn.Linear(2, 2)))
