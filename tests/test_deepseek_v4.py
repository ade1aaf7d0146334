"""The embedded tiny DeepSeek-V4 (``tiny:deepseek_v4``): mHC residual streams, hash-routed and
top-k MoE, a shared expert, sliding / compressed sparse / heavily compressed attention. It
builds and loads, the HF engine's log-probs are the model's, the trainer's chunked log-probs are
the model's, hash layers need no replay, the vLLM engines refuse it before starting, the mHC
metrics mean what they say, and GRPO trains it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.logprobs import completion_logprobs
from grpo.mhc import has_mhc, mhc_stats
from grpo.routing import (
    RoutingRecorder,
    load_balancing_loss,
    moe_routers,
    replay_routing,
    router_kinds,
    router_stats,
)
from rollouts.hf import HFEngine
from rollouts.prompts import r1_zero_prompt
from rollouts.types import Sampling
from tests.conftest import REPO

PROMPTS = [r1_zero_prompt("What is 3 + 4?"),
           r1_zero_prompt("Compute 12 * 7 - 5, then add 19 and divide the result by 3.")]


@pytest.fixture(scope="module")
def tiny_v4(tiny_cache):
    from r1kit.tiny import build_tiny

    path = build_tiny("deepseek_v4", cache_dir=tiny_cache)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, model, AutoTokenizer.from_pretrained(path)


def _ids(vocab: int, B: int = 2, T: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def test_builds_every_v4_component_and_loads_with_auto(tiny_v4):
    path, model, _ = tiny_v4
    cfg = model.config
    assert type(model).__name__ == "DeepseekV4ForCausalLM"
    assert set(cfg.layer_types) == {"sliding_attention", "compressed_sparse_attention",
                                    "heavily_compressed_attention"}
    assert cfg.mlp_layer_types == ["hash_moe", "hash_moe", "moe", "moe"]
    assert cfg.hc_mult > 1 and cfg.n_shared_experts == 1
    assert json.loads((path / "r1kit_tiny.json").read_text())["parameters"] < 2_000_000
    # the frozen hash table survives save/load and gives every token k distinct experts
    table = model.model.layers[0].mlp.gate.tid2eid  # (V, k)
    assert table.shape == (cfg.vocab_size, cfg.num_experts_per_tok)
    assert (table[:, 0] != table[:, 1]).all() and len(table.unique()) == cfg.n_routed_experts
    # every compressor and the indexer fire on a 40-token input
    with torch.no_grad():
        out = model(_ids(cfg.vocab_size, B=1), output_attentions=True)
    assert all(torch.isfinite(a).all() for a in out.attentions)
    widths = [a.shape[-1] for a in out.attentions]  # sliding keys + compressed entries
    assert widths[0] == 40 and widths[1] == 40 + 40 // 4 and widths[2] == 40 + 40 // 8


def test_cli_build_is_deterministic(tiny_v4, tmp_path):
    from safetensors.torch import load_file

    from tests.test_cli import r1kit

    path, _, _ = tiny_v4
    r = r1kit("tiny", "--family", "deepseek_v4", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(tmp_path))
    ours, again = load_file(path / "model.safetensors"), load_file(
        Path(r.stdout.strip()) / "model.safetensors")
    assert ours.keys() == again.keys() and all(torch.equal(ours[k], again[k]) for k in ours)


def _max_logprob_error(model, groups) -> float:
    worst = 0.0
    for g in groups:
        for c in g.completions:
            ids = torch.tensor([g.prompt_token_ids + c.token_ids])
            with torch.no_grad():
                logp = model(ids).logits.float().log_softmax(-1)[0]
            p = len(g.prompt_token_ids)
            ref = logp[p - 1 : p - 1 + len(c.token_ids)].gather(
                -1, torch.tensor(c.token_ids)[:, None])[:, 0]
            worst = max(worst, float((ref - torch.tensor(c.logprobs)).abs().max()))
    return worst


def test_hf_engine_logprobs_equal_a_plain_forward(tiny_v4):
    """One prompt's n samples per batch (rollout.batch_size = n): no padding, and the KV-cached
    sampling (sliding window, compressor and indexer caches) reproduces a full forward."""
    _, model, tok = tiny_v4
    n = 2
    groups = HFEngine(model, tok, batch_size=n).generate(
        PROMPTS, n, Sampling(max_tokens=24, temperature=1.0, seed=3))
    assert len({len(g.prompt_token_ids) for g in groups}) == 2
    assert all(len(c.token_ids) > 8 for g in groups for c in g.completions)
    assert _max_logprob_error(model, groups) <= 1e-5


def test_mixed_prompt_lengths_batch_apart_and_padding_would_be_wrong(tiny_v4):
    """The compressors pool fixed windows of tensor positions, so a left-padded row pools
    padding and its log-probs move: the HF engine batches only prompts of one length for V4."""
    _, model, tok = tiny_v4
    engine = HFEngine(model, tok, batch_size=4)
    assert engine.equal_length_batches
    s = Sampling(max_tokens=24, temperature=1.0, seed=3)
    groups = engine.generate(PROMPTS, 2, s)
    assert len({len(g.prompt_token_ids) for g in groups}) == 2  # two lengths, 4 rows a batch
    assert _max_logprob_error(model, groups) <= 1e-5
    engine.equal_length_batches = False  # what left padding would do
    assert _max_logprob_error(model, engine.generate(PROMPTS, 2, s)) > 1e-3


def test_chunked_logprobs_equal_the_models_own_logits(tiny_v4):
    """completion_logprobs takes the decoder's output (after hc_head and the final norm) through
    the LM head in chunks: the same numbers as log_softmax(model(ids).logits)."""
    _, model, _ = tiny_v4
    ids = _ids(model.config.vocab_size, B=3, T=37)
    att = torch.ones_like(ids)
    att[1, 30:] = 0  # right padding, as the trainer lays rows out
    prompt_lens, completion_lens = torch.tensor([10, 12, 5]), torch.tensor([27, 18, 32])
    with torch.no_grad():
        tl = completion_logprobs(model, ids, att, prompt_lens, completion_lens, chunk_tokens=7)
        logp = model(input_ids=ids, attention_mask=att).logits.float().log_softmax(-1)
    for b in range(3):
        p, c = int(prompt_lens[b]), int(completion_lens[b])
        want = logp[b, p - 1 : p + c - 1].gather(-1, ids[b, p : p + c, None])[:, 0]
        torch.testing.assert_close(tl.logp[b, :c], want, atol=1e-6, rtol=0)
    assert tl.mask.sum() == completion_lens.sum()


def _record(model, ids):
    with RoutingRecorder(model) as rec, torch.no_grad():
        logits = model(ids).logits
    B, T = ids.shape
    return logits, rec.experts().view(B, T, *rec.experts().shape[1:])  # (B, T, L, k)


def test_hash_layers_route_by_token_id_alone(tiny_v4):
    _, model, _ = tiny_v4
    routers = moe_routers(model)
    assert router_kinds(routers) == ["hash", "hash", "topk", "topk"]
    ids = _ids(model.config.vocab_size)
    shuffled = ids[:, torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(2))]
    _, experts = _record(model, ids)
    _, other = _record(model, shuffled)
    for layer in (0, 1):
        table = routers[layer].tid2eid
        assert torch.equal(experts[:, :, layer], table[ids])  # whatever the context
        assert torch.equal(other[:, :, layer], table[shuffled])
    # the top-k layers do depend on context: the same token is routed differently
    assert not torch.equal(experts[:, :, 2].sort(-1).values, _record(model, ids.flip(1))[1]
                           .flip(1)[:, :, 2].sort(-1).values)


def test_replay_touches_top_k_layers_only(tiny_v4):
    _, model, _ = tiny_v4
    ids = _ids(model.config.vocab_size)
    valid = torch.ones(ids.shape, dtype=torch.bool)
    logits, experts = _record(model, ids)
    with replay_routing(model, experts, valid), torch.no_grad():
        assert torch.equal(model(ids).logits, logits)
    junk = experts.clone()
    junk[:, :, :2] = (junk[:, :, :2] + 3) % model.config.n_routed_experts  # hash layers only
    with replay_routing(model, junk, valid), torch.no_grad():
        assert torch.equal(model(ids).logits, logits)  # hash slots are not replayed
    other = experts.clone()
    other[:, :, 2:] = (other[:, :, 2:] + 1) % model.config.n_routed_experts
    with replay_routing(model, other, valid), RoutingRecorder(model) as rec, torch.no_grad():
        moved = model(ids).logits
    assert not torch.allclose(moved, logits)
    assert torch.equal(rec.experts()[:, 2:], other.flatten(0, 1)[:, 2:])


def test_router_stats_cover_both_kinds(tiny_v4):
    _, model, _ = tiny_v4
    ids = _ids(model.config.vocab_size)
    _, experts = _record(model, ids)
    _, flipped = _record(model, ids.flip(1))
    flat = [experts[:, :, i].flatten(0, 1) for i in range(4)]
    ref = [flipped.flip(1)[:, :, i].flatten(0, 1) for i in range(4)]
    valid = torch.ones(flat[0].shape[0], dtype=torch.bool)
    s = router_stats(flat, model.config.n_routed_experts, valid, ref,
                     router_kinds(moe_routers(model)))
    for kind in ("hash", "topk"):
        assert 0 < s[f"router/{kind}/load_entropy"] <= 1
        assert s[f"router/{kind}/min_load"] <= s[f"router/{kind}/max_load"]
    assert s["router/hash/topk_changed"] == 0.0  # same tokens, other context: same experts
    assert s["router/topk/topk_changed"] > 0.0


def test_aux_loss_is_transformers_own_over_top_k_layers(tiny_v4):
    _, model, _ = tiny_v4
    ids = _ids(model.config.vocab_size)
    with RoutingRecorder(model, keep_logits=True) as rec:
        out = model(ids, output_router_logits=True)
    ours = load_balancing_loss(model, rec, torch.ones(ids.shape, dtype=torch.bool))
    assert len(out.router_logits) == 2  # transformers records the top-k routers only
    torch.testing.assert_close(ours, out.aux_loss, atol=1e-6, rtol=1e-6)
    ours.backward()
    assert moe_routers(model)[2].weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_mhc_metrics_are_present_and_respond(tiny_v4):
    _, model, _ = tiny_v4
    assert has_mhc(model)
    ids = _ids(model.config.vocab_size)
    att = torch.ones_like(ids)
    att[1, 25:] = 0
    m = mhc_stats(model, ids, att)
    hc = model.config.hc_mult
    assert m["mhc/comb_col_dev_max"] < 1e-4  # Sinkhorn ends on the columns
    assert 0 <= m["mhc/comb_row_dev_mean"] <= m["mhc/comb_row_dev_max"] < 0.05
    assert [f"mhc/stream{i}/rms" in m for i in range(hc + 1)] == [True] * hc + [False]
    assert all(m[f"mhc/stream{i}/rms"] > 0 for i in range(hc))
    assert all(m[f"mhc/layer{L}/stream_rms_min"] <= m[f"mhc/layer{L}/stream_rms_max"]
               for L in range(4))
    assert m["mhc/stream_rms_ratio_max"] >= 1
    # a sharper pre-Sinkhorn matrix (what an update growing the comb scale does) leaves the
    # row sums further from 1, and the metric shows it in that layer
    scale = model.model.layers[3].ffn_hc.scale
    saved = scale.detach().clone()
    with torch.no_grad():
        scale[2] = 2000.0
        sharp = mhc_stats(model, ids, att)
        scale.copy_(saved)
    assert sharp["mhc/layer3/comb_dev_max"] > 10 * m["mhc/layer3/comb_dev_max"]
    assert sharp["mhc/comb_row_dev_max"] > m["mhc/comb_row_dev_max"]


@pytest.mark.parametrize("kind", ["vllm", "vllm_server"])
def test_vllm_engines_refuse_before_starting(tiny_v4, kind, monkeypatch):
    from rollouts import factory

    path, _, _ = tiny_v4

    def started(*a, **k):
        raise AssertionError("vLLM was started")

    monkeypatch.setattr("rollouts.vllm_engine.VLLMEngine", started)
    monkeypatch.setattr("rollouts.server.VLLMServerEngine", started)
    with pytest.raises(factory.UnsupportedByVLLM) as err:
        factory.make_engine(kind, path)
    msg = str(err.value)
    assert "\n" not in msg and "mlp_layer_types" in msg and "rollout.engine=hf" in msg


@pytest.mark.slow
def test_grpo_steps_change_weights_with_finite_metrics(tmp_path):
    """Three GRPO steps on tiny:deepseek_v4 with the HF engine and routing replay: weights move,
    every metric is finite, router statistics cover both kinds and mHC metrics are logged."""
    from r1kit.config import load_config
    from r1kit.train import build_trainer

    cfg = load_config(REPO / "tests/data/tiny_grpo_random.yaml", [
        f"log.out_dir={tmp_path}", "model.path=tiny:deepseek_v4", "rollout.n=4",
        "rollout.batch_size=4", "rollout.max_tokens=12", "train.prompts_per_step=2",
        "train.steps=3", "train.lr=1e-3", "train.sample_every=0", "train.save_every=0",
        "train.tensorboard=false", "algo.routing_replay=true", "algo.mask_truncated=false",
        "reward.funcs=[rewards.toy:digit_share]", "reward.weights=[1.0]", "reward.workers=1"])
    trainer = build_trainer(cfg, show_progress=False)
    try:
        before = {n: p.detach().clone() for n, p in trainer.p.policy.named_parameters()}
        rows = [trainer.run_step() for _ in range(3)]
        after = dict(trainer.p.policy.named_parameters())
    finally:
        trainer.p.close()
    for r in rows:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not torch.isfinite(
            torch.tensor(v))}
        assert not bad, bad
    last = rows[-1]
    assert last["mismatch/kl"] < 1e-6  # sampler log-probs are the trainer's (replayed routing)
    assert last["router/hash/topk_changed"] == 0.0 and "router/topk/load_entropy" in last
    assert last["mhc/comb_col_dev_max"] < 1e-4 and last["mhc/stream0/rms"] > 0
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(moved) > len(before) // 2
    assert any(".attn_hc." in n for n in moved) and any("hc_head" in n for n in moved)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logged] == [1, 2, 3] and "mhc/comb_row_dev_max" in logged[-1]
