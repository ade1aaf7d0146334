"""Routing replay (grpo.routing) on the real tiny Qwen3-MoE and DeepSeek-V3, and HFEngine recording."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.routing import (
    RoutingRecorder,
    load_balancing_loss,
    moe_routers,
    replay_routing,
    router_stats,
)
from rollouts.hf import HFEngine
from rollouts.prompts import r1_zero_prompt
from rollouts.types import Sampling

FAMILIES = ["qwen3_moe", "deepseek_v3", "deepseek_v2"]


@pytest.fixture(scope="module")
def tiny_deepseek_v2(tmp_path_factory):
    """DeepSeek-V2-Lite's architecture at dry-run size (MLA, shared experts, a dense first
    layer, group-limited routing off as in V2-Lite), random init, with the tiny tokenizer."""
    from r1kit import archs
    from r1kit.tiny import build_tokenizer, save_checkpoint

    tok = build_tokenizer(0)
    cfg = archs.reduced_config("deepseek-ai/DeepSeek-V2-Lite", len(tok),
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                               bos_token_id=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    out = tmp_path_factory.mktemp("v2") / "model"
    return save_checkpoint(model, tok, {"family": "deepseek_v2"}, out)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tiny_qwen, tiny_deepseek, tiny_deepseek_v2):
    path = {"qwen3_moe": tiny_qwen, "deepseek_v3": tiny_deepseek,
            "deepseek_v2": tiny_deepseek_v2}[request.param]
    torch.manual_seed(0)
    return path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _batch(vocab: int, B: int = 2, T: int = 7) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(1))


def _record(model, ids):
    with RoutingRecorder(model) as rec, torch.no_grad():
        logits = model(ids).logits
    B, T = ids.shape
    return logits, rec.experts().view(B, T, *rec.experts().shape[1:])  # (B, T, L, k)


def test_routers_in_layer_order_skip_dense_layers(family):
    _, model = family
    routers = moe_routers(model)
    dense = getattr(model.config, "first_k_dense_replace", 0)
    assert len(routers) == model.config.num_hidden_layers - dense
    assert routers == [layer.mlp.gate for layer in model.model.layers[dense:]]


def test_replaying_recorded_experts_is_bit_identical(family):
    _, model = family
    ids = _batch(model.config.vocab_size)
    logits, experts = _record(model, ids)
    assert experts.shape[2:] == (len(moe_routers(model)), model.config.num_experts_per_tok)
    with replay_routing(model, experts, torch.ones(ids.shape, dtype=torch.bool)), torch.no_grad():
        replayed = model(ids).logits
    assert torch.equal(replayed, logits)


def test_replaying_other_experts_routes_through_them(family):
    _, model = family
    ids = _batch(model.config.vocab_size)
    logits, experts = _record(model, ids)
    num_experts = moe_routers(model)[0].num_experts
    other = (experts + 1) % num_experts  # still k distinct experts per token
    valid = torch.ones(ids.shape, dtype=torch.bool)
    valid[1, 3:] = False  # these positions route normally
    with replay_routing(model, other, valid), RoutingRecorder(model) as rec, torch.no_grad():
        replayed = model(ids).logits
    seen = rec.experts().view(*experts.shape)
    assert torch.equal(seen[valid], other[valid])
    assert not torch.allclose(replayed, logits, atol=1e-4)
    # before the first replaced position the outputs do not change (causal attention); not
    # bit-identical, as each expert's matmul now sees a different set of tokens
    with replay_routing(model, other, valid & (torch.arange(7) >= 2)), torch.no_grad():
        late = model(ids).logits
    assert torch.allclose(late[:, :2], logits[:, :2], atol=1e-6)
    assert not torch.allclose(late[:, 2:], logits[:, 2:], atol=1e-4)


def test_gradients_reach_the_routers_under_replay(family):
    _, model = family
    ids = _batch(model.config.vocab_size)
    _, experts = _record(model, ids)
    valid = torch.ones(ids.shape, dtype=torch.bool)

    def router_grads(experts):
        model.zero_grad()
        with replay_routing(model, experts, valid):
            model(ids).logits.logsumexp(-1).mean().backward()
        return [r.weight.grad.clone() for r in moe_routers(model)]

    model.zero_grad()
    model(ids).logits.logsumexp(-1).mean().backward()
    plain = [r.weight.grad.clone() for r in moe_routers(model)]
    assert all(torch.equal(a, b) for a, b in zip(router_grads(experts), plain))
    num_experts = moe_routers(model)[0].num_experts
    for g in router_grads((experts + 3) % num_experts):
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    model.zero_grad()


def test_forward_is_restored_even_after_an_error(family):
    _, model = family
    ids = _batch(model.config.vocab_size)
    _, experts = _record(model, ids)
    valid = torch.ones(ids.shape, dtype=torch.bool)
    # a batch that does not fit the experts
    with pytest.raises(ValueError, match="router saw"), replay_routing(model, experts, valid):
        model(ids[:, :5])
    assert all("forward" not in r.__dict__ for r in moe_routers(model))
    with (
        pytest.raises(ValueError, match="MoE layers"),
        replay_routing(model, experts[:, :, :0], valid),
    ):
        pass


def _forward_logprobs(model, prompt_ids, token_ids, experts=None):
    """Log-probs of ``token_ids`` after ``prompt_ids`` from one plain forward, with replay if given."""
    full = torch.tensor([prompt_ids + token_ids])  # (1, T)
    with RoutingRecorder(model) as rec, torch.no_grad():
        if experts is None:
            logits = model(full).logits
        else:
            pad = torch.zeros((1, *experts.shape[1:]), dtype=experts.dtype)
            padded = torch.cat([experts, pad])[None]  # (1, T, L, k): the last token was never fed
            valid = torch.arange(full.shape[1])[None] < len(experts)
            with replay_routing(model, padded, valid):
                logits = model(full).logits
    lp = torch.log_softmax(logits.float(), -1)[0, len(prompt_ids) - 1 : -1]
    return lp.gather(-1, torch.tensor(token_ids)[:, None]).squeeze(-1), rec.experts()


def test_hf_engine_records_the_routing_of_every_fed_position(family):
    path, model = family
    tok = AutoTokenizer.from_pretrained(path)
    model = copy.deepcopy(model)  # EOS made likely, so rows of a batch stop at different steps
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
    model.lm_head.bias.data[tok.eos_token_id] = 5.0
    prompts = [r1_zero_prompt("What is 2 + 2?"), "Hi", r1_zero_prompt("What is 17 * 3 - 4 + 11?")]
    engine = HFEngine(model, tok, batch_size=6, record_routing=True)
    groups = engine.generate(prompts, 3, Sampling(max_tokens=10, seed=0))
    assert len({(c.finish_reason, len(c.token_ids)) for g in groups for c in g.completions}) > 2
    for g in groups:
        for c in g.completions:
            routed = c.routed_experts
            n_fed = len(g.prompt_token_ids) + len(c.token_ids) - 1
            assert routed.dtype == torch.int16 and routed.shape[0] == n_fed
            replayed, _ = _forward_logprobs(model, g.prompt_token_ids, c.token_ids, routed.long())
            assert (replayed - torch.tensor(c.logprobs)).abs().max() < 1e-5
            _, plain_experts = _forward_logprobs(model, g.prompt_token_ids, c.token_ids)
            assert torch.equal(routed.long(), plain_experts[:n_fed])
    (plain,) = HFEngine(model, tok).generate(prompts[:1], 1, Sampling(max_tokens=2))
    assert plain.completions[0].routed_experts is None  # off by default


def test_load_balancing_loss_masks_padding_and_is_differentiable(family):
    _, model = family
    ids = _batch(model.config.vocab_size, B=2, T=9)
    valid = torch.ones(ids.shape, dtype=torch.bool)
    valid[0, 6:] = False  # right padding: the earlier positions do not see it
    with RoutingRecorder(model, keep_logits=True) as rec:
        model(ids)
        loss = load_balancing_loss(model, rec, valid)
    assert loss.ndim == 0 and math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert all(r.weight.grad.abs().sum() > 0 for r in moe_routers(model))
    model.zero_grad()
    with RoutingRecorder(model, keep_logits=True) as rec, torch.no_grad():
        model(ids[:, :6])
        short = load_balancing_loss(model, rec, torch.ones((2, 6), dtype=torch.bool))
    with RoutingRecorder(model, keep_logits=True) as rec, torch.no_grad():
        model(ids[:, :6])
        model(ids)  # only the last forward counts
        masked = load_balancing_loss(model, rec, valid & (torch.arange(9) < 6))
    assert abs(short.item() - masked.item()) < 1e-5


def test_router_stats_by_hand():
    idx = [torch.tensor([[0], [0], [0], [1]])]  # 2 experts, 4 tokens, top-1
    ref = [torch.tensor([[0], [1], [0], [1]])]
    s = router_stats(idx, 2, torch.ones(4, dtype=torch.bool), ref)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)  # 0.8113
    assert s["router/layer0/load_entropy"] == pytest.approx(h)
    assert (s["router/max_load"], s["router/min_load"]) == (0.75, 0.25)
    assert s["router/topk_changed"] == 0.25  # token 1 went 1 -> 0
    # the last token is padding: all load on expert 0, 1 of 3 tokens changed
    s = router_stats(idx, 2, torch.tensor([True, True, True, False]), ref)
    assert (s["router/load_entropy"], s["router/max_load"], s["router/min_load"]) == (0.0, 1.0, 0.0)
    assert s["router/topk_changed"] == pytest.approx(1 / 3)
    # top-2 of 2 experts: the order within the set does not count as a change; two layers average
    two = [torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0, 1], [0, 1]])]
    s = router_stats(two, 2, torch.ones(2, dtype=torch.bool), [torch.tensor([[1, 0], [0, 1]])] * 2)
    assert s["router/topk_changed"] == 0.0 and s["router/load_entropy"] == pytest.approx(1.0)
    assert "router/layer1/max_load" in s and "router/topk_changed" in s


def test_peft_lora_model(family):
    from peft import LoraConfig, get_peft_model

    path, _ = family
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    routers = moe_routers(base)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["o_proj"], lora_dropout=0.0))
    assert moe_routers(peft_model) == routers
    ids = _batch(base.config.vocab_size)
    logits, experts = _record(peft_model, ids)
    with replay_routing(peft_model, experts, torch.ones(ids.shape, dtype=torch.bool)):
        out = peft_model(ids).logits
    assert torch.equal(out.detach(), logits)
    out.logsumexp(-1).mean().backward()
    assert routers[0].weight.grad is None  # frozen by peft; the LoRA weights still get gradient
    assert any(p.grad is not None for n, p in peft_model.named_parameters() if "lora_" in n)


def test_unsupported_model_names_its_class():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
    )
    with pytest.raises(ValueError, match="Qwen3ForCausalLM is not supported by routing replay"):
        moe_routers(Qwen3ForCausalLM(cfg))
