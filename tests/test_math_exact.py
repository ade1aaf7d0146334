r"""The in-process exact stage (rewards/math/exact.py): hand-worked values, attacks, bounds,
and a differential test against the sympy helper it stands in for.

Every equal case has an unequal twin, so a stage that always says True (or False) fails.
"""

import json
import random
import time
from pathlib import Path

import pytest

from rewards.math import grade_one, warm_up
from rewards.math.equiv import answers_equal
from rewards.math.exact import exact_equal, exact_relation, value
from rewards.math.extract import extract_answer
from rewards.math.normalize import normalize, refuse_reason
from rewards.math.structure import Leaf, Rel, Seq, parse_structure

MATH500 = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500" / "test.jsonl"
REAL = Path(__file__).parent / "data" / "math_real_outputs.jsonl"

# (pred, gold, stage, an unequal twin of pred)
EQUAL = [
    (r"2\sqrt{5}", r"\sqrt{20}", "numeric", r"5\sqrt{2}"),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", "numeric", r"\frac{\sqrt{3}}{2}"),
    (r"\sqrt{2}\sqrt{3}", r"\sqrt{6}", "numeric", r"\sqrt{5}"),
    (r"\sqrt{\frac{1}{2}}", r"\frac{\sqrt{2}}{2}", "numeric", r"\frac{1}{2}"),
    (r"(\sqrt{2}+1)^{2}", r"3+2\sqrt{2}", "numeric", r"3+\sqrt{2}"),
    (r"\frac{\pi}{2}", r"0.5\pi", "numeric", r"\frac{\pi}{3}"),
    (r"\pi r^2", r"r^{2}\pi", "symbolic", r"2\pi r"),
    ("x^2+2x+1", "(x+1)^2", "symbolic", "x^2+1"),
    ("a^2-b^2", "(a-b)(a+b)", "symbolic", "a^2+b^2"),
    (r"\frac{x^2}{x}", "x", "symbolic", "x^2"),
    ("3t-4", "-4+3t", "symbolic", "3t+4"),
    ("6!", "720", "rational", "5!"),
    (r"\frac{8!}{6!}", "56", "rational", r"\frac{8!}{5!}"),
    (r"\binom{6}{3}", "20", "rational", r"\binom{6}{2}"),
    (r"\log_{3}27", "3", "rational", r"\log_{3}9"),
    (r"\log_{4}8", r"\frac{3}{2}", "rational", r"\log_{4}16"),
    (r"\sqrt[3]{27}", "3", "rational", r"\sqrt[3]{64}"),
    ("10^6", "1000000", "rational", "10^5"),
    ("2^{-3}", "0.125", "rational", "2^{-2}"),
    ("-(2)", "-2", "rational", "2"),
    (r"137\frac{1}{2}", "137.5", "rational", r"137\frac{1}{3}"),  # a mixed number, as there
    (r"x2\frac{1}{2}", r"\frac{5x}{2}", "symbolic", r"x2\frac{1}{3}"),
    (r"\frac4{4}", "1", "rational", r"\frac4{5}"),  # brace-less first argument
    ("A", "a", "symbolic", "b"),  # latex2sympy folds letters to lower case
]


@pytest.mark.parametrize(("pred", "gold", "stage", "twin"), EQUAL)
def test_equal_and_twin(pred, gold, stage, twin):
    a, b = normalize(pred), normalize(gold)
    assert exact_equal(a, b) == (True, stage)
    assert exact_equal(normalize(twin), b) == (False, stage)


