"""HFEngine against a real transformers model (the tiny Qwen3-MoE)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rollouts.engine import Engine
from rollouts.hf import HFEngine
from rollouts.model_check import CheckpointError
from rollouts.prompts import r1_zero_prompt
from rollouts.types import Sampling

PROMPTS = [r1_zero_prompt("What is 2 + 2?"), r1_zero_prompt("What is 17 * 3 - 4 + 11?"), "Hi"]


@pytest.fixture(scope="module")
def engine(tiny_qwen):
    return HFEngine(tiny_qwen, batch_size=5)


def _hf_logprobs(model, prompt_ids, ids) -> torch.Tensor:
    full = torch.tensor([prompt_ids + ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(full).logits.float(), dim=-1)[0]
    return lp[len(prompt_ids) - 1 : -1].gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)


def test_satisfies_protocol(engine):
    assert isinstance(engine, Engine)


def test_groups_and_logprobs_match_a_plain_forward(engine):
    groups = engine.generate(PROMPTS, 3, Sampling(max_tokens=12, seed=0))
    assert [g.prompt for g in groups] == PROMPTS
    # prompts of different lengths share batches: left padding must not shift logprobs
    assert len({len(g.prompt_token_ids) for g in groups}) == 3
    for g in groups:
        assert len(g.completions) == 3
        for c in g.completions:
            assert len(c.token_ids) == len(c.logprobs) >= 1
            assert c.finish_reason in ("stop", "length")
            ref = _hf_logprobs(engine.model, g.prompt_token_ids, c.token_ids)
            assert (ref - torch.tensor(c.logprobs)).abs().max() < 1e-4
    st = engine.last_stats
    assert st.completions == 9 and st.new_tokens > 0 and st.tokens_per_s > 0
    assert st.peak_memory_bytes > 0


def test_seeded_sampling_reproduces_exactly(engine):
    s = Sampling(max_tokens=16, seed=1234)
    a = engine.generate(PROMPTS[:2], 4, s)
    torch.manual_seed(99)  # the caller's RNG state must not matter
    b = engine.generate(PROMPTS[:2], 4, s)
    assert [c.token_ids for g in a for c in g.completions] == \
           [c.token_ids for g in b for c in g.completions]
    c = engine.generate(PROMPTS[:2], 4, Sampling(max_tokens=16, seed=4321))
    assert [x.token_ids for g in a for x in g.completions] != \
           [x.token_ids for g in c for x in g.completions]


def test_sampling_leaves_the_callers_rng_alone(engine):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    engine.generate(PROMPTS[:1], 2, Sampling(max_tokens=4, seed=0))
    assert torch.equal(torch.rand(3), expected)


def test_update_weights_samples_from_the_new_model(tiny_qwen):
    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    engine = HFEngine(AutoModelForCausalLM.from_pretrained(tiny_qwen), tok)
    policy = AutoModelForCausalLM.from_pretrained(tiny_qwen)
    with torch.no_grad():
        policy.lm_head.weight.mul_(3.0)
    g = engine.generate(PROMPTS[:1], 1, Sampling(max_tokens=8, seed=0))[0]
    c = g.completions[0]
    before = _hf_logprobs(policy, g.prompt_token_ids, c.token_ids)
    assert (before - torch.tensor(c.logprobs)).abs().max() > 1e-3
    engine.update_weights(policy)
    g = engine.generate(PROMPTS[:1], 1, Sampling(max_tokens=8, seed=0))[0]
    c = g.completions[0]
    after = _hf_logprobs(policy, g.prompt_token_ids, c.token_ids)
    assert (after - torch.tensor(c.logprobs)).abs().max() < 1e-4


def test_stop_strings_and_greedy(engine):
    greedy = Sampling(max_tokens=16, temperature=0)
    a = engine.generate(PROMPTS[:1], 2, greedy)[0].completions
    assert a[0].token_ids == a[1].token_ids  # greedy ignores the seed
    assert a[0].finish_reason == "length" and len(a[0].text) >= 12
    stop = a[0].text[6:10]  # four characters from the middle, usually spanning tokens
    c = engine.generate(PROMPTS[:1], 1, Sampling(max_tokens=16, temperature=0,
                                                 stop=(stop,)))[0].completions[0]
    assert c.finish_reason == "stop"
    assert c.text == a[0].text[: a[0].text.find(stop)]
    # decoding ended at the token that completed the stop string, not later
    n = len(c.token_ids)
    assert c.token_ids == a[0].token_ids[:n] and n < len(a[0].token_ids)
    assert stop in engine.tokenizer.decode(c.token_ids)
    assert stop not in engine.tokenizer.decode(c.token_ids[:-1])


def test_filters_match_transformers_warpers():
    """Temperature, top-k and top-p give the distribution transformers' warpers give."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from rollouts.hf import sampling_scores

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g) * 3
    logits[:, 7] = logits[:, 8]  # a tie, so the k-th value's tie rule is exercised
    logp = torch.log_softmax(logits, dim=-1)
    for t, k, p in [(1.0, -1, 1.0), (0.7, 5, 1.0), (1.3, -1, 0.8), (0.6, 8, 0.5), (1.0, 1, 1.0),
                    (1.0, 49, 0.999), (2.0, 3, 0.05)]:
        ours = sampling_scores(logp, Sampling(temperature=t, top_k=k, top_p=p)).softmax(-1)
        hf = TemperatureLogitsWarper(t)(None, logp)
        if k > 0:
            hf = TopKLogitsWarper(k)(None, hf)
        if p < 1:
            hf = TopPLogitsWarper(p)(None, hf)
        assert torch.allclose(ours, hf.softmax(-1), atol=1e-6), (t, k, p)
        assert torch.equal(ours == 0, hf.softmax(-1) == 0), (t, k, p)


