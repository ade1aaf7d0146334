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

:func:`fetch_math_verify_suite` downloads math-verify's sdist with pip (once,
into ``~/.cache/r1kit``) and keeps its ``tests/test_*.py``;
:func:`math_verify_suite_rows` reads their ``parametrize`` tables with
:mod:`ast` (never importing them): 275 graded pairs in 0.9.0;
:func:`bench_math_verify_suite` grades them, benchmarked with
``--math-verify-suite``. Nothing of math-verify's is kept in this repository.
"""

from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

from bench.harness import parser, timed, write_result
from rewards.math import Options, grade, warm_up

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500" / "test.jsonl"
REAL_DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "math_real_outputs.jsonl"


# Warm-up pairs (one decided exactly, one that needs sympy), in no measured set.
WARM_UP_PAIRS = [
    (r"so $\boxed{\frac{3}{6}+t}$", "0.5+t"),
    (r"so $\boxed{\cos^2 t+\sin^2 t}$", "1"),
]


def _time(fn, pairs: list[tuple[str, str]], options: list[dict]) -> tuple[list[bool], float]:
    for pair in WARM_UP_PAIRS:  # not timed
        fn(*pair, {})
    return timed(lambda: [bool(fn(p, g, o)) for (p, g), o in zip(pairs, options)])


# math-verify's option names (as its tests pass them) -> rewards.math.Options fields
R1KIT_OPTIONS = {"precision": "precision", "strict": "strict",
                 "allow_set_relation_comp": "set_relation"}
MATH_VERIFY_OPTIONS = {"precision": "float_rounding", "strict": "strict",
                       "allow_set_relation_comp": "allow_set_relation_comp"}


def _r1kit(pred: str, gold: str, options: dict) -> bool:
    return grade(pred, gold, options=Options(**{R1KIT_OPTIONS[k]: v for k, v in options.items()}))


def _math_verify(pred: str, gold: str, options: dict | None = None) -> bool:
    from math_verify import parse, verify

    kwargs = {MATH_VERIFY_OPTIONS[k]: v for k, v in (options or {}).items()}
    try:  # a bare gold needs "$...$" for Math-Verify's LaTeX extraction (its documented usage)
        return bool(verify(parse(gold if "$" in gold else f"${gold}$"), parse(pred), **kwargs))
    except Exception:  # noqa: BLE001 - Math-Verify may raise on odd input; count it as "not equal"
        return False


def bench_math(pairs: list[tuple[str, str]], expected: list[bool] | None = None,
               options: list[dict] | None = None) -> dict:
    """Grade ``pairs`` with r1kit and Math-Verify; return throughput, accuracy and agreement.

    ``expected[i]`` is the right verdict for ``pairs[i]`` (default: all True,
    as for MATH-500 solution/answer pairs); ``options[i]`` the math-verify options
    (``precision``, ``strict``, ``allow_set_relation_comp``) both graders use for it, each
    mapped to its own name (:data:`R1KIT_OPTIONS`, :data:`MATH_VERIFY_OPTIONS`); default none.

    >>> r = bench_math([(r"so $\\boxed{0.5}$", r"\\frac{1}{2}"), ("7", "8")], [True, False])
    >>> r["r1kit"]["accuracy"], r["pairs"]
    (1.0, 2)
    """
    if not pairs:
        raise ValueError("no pairs to benchmark")
    expected = [True] * len(pairs) if expected is None else expected
    options = [{}] * len(pairs) if options is None else options
    warm_up()
    result: dict = {"pairs": len(pairs)}
    verdicts = {}
    for name, fn in (("r1kit", _r1kit), ("math_verify", _math_verify)):
        verdicts[name], seconds = _time(fn, pairs, options)
        right = sum(v == e for v, e in zip(verdicts[name], expected))
        result[name] = {
            "seconds": seconds,
            "pairs_per_s": len(pairs) / seconds if seconds > 0 else float("inf"),
            "accuracy": right / len(pairs),
            "correct": right,
            "false_accepts": [  # indices of pairs graded equal that are not
                i for i, (v, e) in enumerate(zip(verdicts[name], expected)) if v and not e
            ],
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


# math-verify's own test suite, fetched from its sdist at bench time (never vendored).
MATH_VERIFY_VERSION = "0.9.0"
SUITE_CACHE = Path.home() / ".cache" / "r1kit" / f"math-verify-{MATH_VERIFY_VERSION}-tests"
_SAFE_NODES = (
    ast.Expression,
    ast.Constant,
    ast.Tuple,
    ast.List,
    ast.JoinedStr,
    ast.FormattedValue,
    ast.UnaryOp,
    ast.USub,
    ast.Load,
    ast.Call,
    ast.Attribute,
    ast.Name,
)


def fetch_math_verify_suite(cache: Path = SUITE_CACHE) -> Path:
    """The ``tests/`` folder of math-verify's sdist, downloaded with pip once into ``cache``.

    Only ``tests/test_*.py`` files are taken out of the archive (by name, no links, no paths
    that leave ``cache``); they are read with :func:`math_verify_suite_rows`, never imported.
    """
    tests = cache / "tests"
    if any(tests.glob("test_*.py")):
        return tests
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"math-verify=={MATH_VERIFY_VERSION}",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--quiet",
                "-d",
                tmp,
            ],
            check=True,
            timeout=300,
        )
        (sdist,) = Path(tmp).glob("*.tar.gz")
        tests.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                wanted = len(parts) == 3 and parts[1] == "tests"
                if member.isfile() and wanted and re.fullmatch(r"test_\w+\.py", parts[2]):
                    (tests / parts[2]).write_bytes(tar.extractfile(member).read())
    return tests


def _literal(node: ast.AST) -> object:
    """A parametrize table's value: literals, and f-strings over ``math.sqrt`` (one case)."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    for n in ast.walk(node):
        if not isinstance(n, _SAFE_NODES) or isinstance(n, ast.Name) and n.id != "math":
            raise ValueError(f"not a literal: {ast.dump(n)[:80]}")
        if isinstance(n, ast.Call) and ast.unparse(n.func) != "math.sqrt":
            raise ValueError(f"not a literal: {ast.unparse(n)[:80]}")
    code = compile(ast.Expression(node), "<suite>", "eval")
    return eval(code, {"__builtins__": {}, "math": math})  # only the nodes checked above


