"""Benchmark: sandboxed vs plain runs of the HumanEval canonical solutions, side by side.

Each problem's program (prompt + canonical solution + test + ``check(entry_point)``) runs
under ``run_python`` ("sandboxed"), as a plain ``subprocess.run([sys.executable, file])``
("plain": the caller's interpreter, with its site-packages and ``.pth`` files), and as
``python -I -S file`` with the interpreter the sandbox uses ("bare": the same stdlib-only
start-up as inside the sandbox, so sandboxed/bare is the cost of the isolation itself).
The three are interleaved (the order rotates per problem) so all see the same machine load.
Runs are sequential: latencies are one run's cost, not a throughput under concurrency.

    python -m bench.sandbox --limit 50 --out bench.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.harness import interleaved, parser, percentile, timed, write_result
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
    return LatencyStats(len(latencies), failures, len(latencies) / sum(latencies),
                        1000 * statistics.median(latencies), 1000 * percentile(latencies, 99))


def program_of(problem: HumanEvalProblem) -> str:
    """The canonical solution and its test as one script, as HumanEval runs it."""
    return (f"{problem.prompt}{problem.canonical_solution}\n\n{problem.test}\n\n"
            f"check({problem.entry_point})\n")


def _sandboxed(program: str, path: Path, timeout_s: float) -> bool:
    return run_python(program, timeout_s=timeout_s).status == "ok"


def _command(*argv: str) -> Callable[[str, Path, float], bool]:
    def run(program: str, path: Path, timeout_s: float) -> bool:
        done = subprocess.run([*argv, str(path)], capture_output=True, timeout=timeout_s,
                              check=False)
        return done.returncode == 0

    return run


RUNS = {"sandboxed": _sandboxed,
        "plain": _command(sys.executable),
        "bare": _command(os.path.realpath(sys.executable), "-I", "-S")}
"""The three ways of running a program (its text, and the file that holds it):
``RUNS[kind](program, path, timeout_s)`` is whether it exited 0."""


def bench_sandbox(problems: Sequence[HumanEvalProblem], *, timeout_s: float = 30.0) -> dict:
    """Run every problem sandboxed, plain and bare, interleaved; return JSON-ready figures."""
    if not problems:
        raise ValueError("bench_sandbox needs at least one problem")
    kinds = tuple(RUNS)
    timings: dict[str, list[float]] = {kind: [] for kind in kinds}
    failures = dict.fromkeys(kinds, 0)
    with tempfile.TemporaryDirectory(prefix="r1kit-bench-") as tmp:
        files = [(program_of(problem), Path(tmp) / f"problem_{i}.py")
                 for i, problem in enumerate(problems)]
        for program, path in files:
            path.write_text(program)
        for (program, path), kind in interleaved(files, kinds):
            ok, seconds = timed(RUNS[kind], program, path, timeout_s)
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
    ap = parser("python -m bench.sandbox", __doc__, full_doc=True)
    ap.add_argument("--humaneval", type=Path, default=DEFAULT_HUMANEVAL)
    ap.add_argument("--limit", type=int, default=None, help="first N problems only")
    args = ap.parse_args(argv)
    if not args.humaneval.is_file():
        print(f"sandbox_bench: no such file: {args.humaneval}", file=sys.stderr)
        return 2
    figures = bench_sandbox(load_humaneval(args.humaneval)[: args.limit])
    print(json.dumps(figures, indent=2))
    if args.out:
        write_result(args.out, figures, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
