"""``r1kit bench rewards``: math grading, sandbox and scorer throughput in one run.

Three parts, each a measurement, never an assertion:

1. Math grading, r1kit against Math-Verify (``bench.math_grader.bench_math``): pairs/s,
   accuracy, false accepts, agreement, on four sets, each pair graded once: MATH-500
   (solution, answer) pairs (every pair should grade as equal); the negatives, each solution against the
   next row's answer (every pair should grade as unequal; rows 22, 186 and 403 share
   their answer with the next, so 0.994 is the best score there); and the hand-labelled
   real-output set (``bench.math_grader.bench_real``: Minerva endings, several boxes,
   relations, ..., half right and half wrong), always whole (``--limit`` does not cut
   it); and math-verify's own test suite (``bench.math_grader.bench_math_verify_suite``:
   the 275 graded pairs of its sdist's ``tests/``, fetched with pip into ``~/.cache/r1kit``
   at bench time, never kept in this repository; skipped with ``--math-verify-suite off``
   or when the fetch fails; a row whose table sets one of math-verify's options is graded
   with it by both graders, r1kit through ``rewards.math.Options``). MATH-500 pairs are
   graded in slices so progress can be shown; each slice warms both graders before timing, as ``bench_math`` does. "all
   pairs" pools the sets: total pairs over total seconds, per grader.
2. The code sandbox on HumanEval canonical solutions and their tests
   (``bench.sandbox.bench_sandbox``): runs/s and p50/p99 latency, sandboxed and as
   plain unsandboxed subprocesses.
3. The reward scorer (``rewards.scorer.Scorer``) on distinct synthetic batches built from
   MATH-500 (half right, half wrong boxed answers after a think block) with the accuracy,
   format, tag and soft-overlong rewards: start-up time, samples/s through the worker pool,
   and samples/s of the same rewards run in-process (``rewards.registry.combine``), with a
   check that both give the same scores.

It prints a table, writes every figure as JSON (``--out``), and reports the targets:
r1kit at least 5x Math-Verify's pairs/s on all pairs, negatives included, at equal or
better accuracy on each set, and sandboxed runs at most 2x the time of plain subprocess
runs. Progress goes to stderr (tqdm).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from bench.harness import Stopwatch, parser, table, timed, write_result
from bench.math_grader import (
    MATH_VERIFY_VERSION,
    REAL_DATA,
    bench_math,
    bench_math_verify_suite,
    bench_real,
    fetch_math_verify_suite,
)
from bench.sandbox import bench_sandbox
from rewards.code import load_humaneval
from rewards.registry import RewardSpec, build, combine
from rewards.scorer import Scorer, ScorerConfig

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MATH_SETS = [  # (report key, table label)
    ("math", "math MATH-500"),
    ("math_negatives", "math negatives"),
    ("math_real", "math real"),
    ("math_mv_suite", "math math-verify suite"),
]
SCORER_SPECS = [
    RewardSpec("accuracy", 1.0),
    RewardSpec("format", 0.5),
    RewardSpec("tag_format", 0.25),
    RewardSpec("soft_overlong", 1.0, {"max_len": 1024, "cache_len": 256}),
]


def _read_jsonl(path: Path, limit: int | None) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit]


def bench_math_sliced(
    pairs: list[tuple[str, str]],
    expected: list[bool] | None = None,
    slice_size: int = 50,
    desc: str = "math grading",
) -> dict:
    """``bench_math`` over slices of ``pairs`` with a progress bar, figures pooled."""
    expected = [True] * len(pairs) if expected is None else expected
    parts = [
        bench_math(pairs[i : i + slice_size], expected[i : i + slice_size])
        for i in tqdm(range(0, len(pairs), slice_size), desc=desc, unit="slice", file=sys.stderr)
    ]
    out = pool_math(parts)
    out["disagreements"] = [
        {**d, "index": d["index"] + k * slice_size}
        for k, p in enumerate(parts)
        for d in p["disagreements"]
    ]
    return out


def pool_math(parts: list[dict]) -> dict:
    """Figures of several ``bench_math`` results as one: total pairs over total seconds."""
    total = sum(p["pairs"] for p in parts)
    out: dict = {"pairs": total}
    for name in ("r1kit", "math_verify"):
        seconds = sum(p[name]["seconds"] for p in parts)
        right = sum(p[name]["accuracy"] * p["pairs"] for p in parts)
        out[name] = {
            "seconds": seconds,
            "pairs_per_s": total / seconds,
            "accuracy": right / total,
            "false_accept_count": sum(
                p[name].get("false_accept_count", len(p[name].get("false_accepts", [])))
                for p in parts
            ),
        }
    out["agreement"] = sum(p["agreement"] * p["pairs"] for p in parts) / total
    out["speedup"] = out["r1kit"]["pairs_per_s"] / out["math_verify"]["pairs_per_s"]
    return out


def synthetic_batch(
    rows: list[dict], size: int, offset: int = 0
) -> tuple[list[str], dict[str, list]]:
    """``size`` completions from MATH-500 rows ``offset``, ``offset + 1``, ... (cycling):
    even ones box the right answer, odd ones a wrong one; with their columns."""
    completions, answers, lengths = [], [], []
    for i in range(size):
        row = rows[(offset + i) % len(rows)]
        boxed = row["answer"] if i % 2 == 0 else f"{row['answer']}+1"
        text = f"{row['solution']}</think>\nThe answer is $\\boxed{{{boxed}}}$."
        completions.append(text)
        answers.append(row["answer"])
        lengths.append(len(text) // 4)
    return completions, {"answer": answers, "completion_lengths": lengths}


def bench_scorer(rows: list[dict], batch_size: int, batches: int, workers: int) -> dict:
    """Scorer start-up and throughput on distinct synthetic batches, against ``combine``
    in-process on the same batches. The first batch of each also pays the math grader's
    cold start (its parser caches fill as it parses), so warm rates leave it out."""
    data = [synthetic_batch(rows, batch_size, k * batch_size) for k in range(batches)]
    watch = Stopwatch()
    with Scorer(SCORER_SPECS, ScorerConfig(workers=workers)) as scorer:
        scorer.warmup()
        startup_s = watch.seconds
        results = [
            scorer.score(completions, **columns)
            for completions, columns in tqdm(data, desc="scorer", unit="batch", file=sys.stderr)
        ]
    rewards = build(SCORER_SPECS)
    inline = [
        timed(combine, rewards, completions, **columns)
        for completions, columns in tqdm(data, desc="in-process", unit="batch", file=sys.stderr)
    ]
    pooled = [r.seconds for r in results]
    inline_s = [seconds for _, seconds in inline]
    warm = slice(1, None) if batches > 1 else slice(None)
    samples = batch_size * batches
    return {
        "batch_size": batch_size,
        "batches": batches,
        "workers": workers,
        "rewards": [s.name for s in SCORER_SPECS],
        "startup_s": startup_s,
        "seconds_per_batch": pooled,
        "inprocess_seconds_per_batch": inline_s,
        "samples_per_s": samples / sum(pooled),
        "warm_samples_per_s": batch_size * len(pooled[warm]) / sum(pooled[warm]),
        "inprocess_samples_per_s": samples / sum(inline_s),
        "inprocess_warm_samples_per_s": batch_size * len(inline_s[warm]) / sum(inline_s[warm]),
        "matches_inprocess": all(
            r.per_reward == c.per_reward for r, (c, _) in zip(results, inline)
        ),
        "failures": sum(c.total for r in results for c in r.failures.values()),
        "accuracy_reward_mean": sum(sum(r.per_reward["accuracy"]) for r in results) / samples,
    }


def targets(math_sets: dict[str, dict], sandbox_figures: dict) -> dict:
    """The stated targets, met or not; ``math_sets`` maps set name to ``bench_math`` figures."""
    every = pool_math(list(math_sets.values()))
    as_accurate = all(
        m["r1kit"]["accuracy"] >= m["math_verify"]["accuracy"] for m in math_sets.values()
    )
    # Sequential runs: total sandboxed time over total plain time is the runs/s ratio.
    time_ratio = sandbox_figures["plain"]["runs_per_s"] / sandbox_figures["sandboxed"]["runs_per_s"]
    return {
        "math_speedup": every["speedup"],
        "math_speedup_ok": every["speedup"] >= 5.0 and as_accurate,
        "math_accuracy_ok": as_accurate,
        "sandbox_time_ratio": time_ratio,
        "sandbox_time_ratio_ok": time_ratio <= 2.0,
    }


def _table(report: dict) -> str:
    s, c = report["sandbox"], report["scorer"]
    rows = []
    for key, part in [*MATH_SETS, ("math_all", "math all pairs")]:
        m = report.get(key)
        if m is None:
            continue
        for name in ("r1kit", "math_verify"):
            wrong = m[name].get("false_accept_count", len(m[name].get("false_accepts", [])))
            rows.append(
                (
                    part,
                    f"{name} pairs/s / accuracy / false accepts",
                    f"{m[name]['pairs_per_s']:.1f} / {m[name]['accuracy']:.4f} / {wrong}",
                )
            )
        target = " (target >= 5x)" if key == "math_all" else ""
        rows.append(
            (part, f"speedup{target} / agreement", f"{m['speedup']:.1f}x / {m['agreement']:.4f}")
        )
    for mode, figures in s.items():  # sandboxed, plain, and any other way it timed
        if isinstance(figures, dict) and "runs_per_s" in figures:
            rows += [
                ("sandbox", f"{mode} runs/s", f"{figures['runs_per_s']:.1f}"),
                (
                    "sandbox",
                    f"{mode} p50 / p99 ms",
                    f"{figures.get('p50_ms', math.nan):.0f} / {figures.get('p99_ms', math.nan):.0f}",
                ),
            ]
    rows += [
        (
            "sandbox",
            f"time vs plain, {s.get('mode')} (target <= 2x)",
            f"{report['targets']['sandbox_time_ratio']:.2f}x",
        ),
        ("scorer", "start-up s", f"{c['startup_s']:.2f}"),
        (
            "scorer",
            f"samples/s, {c['workers']} workers (warm)",
            f"{c['samples_per_s']:.1f} ({c['warm_samples_per_s']:.1f})",
        ),
        (
            "scorer",
            "samples/s in-process (warm)",
            f"{c['inprocess_samples_per_s']:.1f} ({c['inprocess_warm_samples_per_s']:.1f})",
        ),
        ("scorer", "same scores as in-process", str(c["matches_inprocess"])),
        ("scorer", "failures", str(c["failures"])),
    ]
    return table(("part", "figure", "value"), rows, align="<<<", sep="  ")


def main(argv: list[str] | None = None) -> int:
    """Run the three reward benchmarks, print a table, write JSON."""
    ap = parser("r1kit bench rewards", __doc__, full_doc=True, out="bench_rewards.json")
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA,
        help=f"evaluation data (default: {DEFAULT_DATA})",
    )
    ap.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only the first N MATH-500 pairs and HumanEval problems",
    )
    ap.add_argument(
        "--real-data",
        type=Path,
        default=REAL_DATA,
        help=f"hand-labelled real-output pairs, skipped if absent (default: {REAL_DATA})",
    )
    ap.add_argument("--batch-size", type=int, default=256, help="scorer batch size")
    ap.add_argument("--batches", type=int, default=3, help="scorer batches to time")
    ap.add_argument("--workers", type=int, default=2, help="scorer worker processes")
    ap.add_argument(
        "--math-verify-suite",
        choices=("fetch", "off"),
        default="fetch",
        help=f"grade math-verify {MATH_VERIFY_VERSION}'s own test rows (fetched with pip once)",
    )
    args = ap.parse_args(argv)

    math_rows = _read_jsonl(args.data_dir / "math500" / "test.jsonl", args.limit)
    problems = load_humaneval(args.data_dir / "humaneval" / "HumanEval.jsonl.gz")[: args.limit]
    total = Stopwatch()
    report = {"math": bench_math_sliced([(r["solution"], r["answer"]) for r in math_rows])}
    shifted = [
        (r["solution"], math_rows[(i + 1) % len(math_rows)]["answer"])
        for i, r in enumerate(math_rows)
    ]
    report["math_negatives"] = bench_math_sliced(
        shifted, [False] * len(shifted), desc="math negatives"
    )
    if args.real_data.is_file():
        print(f"math: real-output set {args.real_data} ...", file=sys.stderr)
        report["math_real"] = bench_real(args.real_data)
    if args.math_verify_suite == "fetch":
        try:
            suite = fetch_math_verify_suite()
        except (OSError, subprocess.SubprocessError, ValueError) as err:
            print(f"math: math-verify suite skipped, fetch failed: {err}", file=sys.stderr)
        else:
            print(f"math: math-verify's own suite {suite} ...", file=sys.stderr)
            report["math_mv_suite"] = bench_math_verify_suite(suite)
    print(f"sandbox: {len(problems)} HumanEval programs, sandboxed and plain ...", file=sys.stderr)
    report["sandbox"] = bench_sandbox(problems)
    report["scorer"] = bench_scorer(math_rows, args.batch_size, args.batches, args.workers)
    math_sets = {key: report[key] for key, _ in MATH_SETS if key in report}
    report["math_all"] = pool_math(list(math_sets.values()))
    report["targets"] = targets(math_sets, report["sandbox"])
    report["config"] = {
        "data_dir": str(args.data_dir),
        "limit": args.limit,
        "math_pairs": len(math_rows),
        "humaneval_problems": len(problems),
        "seconds": total.seconds,
    }
    print(_table(report))
    t = report["targets"]
    print(
        f"targets: math speedup >= 5x on all pairs at >= accuracy on each set: "
        f"{'met' if t['math_speedup_ok'] else 'MISSED'}; "
        f"sandbox <= 2x plain: {'met' if t['sandbox_time_ratio_ok'] else 'MISSED'}"
    )
    write_result(args.out, report, indent=2, allow_nan=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
