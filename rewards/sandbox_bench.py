"""Benchmark: sandboxed vs plain runs of the HumanEval canonical solutions, side by side.

Each problem's program (prompt + canonical solution + test + ``check(entry_point)``) runs
under ``run_python`` ("sandboxed"), as a plain ``subprocess.run([sys.executable, file])``
("plain": the caller's interpreter, with its site-packages and ``.pth`` files), and as
``python -I -S file`` with the interpreter the sandbox uses ("bare": the same stdlib-only
start-up as inside the sandbox, so sandboxed/bare is the cost of the isolation itself).
The three are interleaved (the order rotates per problem) so all see the same machine load.
Runs are sequential: latencies are one run's cost, not a throughput under concurrency.

    python -m rewards.sandbox_bench --limit 50 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rewards.code import HumanEvalProblem, load_humaneval
from rewards.sandbox import resolve_mode, run_python

DEFAULT_HUMANEVAL = Path(__file__).resolve().parents[2] / "shared/data/humaneval/HumanEval.jsonl.gz"


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one way of running the programs."""

    runs: int
    failures: int  # runs that did not exit 0
    runs_per_s: float  # runs / total seconds, sequential
    p50_ms: float
    p99_ms: float


def _stats(latencies: list[float], failures: int) -> LatencyStats:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return LatencyStats(len(latencies), failures, len(latencies) / sum(latencies),
                        1000 * statistics.median(ordered), 1000 * p99)


def program_of(problem: HumanEvalProblem) -> str:
    """The canonical solution and its test as one script, as HumanEval runs it."""
    return (f"{problem.prompt}{problem.canonical_solution}\n\n{problem.test}\n\n"
            f"check({problem.entry_point})\n")


def _time_sandboxed(program: str, timeout_s: float) -> tuple[float, bool]:
    start = time.perf_counter()
    ok = run_python(program, timeout_s=timeout_s).status == "ok"
    return time.perf_counter() - start, ok


def _time_command(argv: list[str], timeout_s: float) -> tuple[float, bool]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False)
    return time.perf_counter() - start, done.returncode == 0


def bench_sandbox(problems: Sequence[HumanEvalProblem], *, timeout_s: float = 30.0) -> dict:
    """Run every problem sandboxed, plain and bare, interleaved; return JSON-ready figures."""
    if not problems:
        raise ValueError("bench_sandbox needs at least one problem")
    kinds = ("sandboxed", "plain", "bare")
    timings: dict[str, list[float]] = {kind: [] for kind in kinds}
    failures = dict.fromkeys(kinds, 0)
    with tempfile.TemporaryDirectory(prefix="r1kit-bench-") as tmp:
        for i, problem in enumerate(problems):
            path = Path(tmp) / f"problem_{i}.py"
            path.write_text(program_of(problem))
            for kind in kinds[i % 3:] + kinds[: i % 3]:
                if kind == "sandboxed":
                    seconds, ok = _time_sandboxed(path.read_text(), timeout_s)
                elif kind == "plain":
                    seconds, ok = _time_command([sys.executable, str(path)], timeout_s)
                else:
                    bare = [os.path.realpath(sys.executable), "-I", "-S", str(path)]
                    seconds, ok = _time_command(bare, timeout_s)
                timings[kind].append(seconds)
                failures[kind] += not ok
    stats = {kind: _stats(timings[kind], failures[kind]) for kind in kinds}
    return {
        "mode": resolve_mode(),
        "problems": len(problems),
        **{kind: asdict(stat) for kind, stat in stats.items()},
        "p50_ratio_vs_plain": stats["sandboxed"].p50_ms / stats["plain"].p50_ms,
        "p50_ratio_vs_bare": stats["sandboxed"].p50_ms / stats["bare"].p50_ms,
        "throughput_ratio_vs_plain": stats["plain"].runs_per_s / stats["sandboxed"].runs_per_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rewards.sandbox_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--humaneval", type=Path, default=DEFAULT_HUMANEVAL)
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not args.humaneval.is_file():
        print(f"sandbox_bench: no such file: {args.humaneval}", file=sys.stderr)
        return 2
    figures = bench_sandbox(load_humaneval(args.humaneval)[: args.limit])
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