@pytest.mark.parametrize(
    ("op", "sides", "equal"),
    [
        ("=", ("y", "2x+1", "2x-y+1", "0"), True),
        ("=", ("y", "2x+1", "2x-y-1", "0"), False),
        ("=", ("b", "9", "a", "2"), False),  # a=2, b=9 is matched name by name, not crosswise
        ("<=", ("0", "2x-6", "3", "x"), True),  # 0 <= 2x-6 is 3 <= x (factor 2 > 0)
        ("<=", ("0", "6-2x", "3", "x"), False),  # factor -2: the direction flips
        ("<", ("x", "3", "-x", "-3"), False),
        ("!=", ("x", "-2", "-x", "2"), True),  # != holds up to any nonzero factor
        ("<=", (r"-\frac{1}{2}", "k", "-0.5", "k"), True),
    ],
)
def test_relations(op, sides, equal):
    assert exact_relation(op, *sides) == (equal, "symbolic")


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("1.4142135623730951", r"\sqrt{2}"),  # 1e-17 away: the helper's tolerance says equal
        ("1.41421356237309504880168872420969807856967187537694", r"\sqrt{2}"),
        ("3.14159265358979323846264338327950288419716939937510", r"\pi"),
        (r"\frac{355}{113}", r"\pi"),
        (r"\sqrt{2}+10^{-40}", r"\sqrt{2}"),
        (r"10^{20}\sqrt{2}+1", r"10^{20}\sqrt{2}"),  # relatively 1e-20 apart
        (r"\frac{\pi}{2}+10^{-30}", r"\frac{\pi}{2}"),
        ("x+10^{-30}", "x"),
    ],
)
def test_numerically_close_is_not_equal(pred, gold):
    """An answer a hair away from the gold is wrong: the exact stage has no tolerance."""
    assert exact_equal(normalize(pred), normalize(gold)) == (False, exact_equal(gold, gold)[1])
    assert grade_one(rf"\boxed{{{pred}}}", gold).correct is False


@pytest.mark.parametrize(
    "text",
    [
        "10^{10^{10}}",  # chained power: outside, never evaluated
        "10^10^10",
        "2^{10000}",  # past MAX_BITS
        "(a+b+c)^{99}",  # past MAX_TERMS / MAX_WORK
        "(1.23456789a+9.87654321b)^{64}",
        "1000!",  # past MAX_FACTORIAL
        r"\binom{100000}{50000}",
        r"\sqrt{" + "9" * 40 + "}",  # past MAX_RADICAND
        r"\sqrt[3]{" + "7" * 200 + "}",
        "x^{x^{x}}",
        "3!^{1000}",
        r"\log_{2}{2^{100000}}",
        "(" * 140 + "x" + ")" * 140,
        "1" * 301,
    ],
)
def test_attacks_are_outside_or_cheap(text):
    start = time.process_time()
    value(text)
    exact_equal(text, "1")
    assert time.process_time() - start < 0.1


@pytest.mark.parametrize(
    "text",
    [
        "x(3)",  # a function call for latex2sympy
        "x^{2}(3)",
        r"\pi(3)",
        r"2\frac{1}{2}x",  # 2 * 1/2 * x there, not a mixed number
        "2(3)",  # 5 there
        "(2)(3)",
        r"2\binom{4}{2}",
        "2E+0",  # a float literal there
        "1e5",
        "x_1",
        "a/b",
        "x^23",  # brace-less superscript of two characters
        "2^3^2",
        "3!!",
        "I",  # the imaginary unit
        r"\sin x",
        r"\frac{1}{1+\sqrt{2}}",  # division by a sum
        r"\sqrt{x}",
        r"\sqrt{-4}",
        "0^{0}",
        r"\frac{1}{0}",
        r"\sqrt[3]{9}",
        "é",
        r"\log_{2}8x",
        "",
    ],
)
def test_outside_the_subset(text):
    """What latex2sympy reads its own way, or what is not exact here, is left to sympy."""
    assert value(text) is None


def test_pi_and_e_together_are_not_decided():
    assert exact_equal(r"\pi", "e") is None  # no proof that they are unrelated
    assert exact_equal(r"\pi+e", r"e+\pi") == (True, "numeric")
    assert exact_equal("e^{2}", "ee") == (True, "numeric")
    assert exact_equal("e", "E") == (False, "symbolic")  # E is the letter e for latex2sympy


def test_irrational_root_against_a_rational():
    assert exact_equal(r"\sqrt[3]{9}", "3") == (False, "numeric")
    assert exact_equal("2.0800838230519", r"\sqrt[3]{9}") == (False, "numeric")  # 1e-14 away
    assert exact_equal(r"\sqrt[3]{27}", "3") == (True, "rational")
    assert exact_equal(r"\sqrt[4]{4}", r"\sqrt{2}") is None  # equal: left to sympy
    assert grade_one(r"\boxed{\sqrt[3]{9}}", "3").correct is False


def test_infinity():
    assert exact_equal(r"\infty", "5") == (False, "numeric")
    assert exact_equal(r"-\infty", r"\infty") == (False, "numeric")
    assert exact_equal(r"-\infty", r"-\infty") == (True, "numeric")


