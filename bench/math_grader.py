"""Side-by-side benchmark of the r1kit math grader and Math-Verify.

:func:`bench_math` grades the same (prediction, gold) pairs with
:func:`rewards.math.grade` and with ``math_verify.verify(parse(gold),
parse(pred))``, and reports throughput (pairs/s), accuracy against the
expected verdicts (all True unless given) and the agreement between the two.

Guarantees: both graders see identical pairs in the same order, one process,
one thread, and grade each pair exactly once while timed; each is warmed up
before timing on :data:`WARM_UP_PAIRS`, which are not in the measured sets
(r1kit's helper start-up and Math-Verify's lazy imports are excluded, and no
measured pair is answered from a cache filled by the warm-up). Math-Verify
runs with its own defaults (its signal-based timeout needs the main thread);
a gold without ``$`` is wrapped in ``$...$``, as its documentation does.

Does not: assert anything about speed (it is a measurement, not a test), nor
decide which grader is right where they disagree: ``disagreements`` lists them.
``python -m bench.math_grader`` runs it on MATH-500 and writes JSON.

:func:`real_output_rows` reads the hand-labelled real-output set
(``tests/data/math_real_outputs.jsonl``: completions as models and RL data
sets write them, half right, half wrong), benchmarked with ``--real``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from bench.harness import parser, timed, write_result
from rewards.math import grade, warm_up

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500" / "test.jsonl"
REAL_DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "math_real_outputs.jsonl"


# Warm-up pairs (one decided exactly, one that needs sympy), in no measured set.
WARM_UP_PAIRS = [
    (r"so $\boxed{\frac{3}{6}+t}$", "0.5+t"),
    (r"so $\boxed{\cos^2 t+\sin^2 t}$", "1"),
]


def _time(fn, pairs: list[tuple[str, str]]) -> tuple[list[bool], float]:
    for pair in WARM_UP_PAIRS:  # not timed
        fn(*pair)
    return timed(lambda: [bool(fn(pred, gold)) for pred, gold in pairs])


def _math_verify(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    try:  # a bare gold needs "$...$" for Math-Verify's LaTeX extraction (its documented usage)
        return bool(verify(parse(gold if "$" in gold else f"${gold}$"), parse(pred)))
    except Exception:  # noqa: BLE001 - Math-Verify may raise on odd input; count it as "not equal"
        return False


def bench_math(pairs: list[tuple[str, str]], expected: list[bool] | None = None) -> dict:
    """Grade ``pairs`` with r1kit and Math-Verify; return throughput, accuracy and agreement.

    ``expected[i]`` is the right verdict for ``pairs[i]`` (default: all True,
    as for MATH-500 solution/answer pairs).

    >>> r = bench_math([(r"so $\\boxed{0.5}$", r"\\frac{1}{2}"), ("7", "8")], [True, False])
    >>> r["r1kit"]["accuracy"], r["pairs"]
    (1.0, 2)
    """
    if not pairs:
        raise ValueError("no pairs to benchmark")
    expected = [True] * len(pairs) if expected is None else expected
    warm_up()
    result: dict = {"pairs": len(pairs)}
    verdicts = {}
    for name, fn in (("r1kit", grade), ("math_verify", _math_verify)):
        verdicts[name], seconds = _time(fn, pairs)
        right = sum(v == e for v, e in zip(verdicts[name], expected))
        result[name] = {
            "seconds": seconds,
            "pairs_per_s": len(pairs) / seconds if seconds > 0 else float("inf"),
            "accuracy": right / len(pairs),
        }
    both = list(zip(verdicts["r1kit"], verdicts["math_verify"]))
    result["agreement"] = sum(a == b for a, b in both) / len(pairs)
    result["speedup"] = result["r1kit"]["pairs_per_s"] / result["math_verify"]["pairs_per_s"]
    result["disagreements"] = [
        {
            "index": i,
            "pred_tail": pairs[i][0][-80:],
            "gold": pairs[i][1],
            "r1kit": a,
            "math_verify": b,
        }
        for i, (a, b) in enumerate(both)
        if a != b
    ]
    return result


def math500_pairs(path: Path = DEFAULT_DATA, shift: int = 0) -> list[tuple[str, str]]:
    """MATH-500 (solution, answer) pairs; ``shift`` pairs row i with the answer of row i+shift."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [(r["solution"], rows[(i + shift) % len(rows)]["answer"]) for i, r in enumerate(rows)]


def real_output_rows(path: Path = REAL_DATA) -> list[dict]:
    """The hand-labelled real-output rows: ``{"pred", "gold", "label", "class"}`` each."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def bench_real(path: Path = REAL_DATA) -> dict:
    """:func:`bench_math` on the real-output set, against its hand labels, with per-class counts."""
    rows = real_output_rows(path)
    result = bench_math([(r["pred"], r["gold"]) for r in rows], [r["label"] for r in rows])
    result["classes"] = dict(sorted(Counter(r["class"] for r in rows).items()))
    return result


def _print(result: dict) -> None:
    for name in ("r1kit", "math_verify"):
        r = result[name]
        print(f"{name:12} {r['pairs_per_s']:10.1f} pairs/s  accuracy {r['accuracy']:.4f}")
    print(f"speedup {result['speedup']:.1f}x  agreement {result['agreement']:.4f}")


def main(argv: list[str] | None = None) -> int:
    """Benchmark on MATH-500: matching pairs, and with ``--negatives`` shifted (wrong) pairs too."""
    ap = parser("python -m bench.math_grader", main.__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MATH-500 test.jsonl")
    ap.add_argument("--negatives", action="store_true", help="also grade row i against answer i+1")
    ap.add_argument("--real", action="store_true", help="the hand-labelled real-output set instead")
    args = ap.parse_args(argv)
    if args.real:
        result = bench_real()
    else:
        pairs = math500_pairs(args.data)
        expected = [True] * len(pairs)
        if args.negatives:
            negatives = math500_pairs(args.data, shift=1)
            pairs += negatives
            expected += [False] * len(negatives)  # three rows share an answer with the next
        result = bench_math(pairs, expected)
    _print(result)
    if args.out:
        write_result(args.out, result, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
