"""``r1kit plan``: every number of one small recipe against arithmetic written out by hand, and
what sharding, checkpointing, offload, the engine's tensor parallelism, nodes, LoRA, the
reference model and the fit search change."""

from __future__ import annotations

import copy
import json

import pytest
from transformers import Qwen2Config

from r1kit.config import Config, ConfigError
from r1kit.estimate import memory_plan
from r1kit.footprint import activation_bytes, count_params, kv_elements_per_token, kv_shards
from r1kit.plan import main, plan, render
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
ROOT = 2 * EMBED + 64  # FSDP2's root: embeddings, LM head, final norm
assert PARAMS == 202_304
# Bytes one token keeps per layer in float32 (4 B), padded micro-batches: two RMSNorms keep
# input, normalised and output (3 x 4 B x 64 each); SDPA keeps q, output and K, V repeated to
# the 4 query heads (4 x 64 x 4 B) and a float32 log-sum-exp per head; the MLP gate, silu, up and
# product (4 x 128 x 4 B).
ACT_LAYER = 2 * 12 * 64 + 4 * 4 * 64 + 4 * 4 + 4 * 4 * 128
ACT_OUTSIDE = 12 * 64 + 4 * 64 + 2 * 4 * 16  # final norm, completion hidden states, cos and sin


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
    assert (c.root, c.layer_max, c.largest) == (ROOT, LAYER, EMBED)
    # Qwen3-MoE tiny: 8 experts, 2 per token, fused gate_up (8, 128, 64) and down (8, 64, 64)
    moe = count_params(tiny_config("qwen3_moe", 1000, 0))
    routed = 2 * (8 * 128 * 64 + 8 * 64 * 64)
    layer = 4096 + 2048 + 2048 + 4096 + 2 * 32 + 8 * 64 + 8 * 128 * 64 + 8 * 64 * 64 + 2 * 64
    assert moe.total == 2 * EMBED + 2 * layer + 64
    assert moe.routed == routed and moe.layer_max == layer
    assert moe.active == moe.total - routed + routed * 2 / 8
    # DeepSeek-V3 tiny: layer 0 dense, layer 1 16 routed experts (2 per token) + 1 shared expert,
    # which stays active; MLA caches kv_lora_rank + qk_rope_head_dim per token per layer
    ds = tiny_config("deepseek_v3", 1000, 0)
    dc = count_params(ds)
    assert dc.routed == 16 * (64 * 64 + 64 * 32)
    assert dc.active_frac == 2 / 16
    assert kv_elements_per_token(ds) == 2 * (512 + 64)


def test_activations_tensor_by_tensor():
    acts = activation_bytes(small(), 4)
    assert acts.layers == [ACT_LAYER, ACT_LAYER] and acts.derived
    assert acts.layer_input == 64 * 4 and acts.outside == ACT_OUTSIDE
    # without padding SDPA gets K and V at their 2 KV heads: 2 x (64 - 32) x 4 B fewer
    assert activation_bytes(small(), 4, padded=False).layers[0] == ACT_LAYER - 2 * 32 * 4
    # bf16 activations: each RMSNorm keeps a float32 copy of its input, then 2-byte tensors
    assert activation_bytes(small(), 2).layers[0] == (2 * (4 + 2 * 2) * 64 + 2 * 4 * 64 + 4 * 4
                                                      + 4 * 2 * 128)
    # Qwen3-MoE: q/k norms keep (4 + a) per element; each of a token's 2 experts keeps the
    # gathered input, gate/up (2 x 64), silu, product and output; router probabilities and
    # 4 int64 routing indices per (token, expert)
    moe = activation_bytes(tiny_config("qwen3_moe", 1000, 0), 4)  # q = 2 x 32, kv = 1 x 32
    attention = 4 * 4 * 64 + 4 * 2 + 8 * (64 + 32)
    experts = 4 * 2 * (2 * 64 + 4 * 64) + 4 * 8 + 4 * 8 * 2
    assert moe.layers == [2 * 12 * 64 + attention + experts] * 2
    # checkpointing keeps each layer's input and one layer's activations
    assert acts.kept(10, True) == 10 * (2 * 64 * 4 + ACT_LAYER + ACT_OUTSIDE)
    assert acts.kept(10, False) == 10 * (2 * ACT_LAYER + ACT_OUTSIDE)