def test_graded_in_process_without_the_helper(monkeypatch):
    """The pairs the real-output profile spent its time on no longer reach the helper."""
    from rewards.math import equiv

    def no_helper(requests, timeout_s):
        raise AssertionError(f"helper called for {requests}")

    monkeypatch.setattr(equiv, "run_bounded", no_helper)
    assert answers_equal(r"2\sqrt{5}", r"\sqrt{20}") == (True, "numeric")
    assert answers_equal("b = 9, a = 2", "a=2, b=9")[0] is True
    assert answers_equal("a = 9, b = 2", "a=2, b=9")[0] is False
    assert answers_equal(r"\log_3 27", "3") == (True, "rational")
    assert answers_equal("6-5i", "-50") == (False, "symbolic")


def _leaves(node, out):
    if isinstance(node, Seq):
        for item in node.items:
            _leaves(item, out)
    else:
        out.append(node)


def _corpus() -> tuple[list[str], list[tuple]]:
    """Every leaf of every MATH-500 answer and solution box and of the real-output set."""
    texts = []
    if MATH500.is_file():
        for line in MATH500.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [row["answer"], extract_answer(row["solution"]) or ""]
    for line in REAL.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts += [row["gold"], extract_answer(row["pred"]) or ""]
    leaves: list = []
    for text in texts:
        _leaves(parse_structure(normalize(text)), leaves)
    exprs = sorted({x.text for x in leaves if isinstance(x, Leaf) and not refuse_reason(x.text)})
    rels = sorted({(x.op, x.lhs, x.rhs) for x in leaves if isinstance(x, Rel)})
    return exprs, rels


def _random_expr(rng: random.Random, depth: int = 0) -> str:
    if depth > 2 or rng.random() < 0.35:
        return rng.choice(
            ["2", "3", "0", "12", "0.5", "x", "y", "A", "e", "E", "i", r"\pi", r"\sqrt{2}"]
            + [r"\sqrt{8}", r"\sqrt{\frac{1}{2}}", "5!", r"\binom{5}{2}", r"\log_{4}8", "52_8"]
            + [r"2\frac{1}{2}", r"\frac{3}{4}", r"\infty"]
        )
    a, b = _random_expr(rng, depth + 1), _random_expr(rng, depth + 1)
    return rng.choice(
        [f"{a}+{b}", f"{a}-{b}", f"{a}{b}", f"{a}\\cdot{b}", f"({a})({b})", f"\\frac{{{a}}}{{{b}}}"]
        + [
            f"({a})^{{2}}",
            f"{{{a}}}^{{-1}}",
            f"\\sqrt{{{a}}}",
            f"-{a}",
            f"({a})^{{\\frac{{1}}{{2}}}}",
        ]
        + [f"2{a}", f"{a}x", f"({a}+{b})({a}-{b})"]
    )


@pytest.mark.slow
def test_agrees_with_the_sympy_helper():
    """Wherever the exact stage decides, the helper it replaces (run here without a bound)
    decides the same: leaf pairs from MATH-500 and the real-output set, each against sampled
    others and against rewritten forms of itself, plus random expressions and relations. The
    one allowed difference: the helper's numeric stage calls numbers within 1e-10 of each
    other equal (``25!\\pi`` and ``25!\\pi+1``); the exact stage, rightly, does not."""
    from rewards.math.symbolic import compare

    warm_up()
    rng = random.Random(8)
    exprs, rels = _corpus()
    pairs = [(a, b) for a in exprs for b in rng.sample(exprs, 2)]
    pairs += [(a, f"2({a})-({a})") for a in exprs] + [(a, f"({a})+1") for a in exprs]
    for _ in range(150):
        a = _random_expr(rng)
        pairs += [(a, f"1\\cdot({a})+0"), (a, _random_expr(rng))]
    decided = 0
    for a, b in pairs:
        mine = exact_equal(a, b)
        if mine is not None:
            decided += 1
            theirs = compare(["expr", a, b])
            tolerance = mine == (False, "numeric") and theirs == (True, "numeric")
            assert mine[0] == theirs[0] or tolerance, (a, b, mine, theirs)
    quads = [(op, l1, r1, l2, r2) for op, l1, r1 in rels for op2, l2, r2 in rels if op == op2]
    quads += [(op, l1, r1, f"2({l1})", f"2({r1})") for op, l1, r1 in rels]
    quads += [(op, l1, r1, f"-({l1})", f"-({r1})") for op, l1, r1 in rels]
    for quad in quads:
        mine = exact_relation(*quad)
        if mine is not None:
            decided += 1
            assert mine[0] == compare(["rel", *quad])[0], (quad, mine)
    assert decided > 500  # the comparison covered real ground
