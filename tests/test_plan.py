"""``r1kit plan``: every number of one small recipe against arithmetic written out by hand, and
what sharding, LoRA, the reference model and the fit warning change."""

from __future__ import annotations

import json

import pytest
from transformers import Qwen2Config

from r1kit.config import Config, ConfigError
from r1kit.plan import count_params, kv_elements_per_token, main, plan, render
from r1kit.tiny import tiny_config
from tests.conftest import REPO

GIB = 2**30
H100_BYTES = 81559 * 2**20  # nvidia-smi's total for an H100 SXM5 80GB

# A made-up dense Qwen2: vocabulary 1,000, hidden 64, 2 layers, 4 heads of 16, 2 KV heads.
def small() -> Qwen2Config:
    return Qwen2Config(vocab_size=1000, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       tie_word_embeddings=False)


EMBED = 1000 * 64  # input embedding; the untied LM head is as large
LAYER = (64 * 64 + 64        # q_proj with bias
         + 2 * (64 * 32 + 32)  # k_proj, v_proj with bias: 2 KV heads x 16 = 32 outputs
         + 64 * 64           # o_proj, no bias
         + 3 * 64 * 128      # gate, up, down
         + 2 * 64)           # two RMSNorms
PARAMS = 2 * EMBED + 2 * LAYER + 64  # + final norm
assert PARAMS == 202_304


def small_recipe() -> Config:
    """fp32, colocated vLLM at half the GPU, 4 prompts x 4 completions of 1,024 tokens, KL on."""
    cfg = Config()
    cfg.model.dtype = "float32"
    cfg.rollout.engine = "vllm"
    cfg.rollout.n, cfg.rollout.max_tokens, cfg.rollout.max_model_len = 4, 128, 1024
    cfg.rollout.gpu_memory_utilization = 0.5
    cfg.train.prompts_per_step, cfg.train.token_budget, cfg.train.logprob_chunk = 4, 8192, 256
    cfg.algo.beta = 0.04
    return cfg


def test_parameter_counts_by_hand():
    c = count_params(small())
    assert (c.total, c.embedding, c.tied, c.routed, c.active) == (PARAMS, EMBED, False, 0, PARAMS)
    # Qwen3-MoE tiny: 8 experts, 2 per token, fused gate_up (8, 128, 64) and down (8, 64, 64)
    moe = count_params(tiny_config("qwen3_moe", 1000, 0))
    routed = 2 * (8 * 128 * 64 + 8 * 64 * 64)
    layer = 4096 + 2048 + 2048 + 4096 + 2 * 32 + 8 * 64 + 8 * 128 * 64 + 8 * 64 * 64 + 2 * 64
    assert moe.total == 2 * EMBED + 2 * layer + 64
    assert moe.routed == routed
    assert moe.active == moe.total - routed + routed * 2 / 8
    # DeepSeek-V3 tiny: layer 0 dense, layer 1 16 routed experts (2 per token) + 1 shared expert,
    # which stays active; MLA caches kv_lora_rank + qk_rope_head_dim per token per layer
    ds = tiny_config("deepseek_v3", 1000, 0)
    dc = count_params(ds)
    assert dc.routed == 16 * (64 * 64 + 64 * 32)
    assert dc.active_frac == 2 / 16
    assert kv_elements_per_token(ds) == 2 * (512 + 64)