def test_inverse_cdf_draws_follow_the_distribution():
    """200,000 draws from a 6-token distribution with two filtered (probability 0) tokens:
    every frequency within 4 standard errors of its probability, the filtered ones never."""
    from rollouts.hf import inverse_cdf_sample

    p = torch.tensor([0.5, 0.0, 0.25, 0.125, 0.0, 0.125])
    n = 200_000
    torch.manual_seed(0)
    draws = inverse_cdf_sample(p.expand(n, 6))
    freq = torch.bincount(draws, minlength=6).double() / n
    se = (p.double() * (1 - p.double()) / n).sqrt()
    assert freq[1] == 0 and freq[4] == 0
    assert ((freq - p.double()).abs() <= 4 * se + 1e-12).all(), freq.tolist()
    # Rows are independent and a row that sums to less than 1 (float rounding) still samples.
    two = inverse_cdf_sample(torch.tensor([[0.3, 0.3, 0.3999999], [1.0, 0.0, 0.0]]))
    assert two.shape == (2,) and two[1] == 0


def test_min_tokens_holds_off_eos_and_logprobs_stay_raw(tiny_qwen):
    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen)

    def eos_first(module, args, logits):  # EOS becomes by far the likeliest token everywhere
        logits[..., tok.eos_token_id] += 30.0
        return logits

    model.lm_head.register_forward_hook(eos_first)
    engine = HFEngine(model, tok)
    short = engine.generate(PROMPTS[:1], 4, Sampling(max_tokens=12, seed=0))[0]
    assert {len(c.token_ids) for c in short.completions} == {1}
    g = engine.generate(PROMPTS[:1], 4, Sampling(max_tokens=12, min_tokens=6, seed=0))[0]
    for c in g.completions:
        assert len(c.token_ids) >= 6 and tok.eos_token_id not in c.token_ids[:6]
        ref = _hf_logprobs(model, g.prompt_token_ids, c.token_ids)
        assert (ref - torch.tensor(c.logprobs)).abs().max() < 1e-4  # not renormalised
    with pytest.raises(ValueError, match="min_tokens must be in"):
        Sampling(max_tokens=4, min_tokens=5)


def test_generation_config_does_not_change_sampling(tiny_qwen):
    """Only ``Sampling`` decides the distribution, as in the vLLM engines."""
    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen)
    engine = HFEngine(model, tok)
    s = Sampling(max_tokens=10, seed=3)
    plain = engine.generate(PROMPTS[:2], 3, s)
    model.generation_config.top_k, model.generation_config.temperature = 1, 0.1
    model.generation_config.repetition_penalty = 5.0
    again = engine.generate(PROMPTS[:2], 3, s)
    assert [c.token_ids for g in plain for c in g.completions] == \
           [c.token_ids for g in again for c in g.completions]


