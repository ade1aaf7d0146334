"""The ``r1kit grade`` CLI, run as a real subprocess (``python -m rewards.math``)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rewards.math", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_grades_file_to_out_and_summarises(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [
        {"pred": r"so \boxed{0.5}", "gold": r"\frac{1}{2}"},
        {"pred": "no boxed answer here\nat all", "gold": "3"},
        {"pred": "#### 8", "gold": "7"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = _run("--jsonl", str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert got == [
        {"correct": True, "extracted": "0.5", "reason": "rational"},
        {"correct": False, "extracted": None, "reason": "no answer found"},
        {"correct": False, "extracted": "8", "reason": "rational"},
    ]
    assert "graded 3 pairs: 1 correct, accuracy 0.3333" in proc.stderr


def test_writes_stdout_without_out(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"pred": "x = 4", "gold": "4"}) + "\n", encoding="utf-8")
    proc = _run("--jsonl", str(src))
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"correct": True, "extracted": "x = 4", "reason": "string"}


def test_missing_file_is_exit_2(tmp_path):
    proc = _run("--jsonl", str(tmp_path / "nope.jsonl"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr


def test_bad_line_is_exit_2_and_named(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"pred": "1", "gold": "1"}\n{"pred": "1"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = _run("--jsonl", str(src), "--out", str(out))
    assert proc.returncode == 2
    assert f"{src}:2:" in proc.stderr and not out.exists()
    src.write_text("not json\n", encoding="utf-8")
    proc = _run("--jsonl", str(src))
    assert proc.returncode == 2 and f"{src}:1: not JSON" in proc.stderr
