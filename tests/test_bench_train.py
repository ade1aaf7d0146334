"""Smoke test of ``r1kit bench train``: every contender runs (1 timed step, the small memory
case) and reports finite numbers. The ``--async`` mode's contenders run the trainer's async path,
which ``tests/test_train.py`` (one step off) and ``tests/test_resume.py`` (SIGKILL and resume)
test; its own smoke run (87 s) was dropped to keep the suite near 30 minutes."""

from __future__ import annotations

import json
import math

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.vllm]  # ~1 min: 5 subprocesses, one starts vLLM


def test_bench_train_quick_writes_finite_json(tiny_qwen, tiny_cache, tmp_path, monkeypatch):
    pytest.importorskip("trl")
    pytest.importorskip("vllm")
    from bench import train as bench

    monkeypatch.setenv("R1KIT_CACHE", str(tiny_cache))  # the workers reuse this run's tiny model
    out = tmp_path / "bench_train.json"
    assert bench.main(["--steps", "1", "--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    res = result["contenders"]
    assert set(res) == set(bench.STEP_CONTENDERS) | set(bench.MEMORY_CONTENDERS)
    for name in bench.STEP_CONTENDERS:
        r = res[name]
        assert "error" not in r, (name, r)
        assert r["completion_len"] == bench.MAX_TOKENS, (name, r)  # lengths forced equal
        for key in ("s_per_step", "peak_rss_mb"):
            assert math.isfinite(r[key]) and r[key] > 0, (name, key, r)
    for name in bench.MEMORY_CONTENDERS:
        r = res[name]
        assert "error" not in r, (name, r)
        assert math.isfinite(r["peak_increase_mb"]) and r["peak_increase_mb"] > 0, (name, r)
    assert all(v is not None and math.isfinite(v) for v in result["ratios"].values())