def math_verify_suite_rows(tests: Path) -> list[dict]:
    """Every ``(gold, pred, expected)`` row of the ``pytest.mark.parametrize`` tables in
    ``tests/test_*.py``, with its test name and any option the test passes
    (``precision``, ``strict``, ``allow_set_relation_comp``); read with :mod:`ast`."""
    rows = []
    for path in sorted(tests.glob("test_*.py")):
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for dec in fn.decorator_list:
                if not (
                    isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize"
                ):
                    continue
                names = [n.strip() for n in ast.literal_eval(dec.args[0]).split(",")]
                if "gold" not in names or "pred" not in names:
                    continue
                for values in _literal(dec.args[1]):
                    row = dict(zip(names, values))
                    options = {
                        k: row[k] for k in names if k not in ("gold", "pred", "expected", "result")
                    }
                    rows.append(
                        {
                            "test": f"{path.name}::{fn.name}",
                            "gold": row["gold"],
                            "pred": row["pred"],
                            "expected": bool(row.get("expected", row.get("result"))),
                            "options": options,
                        }
                    )
    return rows


def bench_math_verify_suite(tests: Path, with_options: bool = True) -> dict:
    """:func:`bench_math` on math-verify's own rows; a gold without ``$`` is wrapped in
    ``$...$`` for both graders, as its tests write most golds. A row whose ``parametrize``
    table sets a math-verify option is graded with it by both graders (``with_options``;
    False: every row with each grader's defaults). Adds each grader's false accepts and the
    rows whose verdict depends on a math-verify option. Options a test passes in its body
    (``precision=5`` in ``test_float_precision``) are not read: those rows use defaults."""
    rows = math_verify_suite_rows(tests)
    pairs = [(r["pred"], r["gold"] if "$" in r["gold"] else f"${r['gold']}$") for r in rows]
    options = [r["options"] if with_options else {} for r in rows]
    result = bench_math(pairs, [r["expected"] for r in rows], options)
    result["option_rows"] = [
        {"index": i, "test": r["test"], "options": r["options"], "expected": r["expected"]}
        for i, r in enumerate(rows)
        if r["options"]
    ]
    return result


def _print(result: dict) -> None:
    for name in ("r1kit", "math_verify"):
        r = result[name]
        print(
            f"{name:12} {r['pairs_per_s']:10.1f} pairs/s  accuracy {r['accuracy']:.4f} "
            f"({r['correct']}/{result['pairs']}), false accepts {len(r['false_accepts'])}"
        )
    print(f"speedup {result['speedup']:.1f}x  agreement {result['agreement']:.4f}")


def main(argv: list[str] | None = None) -> int:
    """Benchmark on MATH-500: matching pairs, and with ``--negatives`` shifted (wrong) pairs too."""
    ap = parser("python -m bench.math_grader", main.__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MATH-500 test.jsonl")
    ap.add_argument("--negatives", action="store_true", help="also grade row i against answer i+1")
    ap.add_argument("--real", action="store_true", help="the hand-labelled real-output set instead")
    ap.add_argument(
        "--math-verify-suite",
        action="store_true",
        help=f"math-verify {MATH_VERIFY_VERSION}'s own test rows instead (fetched with pip)",
    )
    ap.add_argument(
        "--default-options",
        action="store_true",
        help="with --math-verify-suite: grade every row with each grader's defaults, not the "
        "options its test sets",
    )
    args = ap.parse_args(argv)
    if args.math_verify_suite:
        result = bench_math_verify_suite(fetch_math_verify_suite(), not args.default_options)
    elif args.real:
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