def test_every_component_against_a_hand_calculation():
    res = plan(small_recipe(), small())
    m = res["memory"]
    assert m["weights"] == PARAMS * 4  # float32
    assert m["gradients"] == PARAMS * 4  # in the parameters' dtype
    assert m["optimizer"] == PARAMS * 8  # AdamW: two float32 moments per parameter
    assert m["reference"] == PARAMS * 4  # beta > 0, full fine-tuning: a second copy
    assert m["kv_cache"] == 0.5 * H100_BYTES  # vLLM's reservation
    assert m["activations"] == 8192 * 64 * 2 * 34 * 2  # tokens x hidden x layers x 34 x (4 B / 2)
    assert m["lm_head"] == 256 * 1000 * 4 * 4  # chunk x vocab x float32 x 4 buffers
    assert res["total"] == PARAMS * 20 + 0.5 * H100_BYTES + 71_303_168 + 4_096_000
    assert res["fits"] and res["warnings"] == []
    kv = res["kv"]
    assert kv["bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # layers x (K, V) x kv heads x head_dim x 4 B
    assert kv["needed"] == 16 * 1024 * 512  # 16 sequences x 1,024 tokens
    assert kv["space"] == 0.5 * H100_BYTES - PARAMS * 4 and kv["covers"]


def test_step_time_against_a_hand_calculation():
    t = plan(small_recipe(), small())["time"]
    flops = 67e12 * 0.4  # H100 fp32 peak (no TF32) x MFU 0.4
    matmul = PARAMS - EMBED  # the embedding is a lookup; the untied LM head multiplies
    prefill = 2 * matmul * 16 * 896 / flops  # 16 sequences x 896 prompt tokens
    weights_read = 128 * matmul * 4  # every decoding step reads the fp32 weights once
    kv_read = 16 * 128 * (896 + 64) * 512  # 16 sequences, 128 steps, mean context 960 tokens
    decode = (weights_read + kv_read) / 3.35e12  # memory-bound: its FLOPs take less
    assert 2 * matmul * 16 * 128 / flops < decode
    assert t["generation"] == pytest.approx(prefill + decode, rel=1e-12)
    assert t["logprobs"] == pytest.approx(2 * matmul * 16 * 1024 / flops, rel=1e-12)  # reference
    assert t["update"] == pytest.approx(6 * matmul * 16 * 1024 / flops, rel=1e-12)
    assert t["sync"] == pytest.approx(2 * PARAMS * 4 / 3.35e12, rel=1e-12)  # HBM read + write
    assert t["total"] == pytest.approx(sum(t[k] for k in ("generation", "logprobs", "update",
                                                          "sync")), rel=1e-12)


def test_fsdp_divides_weights_gradients_optimizer_and_reference_only():
    one = plan(small_recipe(), small())
    cfg = small_recipe()
    cfg.plan.gpus, cfg.plan.sharding = 8, "fsdp"
    eight = plan(cfg, small())
    for key in ("weights", "gradients", "optimizer", "reference"):
        assert eight["memory"][key] == one["memory"][key] / 8, key
    for key in ("kv_cache", "activations", "lm_head"):
        assert eight["memory"][key] == one["memory"][key], key
    assert eight["kv"]["needed"] == one["kv"]["needed"] / 8  # 2 of the 16 sequences per GPU
    assert eight["time"]["update"] == pytest.approx(one["time"]["update"] / 8)
    cfg.plan.sharding = "none"  # DDP: every GPU holds everything
    assert plan(cfg, small())["memory"]["weights"] == one["memory"]["weights"]


def test_lora_trains_only_the_adapter_and_has_no_reference_copy():
    cfg = small_recipe()
    cfg.train.lora_rank = 8  # q, k, v, o by default
    res = plan(cfg, small())
    lora = 2 * 8 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64))  # r x (in + out) per module
    assert res["trainable_params"] == lora == 7168
    m = res["memory"]
    assert m["weights"] == PARAMS * 4 + lora * 4
    assert m["gradients"] == lora * 4
    assert m["optimizer"] == lora * 8
    assert m["reference"] == 0  # beta > 0, but the reference is the adapter switched off
    flops = 67e12 * 0.4
    assert res["time"]["update"] == pytest.approx(4 * (PARAMS - EMBED) * 16 * 1024 / flops)


def test_beta_zero_loads_no_reference():
    cfg = small_recipe()
    cfg.algo.beta = 0.0
    res = plan(cfg, small())
    assert res["memory"]["reference"] == 0
    assert res["time"]["logprobs"] == 0  # no reference pass, and one optimiser step per batch
    cfg.train.epochs = 2  # now the rollout policy's log-probs need a forward
    assert plan(cfg, small())["time"]["logprobs"] > 0


# Qwen2.5-32B's published config.json (hidden, MLP, layers, heads, KV heads, vocabulary).
def qwen_32b() -> Qwen2Config:
    return Qwen2Config(vocab_size=152064, hidden_size=5120, intermediate_size=27648,
                       num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
                       tie_word_embeddings=False)