def test_bad_input(engine, tmp_path):
    with pytest.raises(ValueError, match="n must be >= 1"):
        engine.generate(PROMPTS, 0, Sampling())
    with pytest.raises(TypeError, match="sequence of strings"):
        engine.generate("a prompt", 1, Sampling())
    with pytest.raises(ValueError, match="prompt 1 has .* exceeds the context"):
        engine.generate(["short", "x " * 3000], 1, Sampling(max_tokens=8))
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        Sampling(max_tokens=0)
    with pytest.raises(CheckpointError, match="does not exist"):
        HFEngine(tmp_path / "missing")
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37)).save_pretrained(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="not a causal language model"):
        HFEngine(tmp_path / "bert")


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen3_dense"])
def test_a_repeated_prompt_is_prefilled_once_with_the_same_samples(tiny_cache, family):
    """share_prompts: a batch holding each prompt's n samples prefills each distinct prompt
    once (the first forward sees 3 rows, not 12) and samples exactly the tokens and
    log-probs of the engine that prefills every row."""
    from r1kit.tiny import build_tiny

    path = build_tiny(family, cache_dir=tiny_cache)
    kw = {} if family == "qwen3_dense" else {"experts_implementation": "eager"}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, **kw)
    tok = AutoTokenizer.from_pretrained(path)
    rows: list[int] = []
    hook = model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    s = Sampling(max_tokens=10, seed=3)
    try:
        shared = HFEngine(model, tok, batch_size=12).generate(PROMPTS, 4, s)
        assert rows[0] == 3 and rows[1] == 12  # prefill of 3 distinct prompts, then 12 rows
        rows.clear()
        plain = HFEngine(model, tok, batch_size=12, share_prompts=False).generate(PROMPTS, 4, s)
        assert rows[0] == 12
    finally:
        hook.remove()
    for g, h in zip(shared, plain):
        for a, b in zip(g.completions, h.completions):
            assert a.token_ids == b.token_ids
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-9)


def test_fixed_point_sampling_draws_what_the_float_path_draws():
    """The HF engine samples on CUDA through integer cumulative sums (a float cumsum has no
    deterministic CUDA kernel and raises under train.deterministic); from the same uniforms it
    picks the float path's tokens, filtered tokens never. (The CUDA dispatch itself needs a
    GPU; this checks the draw it dispatches to.)"""
    import torch

    from rollouts.hf import fixed_point_sample, inverse_cdf_sample

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 50, generator=g) * 3
    logits[:, ::7] = float("-inf")  # filtered tokens: probability 0
    probs = logits.softmax(dim=-1)
    torch.manual_seed(1)
    floats = inverse_cdf_sample(probs)
    torch.manual_seed(1)
    ints = fixed_point_sample(probs)
    assert torch.equal(floats, ints)
    assert not bool((ints % 7 == 0).any())
    counts = torch.bincount(ints, minlength=50).double() / len(ints)
    assert float((counts - probs.mean(0)).abs().max()) < 0.02  # the right distribution