def test_every_component_against_a_hand_calculation():
    res = plan(small_recipe(), small())
    m = res["memory"]
    assert res["micro_batches"] == 2 and res["tokens"] == 8192  # 16 rows, 8 per micro-batch
    assert m["weights"] == PARAMS * 4  # float32
    assert m["optimizer"] == PARAMS * 8  # AdamW: two float32 moments per parameter
    assert m["reference"] == PARAMS * 4  # beta > 0, full fine-tuning: a second copy
    assert m["kv_cache"] == 0.5 * H100_BYTES  # vLLM's reservation
    assert m["gathered"] == 0  # one rank, float32: no autocast copies, nothing to gather
    assert m["grad_accum"] == PARAMS * 4  # the first micro-batch's gradients, in the second
    assert m["activations"] == 8192 * (2 * ACT_LAYER + ACT_OUTSIDE)
    assert m["lm_head"] == 256 * 1000 * 4 * 4  # chunk x vocab x float32 x 4 buffers
    assert m["gradients"] == PARAMS * 4 and m["step_temp"] == PARAMS * 4  # foreach AdamW
    assert m["grad_new"] == 0  # the second micro-batch adds to the first one's gradients
    held = PARAMS * 16 + 0.5 * H100_BYTES
    assert res["total"] == held + PARAMS * 4 + m["activations"] + m["lm_head"]  # pass > step
    assert res["fits"] and res["warnings"] == [] and res["fits_with"] is None
    kv = res["kv"]
    assert kv["bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # layers x (K, V) x kv heads x head_dim x 4 B
    assert kv["needed"] == 16 * 1024 * 512  # 16 sequences x 1,024 tokens
    assert kv["space"] == 0.5 * H100_BYTES - PARAMS * 4 and kv["covers"] and kv["starts"]


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
    assert t["offload"] == 0
    assert t["total"] == pytest.approx(sum(t[k] for k in ("generation", "logprobs", "update",
                                                          "sync")), rel=1e-12)


def test_fsdp2_shards_weights_gradients_optimizer_and_reference_and_gathers_layers():
    one = plan(small_recipe(), small())
    cfg = small_recipe()
    cfg.plan.gpus, cfg.train.parallel = 8, "fsdp2"
    eight = plan(cfg, small())
    assert eight["sharded"] and eight["ranks"] == 8
    for key in ("weights", "optimizer", "reference", "gradients", "step_temp"):
        assert eight["memory"][key] == one["memory"][key] / 8, key
    # 2 rows per rank: one micro-batch (nothing accumulates) of 2 x 1,024 tokens
    assert eight["micro_batches"] == 1 and eight["memory"]["grad_accum"] == 0
    assert eight["memory"]["grad_new"] == PARAMS * 4 / 8  # its backward ends with the shards
    assert eight["memory"]["activations"] == 2048 * (2 * ACT_LAYER + ACT_OUTSIDE)
    # the root and two decoder layers gathered, one layer's reduce-scatter buffer
    assert eight["memory"]["gathered"] == (ROOT + 2 * LAYER) * 4
    assert eight["memory"]["reduce"] == LAYER * 4
    for key in ("kv_cache", "lm_head"):
        assert eight["memory"][key] == one["memory"][key], key
    assert eight["kv"]["needed"] == one["kv"]["needed"] / 8  # 2 of the 16 sequences per replica
    assert eight["time"]["update"] == pytest.approx(one["time"]["update"] / 8)
    cfg.train.parallel = "ddp"  # every GPU holds everything
    ddp = plan(cfg, small())
    assert ddp["memory"]["weights"] == one["memory"]["weights"] and not ddp["sharded"]


def test_fsdp2_accumulates_only_its_gradient_shard_between_micro_batches():
    """grpo/parallel.py reduce-scatters FSDP2 gradients after every micro-batch: with several
    micro-batches per rank a rank accumulates its shard of the float32 gradient, not the whole
    model's (what skipping the reduction until the last micro-batch would hold)."""
    cfg = small_recipe()
    cfg.plan.gpus, cfg.train.parallel = 2, "fsdp2"
    res = plan(cfg, small())
    assert res["micro_batches"] == 1  # 8 rows of 1,024 tokens per rank fit 8,192 tokens
    cfg.train.token_budget = 2048
    res = plan(cfg, small())
    assert res["micro_batches"] == 4 and res["memory"]["grad_accum"] == PARAMS * 4 / 2
    assert res["memory"]["gradients"] == PARAMS * 4 / 2
    assert not any("unsharded gradients" in n for n in res["notes"])


def test_checkpointing_keeps_layer_inputs_and_recomputes_the_forward():
    cfg = small_recipe()
    cfg.train.activation_checkpointing = True
    res = plan(cfg, small())
    assert res["memory"]["activations"] == 8192 * (2 * 64 * 4 + ACT_LAYER + ACT_OUTSIDE)
    assert res["memory"]["grad_new"] == 8192 * ACT_LAYER  # the layer its backward recomputes
    flops = 67e12 * 0.4
    assert res["time"]["update"] == pytest.approx(8 * (PARAMS - EMBED) * 16 * 1024 / flops)


def test_offload_moves_shards_to_host_memory_per_node():
    cfg = small_recipe()
    cfg.plan.gpus, cfg.plan.nodes, cfg.train.parallel, cfg.train.offload = 4, 2, "fsdp2", True
    res = plan(cfg, small())
    assert res["ranks"] == 8 and res["offload"]
    for key in ("weights", "optimizer", "reference", "gradients", "step_temp"):
        assert res["memory"][key] == 0, key
    # per rank (4 + 8 + 4 + 4) bytes per parameter / 8 ranks, 4 ranks on a node
    assert res["host"] == pytest.approx(PARAMS * 20 / 8 * 4)
    assert res["time"]["offload"] > 0
    cfg.plan.gpus, cfg.plan.nodes = 1, 1  # one rank: FSDP2 (and its offload) does nothing
    assert not plan(cfg, small())["offload"]


def test_engine_tensor_parallelism_divides_weights_and_kv_heads():
    cfg = small_recipe()
    cfg.plan.gpus, cfg.plan.engine_tp = 4, 2
    res = plan(cfg, small())
    kv = res["kv"]
    assert kv["replicas"] == 2 and kv["tp"] == 2
    assert kv["bytes_per_token"] == 2 * 2 * 2 * 16 * 4 / 2  # 2 KV heads over 2 GPUs
    assert kv["space"] == 0.5 * H100_BYTES - PARAMS * 4 / 2
    assert kv["needed"] == 8 * 1024 * 256  # 8 sequences per replica
    assert kv_shards(small(), 4) == 2  # 2 KV heads over 4 GPUs: each on two of them
    assert kv_shards(tiny_config("deepseek_v3", 1000, 0), 4) == 1  # MLA's latent on every GPU
    cfg.plan.engine_tp = 3
    with pytest.raises(ConfigError, match="plan.engine_tp: 3 does not divide plan.gpus=4"):
        plan(cfg, small())


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
    assert res["memory"]["gathered"] == (params - 152064 * 5120) * 2  # autocast's bf16 copies
    assert not res["fits"] and res["largest"] == "optimizer"
    assert res["total"] > 4 * params * 4
    cfg.train.mixed_precision = False  # pure bf16: everything at 2 bytes, no copies
    pure = plan(cfg, qwen_32b())
    assert pure["memory"]["optimizer"] == params * 2 * 2 and pure["memory"]["gathered"] == 0
    cfg.train.mixed_precision = True
    text = render(res)
    assert "WARNING: does not fit" in text and "largest: optimizer (AdamW)" in text
    cfg.plan.gpu, cfg.plan.gpus, cfg.train.parallel = "h200", 8, "fsdp2"
    res = plan(cfg, qwen_32b())
    assert res["fits"] and res["warnings"] == [] and "WARNING" not in render(res)
    assert "fits: " in render(res)


def test_vllm_reservation_too_small_for_its_weights_is_reported_never_as_infinity(tmp_path):
    cfg = Config()
    cfg.model.dtype, cfg.rollout.engine = "bfloat16", "vllm"
    cfg.rollout.gpu_memory_utilization = 0.3  # 24 GiB of an H100 for 61 GiB of weights
    res = plan(cfg, qwen_32b())
    assert any("vLLM would not start" in w for w in res["warnings"])
    assert res["time"]["generation"] is None and res["time"]["total"] is None
    text = render(res)
    assert "inf" not in text.replace("information", "") and "vLLM would not start" in text
    cfg.plan.gpus, cfg.plan.engine_tp = 4, 4  # 15 GiB of weights per GPU: it starts
    assert plan(cfg, qwen_32b())["kv"]["starts"]


def test_the_fix_found_fits_and_none_of_its_parts_is_needed_less():
    """A 32B full fine-tune with DDP on 8 H100s: the suggested overrides fit, and dropping any
    one of them does not."""
    cfg = Config()
    cfg.model.dtype, cfg.rollout.engine = "bfloat16", "vllm"
    cfg.rollout.gpu_memory_utilization = 0.3
    cfg.plan.gpus = 8
    c = count_params(qwen_32b())
    res = plan(cfg, qwen_32b(), c)
    fix = res["fits_with"]
    assert not res["fits"] and fix is not None and "train.parallel=fsdp2" in fix["overrides"]

    def apply(overrides):
        new = copy.deepcopy(cfg)
        for o in overrides:
            key, value = o.split("=")
            section, name = key.split(".")
            old = getattr(getattr(new, section), name)
            setattr(getattr(new, section), name,
                    value == "true" if isinstance(old, bool) else type(old)(value))
        return memory_plan(new, qwen_32b(), c)

    assert apply(fix["overrides"])["fits"]
    assert apply(fix["overrides"])["total"] == fix["total"]
    for i in range(len(fix["overrides"])):
        assert not apply(fix["overrides"][:i] + fix["overrides"][i + 1:])["fits"]
    assert f"Fits with: {' '.join(fix['overrides'])}" in render(res)


def test_bad_plan_settings_name_the_key():
    for key, value in (("gpus", 0), ("nodes", 0), ("engine_tp", 0)):
        cfg = small_recipe()
        setattr(cfg.plan, key, value)
        with pytest.raises(ConfigError, match=f"plan.{key}"):
            plan(cfg, small())


def test_main_prints_the_tables_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = main([str(REPO / "tests/data/tiny_grpo_random.yaml"), "plan.gpus=2", "train.parallel=fsdp2",
               "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for label in ("weights", "gradients", "optimizer", "reference", "KV cache", "activations",
                  "compute dtype", "generation", "logprobs", "update",
                  "sync", "an estimate", "fits: "):
        assert label in text
    data = json.loads(out.read_text())
    assert data["ranks"] == 2 and data["parallel"] == "fsdp2" and data["sharded"] is True
    assert data["fits"] is True
    assert main(["plan.gpu=v100"]) == 2
    assert main(["plan.sharding=fsdp"]) == 2  # gone: train.parallel says how the trainer shards


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
    assert c.lora_layer_max == c.lora // 2
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


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "recipes").glob("*.yaml")
                                          if not p.name.startswith("tiny_")))
def test_every_real_recipe_plans_without_infinity(recipe, capsys):
    assert main([str(REPO / "recipes" / recipe)]) == 0
    text = capsys.readouterr().out
    assert " inf" not in text and "nan" not in text


def test_train_refuses_a_launch_the_plan_says_cannot_fit():
    """``r1kit train`` on GPUs asks ``launch_refusal`` before loading anything (the call needs
    CUDA; this is the decision it makes): the 7B recipe on one 80 GB GPU does not fit (float32
    masters, gradients and AdamW state alone are 16 bytes a parameter), and the line says by how
    much and what fits; on the 8 GPUs it names, it fits."""
    from r1kit.config import load_config
    from r1kit.plan import launch_refusal
    from tests.conftest import REPO

    cfg = load_config(str(REPO / "recipes/simplerl_qwen2.5_math_7b.yaml"), [],
                      check_data=False)
    why = launch_refusal(cfg, 1, 1, 80 * 2**30, "H100")
    assert why is not None and "does not fit" in why and "GiB" in why
    assert "Fits with:" in why and "train.check_fit=false" in why and "\n" not in why
    assert launch_refusal(cfg, 8, 1, 80 * 2**30, "H100") is None
