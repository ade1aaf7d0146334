"""``r1kit bench rewards`` on a small subset: it runs end to end and writes finite figures."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.math_grader import math_verify_suite_rows

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


def test_bench_rewards_small_subset(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.rewards",
        "--limit",
        "12",
        "--data-dir",
        str(DATA),
        "--out",
        str(out),
        "--batch-size",
        "16",
        "--batches",
        "1",
        "--math-verify-suite",
        "off",  # no network in tests; the suite's reader is tested on a file of our own
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "speedup" in proc.stdout and "targets:" in proc.stdout
    report = json.loads(out.read_text())
    assert report["math"]["pairs"] == 12
    assert report["config"]["humaneval_problems"] == 12
    assert report["scorer"]["batch_size"] == 16
    for part, key in [
        ("math", "agreement"),
        ("sandbox", "plain"),
        ("scorer", "samples_per_s"),
        ("targets", "sandbox_time_ratio"),
    ]:
        assert key in report[part]
    numbers = list(_numbers(report))
    assert len(numbers) > 20
    assert all(math.isfinite(x) for x in numbers)
    assert report["math"]["r1kit"]["pairs_per_s"] > 0 and report["scorer"]["samples_per_s"] > 0
    # The MATH-500 solutions box their own answers: every grader should mostly say "equal".
    assert report["math"]["r1kit"]["accuracy"] >= 0.75


SUITE_FILE = """
import math
import pytest

@pytest.mark.parametrize(
    "gold,pred,expected",
    [("$1$", "$1$", 1), ("2", "3", 0), (f"{math.sqrt(4):.1f}", "$2$", 1)],
)
def test_numbers(gold, pred, expected):
    pass

@pytest.mark.parametrize("gold, pred, strict, expected", [("$f(x)$", "$f(y)$", False, 1)])
def test_option(gold, pred, strict, expected):
    pass

@pytest.mark.parametrize("text", ["not a graded pair"])
def test_other(text):
    pass
"""


def test_math_verify_suite_reader(tmp_path):
    """The suite's tables are read with ast, options kept; code that is not a literal is
    refused, never run."""
    (tmp_path / "test_mine.py").write_text(SUITE_FILE, encoding="utf-8")
    rows = math_verify_suite_rows(tmp_path)
    assert [(r["gold"], r["pred"], r["expected"]) for r in rows] == [
        ("$1$", "$1$", True),
        ("2", "3", False),
        ("2.0", "$2$", True),
        ("$f(x)$", "$f(y)$", True),
    ]
    assert rows[3]["options"] == {"strict": False} and rows[0]["options"] == {}
    hostile = SUITE_FILE.replace("math.sqrt(4)", "__import__('os').getpid()")
    (tmp_path / "test_mine.py").write_text(hostile, encoding="utf-8")
    with pytest.raises(ValueError, match="not a literal"):
        math_verify_suite_rows(tmp_path)
