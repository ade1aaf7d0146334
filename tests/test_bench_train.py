"""Smoke test of ``r1kit bench train``: every contender runs (1 timed step, the small memory
case) and reports finite numbers; ``--grid`` runs a row (KL and aux loss on) as a pair."""

from __future__ import annotations

import json
import math

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.vllm]  # ~1.5 min: 7 subprocesses, one starts vLLM


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

    row = bench.Row("qwen3_moe", beta=0.04, aux_loss_coef=0.001)  # reference and aux loss on
    out = tmp_path / "bench_train_grid.json"
    assert bench.main(["--grid", row.arg, "--steps", "1", "--pairs", "1", "--out", str(out)]) == 0
    (name, r), = json.loads(out.read_text())["rows"].items()
    assert name == row.name and r["differences"] == row.differences()
    assert {k: len(v) for k, v in r["runs"].items()} == {"r1kit_hf": 1, "trl_hf": 1}
    for run in (r["runs"]["r1kit_hf"][0], r["runs"]["trl_hf"][0]):
        assert len(run["step_seconds"]) == 2 and run["completion_len"] == bench.MAX_TOKENS
    for span in ("all", "after_first"):
        assert math.isfinite(r[span]["ratio"]) and r[span]["ratio"] > 0, (span, r)
    assert r["r1kit_score_first_s"] > 0 and isinstance(r["met"], bool)


@pytest.mark.slow
@pytest.mark.vllm
def test_bench_train_async_writes_both_contenders(tiny_qwen, tiny_cache, tmp_path, monkeypatch):
    from bench import train as bench

    monkeypatch.setenv("R1KIT_CACHE", str(tiny_cache))
    out = tmp_path / "bench_async.json"
    assert bench.main(["--async", "--steps", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    res = result["contenders"]
    assert set(res) == set(bench.ASYNC_CONTENDERS)
    for name, staleness in (("r1kit_server_sync", 0), ("r1kit_server_async", 1)):
        r = res[name]
        assert "error" not in r, (name, r)
        assert r["median_staleness"] == staleness
        for key in ("s_per_step", "median_time_generate", "median_time_update"):
            assert math.isfinite(r[key]) and r[key] > 0, (name, key, r)
    speedup = result["ratios"]["async_speedup"]
    assert speedup == pytest.approx(res["r1kit_server_sync"]["s_per_step"]
                                    / res["r1kit_server_async"]["s_per_step"])