def test_a_32b_full_fine_tune_does_not_fit_one_h100_and_fits_sharded_over_eight_h200():
    layer = (5120 * 5120 + 5120 + 2 * (5120 * 1024 + 1024) + 5120 * 5120 + 3 * 5120 * 27648
             + 2 * 5120)
    params = 2 * 152064 * 5120 + 64 * layer + 5120
    assert params == 32_763_876_352
    cfg = Config()
    cfg.model.dtype = "bfloat16"
    cfg.rollout.engine = "hf"
    cfg.train.token_budget = 4096
    res = plan(cfg, qwen_32b())  # mixed precision: float32 master weights, grads, moments
    assert res["memory"]["weights"] == params * 4 and res["memory"]["gradients"] == params * 4
    assert res["memory"]["optimizer"] == params * 4 * 2  # two float32 moments
    assert not res["fits"] and res["largest"] == "optimizer"
    assert res["total"] > 4 * params * 4
    cfg.train.mixed_precision = False  # pure bf16: everything at 2 bytes
    assert plan(cfg, qwen_32b())["memory"]["optimizer"] == params * 2 * 2
    cfg.train.mixed_precision = True
    text = render(res)
    assert "WARNING: does not fit" in text and "largest: optimizer" in text
    cfg.plan.gpu, cfg.plan.gpus, cfg.plan.sharding = "h200", 8, "fsdp"
    res = plan(cfg, qwen_32b())
    assert res["fits"] and res["warnings"] == [] and "WARNING" not in render(res)


def test_vllm_reservation_too_small_for_its_weights_is_reported():
    cfg = Config()
    cfg.model.dtype, cfg.rollout.engine = "bfloat16", "vllm"
    cfg.rollout.gpu_memory_utilization = 0.3  # 24 GiB of an H100 for 61 GiB of weights
    res = plan(cfg, qwen_32b())
    assert any("vLLM would not start" in w for w in res["warnings"])


def test_bad_plan_settings_name_the_key():
    cfg = small_recipe()
    cfg.plan.gpus = 0
    with pytest.raises(ConfigError, match="plan.gpus"):
        plan(cfg, small())


def test_main_prints_the_tables_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = main([str(REPO / "recipes/tiny_grpo_hf.yaml"), "plan.gpus=2", "plan.sharding=fsdp",
               "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for label in ("weights", "gradients", "optimizer", "reference", "KV cache", "activations",
                  "generation", "logprobs", "update", "sync", "an estimate"):
        assert label in text
    data = json.loads(out.read_text())
    assert data["gpus"] == 2 and data["sharding"] == "fsdp" and data["fits"] is True
    assert main(["plan.gpu=v100"]) == 2


def test_decode_reads_only_the_experts_the_batch_routes_to():
    moe = tiny_config("qwen3_moe", 1000, 0)  # 8 experts, 2 per token
    routed = 2 * (8 * 128 * 64 + 8 * 64 * 64)
    c = count_params(moe)
    dense = c.total - routed - EMBED  # attention, routers, norms, LM head: read every step
    flops, hbm = 67e12 * 0.4, 3.35e12
    cfg = small_recipe()
    for prompts, n, touched in ((1, 1, 2 / 8), (4, 4, 1 - (6 / 8) ** 16)):
        cfg.train.prompts_per_step, cfg.rollout.n = prompts, n
        seqs = prompts * n  # one wave: the KV cache holds them all
        active = dense + routed * 2 / 8
        prefill = 2 * active * seqs * 896 / flops
        read = 128 * (dense + routed * touched) * 4 + seqs * 128 * 960 * (2 * 2 * 1 * 32 * 4)
        decode = max(read / hbm, 2 * active * seqs * 128 / flops)
        assert plan(cfg, moe)["time"]["generation"] == pytest.approx(prefill + decode, rel=1e-12)


def test_lora_on_fused_experts_counts_what_peft_builds():
    """``train.lora_target_parameters``: rank r per expert on each 3-D parameter, the same count
    peft's ParamWrapper creates on the real tiny Qwen3-MoE."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = tiny_config("qwen3_moe", vocab_size=1000, eos_id=0)
    targets = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    c = count_params(config, 4, [], targets)
    # 2 layers x 8 experts x r 4 x ((in 64 + out 128) + (in 64 + out 64))
    assert c.lora == c.lora_experts == 2 * 8 * 4 * ((64 + 128) + (64 + 64)) == 20480
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_config(config),
                           LoraConfig(r=4, target_modules=[], target_parameters=targets))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == c.lora
    both = count_params(config, 4, ["q_proj"], targets)
    assert both.lora == c.lora + 2 * 4 * (64 + 64) and both.lora_experts == c.lora_experts


def test_lora_target_parameters_are_checked():
    cfg = small_recipe()
    cfg.train.lora_rank = 8
    cfg.train.lora_target_parameters = ["mlp.experts.gate_up_proj"]
    with pytest.raises(ConfigError, match="lora_target_parameters: no 3-D parameter"):
        plan(cfg, small())  # a dense model has no fused experts
