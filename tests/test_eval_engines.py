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
    again = json.loads((out / "summary.json").read_text())
    assert again["suites"] == first["suites"]
    assert first["generation"]["problems_sampled"] == 6 and first["generation"]["new_tokens"] > 0
    assert again["generation"]["problems_sampled"] == 0


@pytest.mark.slow
def test_a_killed_eval_resumes_where_it_stopped(tiny_cache, tmp_path):
    """SIGKILL mid-run (the tiny policy on the HF engine, one problem per batch), then the same
    command again: the problems written before the kill are kept as they were, the rest are
    sampled, and every problem appears exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    out = tmp_path / "run"
    args = ["eval", "--model", "tiny:qwen3_moe", "--suite", "gsm8k", "-n", "2",
            "--max-problems", "12", "--data-dir", str(DATA), "--out-dir", str(out),
            "--no-progress", "eval.max_tokens=24", "eval.batch_problems=1"]
    samples = out / "samples" / "gsm8k.jsonl"
    env = {**os.environ, "R1KIT_CACHE": str(tiny_cache)}
    proc = subprocess.Popen([sys.executable, "-m", "r1kit", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if samples.is_file() and samples.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [json.loads(x) for x in samples.read_text().splitlines() if x.endswith("}")]
    assert 3 <= len(before) < 12, "the kill came too late to test a resume"
    assert not (out / "summary.json").exists()
    r = r1kit(*args, cache=tiny_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    after = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(after) == 12 and len({row["id"] for row in after}) == 12
    assert after[:len(before)] == before
    assert json.loads((out / "summary.json").read_text())["suites"]["gsm8k"]["problems"] == 12


def test_prompt_styles_with_the_tiny_tokenizer(tiny_qwen):
    from transformers import AutoTokenizer

    from r1kit.config import load_config
    from r1kit.eval_plan import plan_suites

    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    base = [f"eval.data_dir={DATA}", "eval.suites=[gsm8k]", "eval.max_problems=2"]
    chat, = plan_suites(load_config(None, [*base, "eval.prompt_style=chat"]), tok)
    question = chat.problems[0].question
    assert question in chat.prompts[0] and "within \\boxed{}" in chat.prompts[0]
    assert chat.prompts[0] == tok.apply_chat_template(
        [{"role": "user", "content": question + "\nPlease reason step by step, and put your "
          "final answer within \\boxed{}."}], tokenize=False, add_generation_prompt=True)
    shots, = plan_suites(load_config(None, [*base, "eval.prompt_style=few_shot"]), tok)
    assert shots.prompts[0].count("\nA: ") == 8 and shots.prompts[0].endswith("\nA:")
    assert shots.stop == ("\n\nQ:", "\nQ:")
    zero, = plan_suites(load_config(None, [*base, "eval.prompt_style=r1_zero"]), tok)
    assert zero.prompts[0].endswith(". Assistant: <think>") and zero.stop == ()
    # The default: preset r1 with the chat_think style. The tiny template already opens <think>,
    # so it is not opened twice.
    r1, = plan_suites(load_config(None, base), tok)
    assert r1.prompts[0] == chat.prompts[0] and r1.prompts[0].endswith("assistant\n<think>")
    assert (r1.temperature, r1.top_p, r1.n, r1.max_tokens) == (0.6, 0.95, 1, 32768)
    assert (r1.prompt_style, r1.graded_text) == ("chat_think", "after_think")


@pytest.mark.slow
@pytest.mark.vllm
def test_bench_eval_quick_writes_json(tiny_cache, tmp_path):
    out = tmp_path / "bench.json"
    r = r1kit("bench", "eval", "--quick", "--data-dir", str(DATA), "--out", str(out),
              cache=tiny_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["grading"]["problems"] == 20 and result["grading"]["problems_per_s"] > 0
    assert {s["engine"] for s in result["sampling"]} == {"hf", "vllm"}
    assert all(s["tokens_per_s"] > 0 and s["new_tokens"] > 0 for s in result["sampling"])
    assert "problems/s" in r.stdout
