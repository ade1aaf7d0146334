"""``r1kit eval`` sampling from the embedded tiny policy with the HF and vLLM engines, on a math
and a code suite, as a user runs it (a subprocess): all three outputs are written and agree with
each other. The tiny policy is random, so its scores are whatever they are; what is checked is
the pipeline (every problem sampled n times, every completion graded, the summary computed from
the samples written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import r1kit

DATA = Path(__file__).parents[2] / "shared" / "data"


def check_outputs(out: Path, n: int, problems: int) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["suites"]) == {"gsm8k", "humaneval"}
    for name, s in summary["suites"].items():
        rows = [json.loads(x) for x in (out / "samples" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == s["problems"] == problems
        correct = []
        for row in rows:
            assert len(row["completions"]) == n
            for c in row["completions"]:
                assert 0 < c["tokens"] <= 24 and c["finish_reason"] in ("stop", "length")
                assert isinstance(c["correct"], bool) and c["detail"]
                correct.append(c["correct"])
        assert s["length_unit"] == "tokens"
        assert s["metrics"][f"avg@{n}"]["value"] == pytest.approx(sum(correct) / len(correct))
    report = (out / "report.md").read_text()
    assert "## gsm8k" in report and "## humaneval" in report
    return summary


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_tiny_policy_on_two_suites(tiny_cache, tmp_path, engine):
    out = tmp_path / engine
    args = ("eval", "--model", "tiny:qwen3_moe", "--suite", "gsm8k,humaneval", "-n", "2",
            "--max-problems", "3", "--engine", engine, "--data-dir", str(DATA),
            "--out-dir", str(out), "eval.max_tokens=24")
    r = r1kit(*args, cache=tiny_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| gsm8k | 3 of 1319 | 2 |" in r.stdout  # the report is printed too
    first = check_outputs(out, n=2, problems=3)
    # Everything is done: a second call samples nothing and reports the same numbers.
    r = r1kit(*args, cache=tiny_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text()) == first