def test_a_float32_master_policy_samples_in_the_recipes_compute_dtype(tiny_qwen):
    """Under mixed precision the trainer's policy holds float32 master weights while its
    forward passes compute in ``model.dtype``; the engine the factory builds on it decodes under
    autocast in that dtype (not in float32), seen from inside the model's layers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rollouts.factory import make_engine
    from rollouts.types import Sampling

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    seen = []
    layer = model.model.layers[0].self_attn.q_proj
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        for dtype, want in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
            seen.clear()
            engine = make_engine("hf", tiny_qwen, dtype=dtype, max_model_len=64, seed=0,
                                 gpu_memory_utilization=0.5, batch_size=4, model=model,
                                 tokenizer=tok)
            engine.generate(["1 + 1 ="], 2, Sampling(max_tokens=4, seed=0))
            assert seen and set(seen) == {want}, (dtype, set(seen))
    finally:
        handle.remove()
    assert next(model.parameters()).dtype == torch.float32  # the masters are untouched


def test_a_split_batch_samples_what_one_call_samples(tiny_qwen):
    """Counter-based randomness: the same completions whether the prompts come in one call or
    in shares placed by ``Sampling.first_prompt`` (the trainer's every-rank rollout), with any
    forward batch size; another seed draws other completions."""
    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen)
    s = Sampling(max_tokens=10, seed=11)
    whole = HFEngine(model, tok, batch_size=16).generate(PROMPTS, 3, s)
    parts = HFEngine(model, tok, batch_size=2)
    split = (parts.generate(PROMPTS[:1], 3, s)
             + parts.generate(PROMPTS[1:], 3, dataclasses.replace(s, first_prompt=1)))
    assert [[c.token_ids for c in g.completions] for g in whole] == \
        [[c.token_ids for c in g.completions] for g in split]
    other = HFEngine(model, tok, batch_size=16).generate(
        PROMPTS, 3, dataclasses.replace(s, seed=12))
    assert [c.token_ids for g in whole for c in g.completions] != \
        [c.token_ids for g in other for c in g.completions]
    # unseeded: a fresh seed each call (a forked generator restored after each call repeated)
    fresh = [[c.token_ids for g in parts.generate(PROMPTS, 3, dataclasses.replace(s, seed=None))
              for c in g.completions] for _ in range(2)]
    assert fresh[0] != fresh[1]


def test_row_uniforms_are_uniform_and_independent():
    """The hash behind the HF engine's draws: 200 streams x 500 steps are uniform on [0, 1)
    (mean, variance, Kolmogorov-Smirnov distance) with no correlation between neighbouring
    streams or steps."""
    from rollouts.hf import row_keys, row_uniforms

    keys = row_keys(3, list(range(200)), torch.device("cpu"))
    u = torch.cat([row_uniforms(keys, t) for t in range(500)], dim=1)  # (200, 500)
    flat = u.flatten().sort().values
    n = flat.numel()
    assert abs(float(flat.mean()) - 0.5) < 4 * (1 / 12 / n) ** 0.5
    assert abs(float(flat.var()) - 1 / 12) < 0.002
    ks = float((flat - torch.arange(n, dtype=torch.float64) / n).abs().max())
    assert ks < 1.63 / n**0.5  # the 1% critical value
    for a, b in ((u[:-1], u[1:]), (u[:, :-1], u[:, 1:])):  # neighbouring streams, steps
        r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert abs(float(r)) < 4 / a.numel() ** 0.5
    assert not torch.equal(row_uniforms(row_keys(4, list(range(200)), keys.device), 0), u[:, :1])


def test_reading_whether_rows_run_every_few_tokens_changes_nothing(tiny_qwen, monkeypatch):
    """On a GPU the decode loop reads whether any row still runs every ``ANY_EVERY`` tokens
    (``_any_every``; a read waits for the device): the padding steps sampled after the last row
    ended are dropped, so completions, log-probs and recorded experts equal those of the loop
    that reads after every token. Run here by asking for the GPU's interval on the CPU, with the
    EOS logit raised so that rows end at different steps."""
    import rollouts.hf as hf

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen, dtype=torch.float64,
                                                 experts_implementation="eager")
    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    eos = tok.eos_token_id

    def likelier_eos(module, args, out):  # about 6% a step: rows stop early and unevenly
        out[..., eos] += 4.0
        return out

    s = Sampling(max_tokens=24, seed=7)
    calls: list[int] = []
    hook = model.model.register_forward_pre_hook(lambda *a: calls.append(1))
    bias = model.lm_head.register_forward_hook(likelier_eos)
    got = {}
    try:
        for every in (1, hf.ANY_EVERY):
            monkeypatch.setattr(hf, "_any_every", lambda device, every=every: every)
            calls.clear()
            engine = HFEngine(model, tok, batch_size=4, record_routing=True)  # a group a batch
            got[every] = (engine.generate(PROMPTS, 4, s), len(calls))
    finally:
        hook.remove()
        bias.remove()
    (each, passes_each), (few, passes_few) = got[1], got[hf.ANY_EVERY]
    lengths = {len(c.token_ids) for g in each for c in g.completions}
    assert len(lengths) > 2, lengths  # rows end at different steps
    assert passes_few > passes_each  # a batch ended early: padding steps ran, and were dropped
    for g, h in zip(each, few):
        for a, b in zip(g.completions, h.completions):
            assert (a.token_ids, a.finish_reason) == (b.token_ids, b.finish_reason)
            assert a.logprobs == b.logprobs
            assert torch.equal(a.routed_experts, b.routed_experts)


def test_mla_decoding_expands_only_new_cache_positions(tiny_deepseek):
    """The tiny DeepSeek-V3 (MLA: a compressed KV cache that transformers expands through
    ``kv_b_proj`` at every call): with ``rollouts.mla.incremental_expansion`` each decode step
    expands only the positions it adds, far fewer rows in all, and the samples and log-probs
    equal those of the full re-expansion (float64: to the bit here)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_deepseek, dtype=torch.float64,
                                                 experts_implementation="eager")
    tok = AutoTokenizer.from_pretrained(tiny_deepseek)
    rows: list[int] = []
    layer = next(m for m in model.modules() if hasattr(m, "kv_b_proj"))
    hook = layer.kv_b_proj.register_forward_hook(
        lambda mod, args, out: rows.append(args[0].shape[:-1].numel()))
    s = Sampling(max_tokens=24, seed=3)
    got = {}
    try:
        for incremental in (False, True):
            rows.clear()
            engine = HFEngine(model, tok, incremental_mla=incremental)
            got[incremental] = (engine.generate(PROMPTS, 4, s), sum(rows))
    finally:
        hook.remove()
    (full, full_rows), (inc, inc_rows) = got[False], got[True]
    assert inc_rows * 4 < full_rows, (inc_rows, full_rows)
    for g, h in zip(full, inc):
        for a, b in zip(g.completions, h.completions):
            assert a.token_ids == b.token_ids
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-12)
    assert not any("expand_kv" in vars(m) for m in model.modules())  # the patch is gone
