"""``VLLMEngine`` on the real vLLM CPU engine: groups, seeds, stats, and clear errors."""

from __future__ import annotations

import psutil
import pytest
from vllm_fixtures import MAX_MODEL_LEN, PROMPTS, make_engine

from r1kit.tiny import build_tiny
from rollouts.engine import Engine
from rollouts.types import Sampling

pytestmark = [pytest.mark.vllm]


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture(scope="module")
def children_before() -> set[int]:
    """Children this process had before the engine (other modules' helper processes)."""
    return _children()


@pytest.fixture(scope="module")
def engine(children_before, tmp_path_factory):
    eng = make_engine(build_tiny("qwen3_moe", cache_dir=tmp_path_factory.mktemp("tiny")))
    yield eng
    eng.close()
    assert _children() - children_before == set()


def test_missing_checkpoint_fails_before_vllm(tmp_path):
    before = _children()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_engine(tmp_path / "nope")
    assert _children() - before == set()


def test_non_causal_lm_checkpoint_fails_before_vllm(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    before = _children()
    with pytest.raises(ValueError, match="not a causal language model.*bert"):
        make_engine(tmp_path)
    assert _children() - before == set()


@pytest.mark.slow
def test_generate_groups_seeds_and_stats(engine):
    assert isinstance(engine, Engine)
    s = Sampling(max_tokens=8, temperature=1.0, seed=7)
    groups = engine.generate(list(PROMPTS), n=3, sampling=s)
    assert [g.prompt for g in groups] == list(PROMPTS)
    for g in groups:
        assert g.prompt_token_ids == engine.tokenizer.encode(g.prompt)
        assert len(g.completions) == 3
        for c in g.completions:
            assert len(c.token_ids) == len(c.logprobs) <= 8
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.finish_reason in ("stop", "length")
            assert c.routed_experts is None  # not available on CPU (see module docstring)
    assert len({tuple(c.token_ids) for c in groups[0].completions}) > 1  # distinct seeds
    again = engine.generate(list(PROMPTS), n=3, sampling=s)
    assert [[c.token_ids for c in g.completions] for g in again] == \
        [[c.token_ids for c in g.completions] for g in groups]
    st = engine.last_stats
    assert st.prompts == 2 and st.completions == 6 and st.new_tokens > 0
    assert st.tokens_per_s > 0 and st.peak_memory_bytes > 2**20
    print(f"vLLM CPU tiny Qwen3-MoE: {st.tokens_per_s:.0f} tokens/s, "
          f"peak RSS {st.peak_memory_bytes / 2**20:.0f} MiB")


@pytest.mark.slow
def test_bad_generate_input(engine):
    with pytest.raises(ValueError, match="n must be >= 1"):
        engine.generate(list(PROMPTS), n=0, sampling=Sampling())
    long_prompt = "1 + 1 " * MAX_MODEL_LEN
    with pytest.raises(ValueError, match=r"prompt 1 has \d+ tokens.*256"):
        engine.generate([PROMPTS[0], long_prompt], n=1, sampling=Sampling())


@pytest.mark.slow
def test_sleep_is_a_noop_on_cpu_and_close_leaves_no_children(engine, children_before):
    engine.sleep()
    engine.wake()
    assert engine.generate([PROMPTS[0]], n=1, sampling=Sampling(max_tokens=2))[0].completions
    assert _children() - children_before == set()


@pytest.mark.slow
def test_seeded_batch_larger_than_one_prefill_chunk(engine):
    """vLLM 0.32 on CPU crashed ("CPU Generator does not use offset") when chunked prefill split
    a seeded request; the engine turns chunked prefill off there."""
    from r1kit.tasks import arithmetic_tasks
    from rollouts.prompts import r1_zero_prompt

    prompts = [r1_zero_prompt(t.question) for t in arithmetic_tasks("heldout", 16)]
    groups = engine.generate(prompts, n=8, sampling=Sampling(max_tokens=8, seed=1))
    assert sum(len(g.completions) for g in groups) == 128
