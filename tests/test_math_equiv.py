"""Equivalence stages, hand-worked: every positive case has a negative twin.

A grader that always says True (or always False) fails this file.
"""

import time

import pytest

from rewards.math import Verdict, grade, grade_batch, grade_one, warm_up
from rewards.math.bounded import run_bounded

# (pred, gold, stage that must decide, the twin that must be unequal)
CASES = [
    ("0.5", r"\frac{1}{2}", "rational", "0.51"),  # verl's DAPO grader says no
    ("1/2", "0.5", "rational", "1/3"),
    (
        r"\frac{1}{2^{99}}",
        r"\frac{1}{2^{99}}",
        "string",
        r"\frac{1}{2^{98}}",
    ),  # Math-Verify says yes
    (r"\frac{1}{2^{99}}", "2^{-99}", "rational", "2^{-98}"),
    ("2^{100}", "1267650600228229401496703205376", "rational", "1267650600228229401496703205377"),
    (r"\dfrac{3}{4}", r"\tfrac34", "string", r"\tfrac43"),
    (r"2\sqrt{2}", r"\sqrt{8}", "numeric", r"\sqrt{6}"),
    (r"\frac{\sqrt{3}}{2}", r"\sin\frac{\pi}{3}", "numeric", "0.8660254"),
    (r"\pi \cdot 10^{-30}", r"\frac{\pi}{10^{30}}", "numeric", r"\frac{\pi}{10^{31}}"),
    ("(x+1)^2", "x^2+2x+1", "symbolic", "x^2+x+1"),
    (r"\sin^2 x+\cos^2 x", "1", "symbolic", "2"),
    ("y = 2x+1", "2x - y + 1 = 0", "symbolic", "2x - y - 1 = 0"),
    ("x > 3", "3 < x", "string", "x < 3"),
    ("x \\geq 2", "2 \\leq x", "string", "x > 2"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", "string", r"(\frac{\pi}{2}, 3)"),
    ("(1.5, 2)", r"(\frac{3}{2}, 2)", "rational", r"(\frac{3}{2}, 3)"),
    ("[1, 2)", "[1,2)", "string", "[1,2]"),
    ("(1,2)", "(1, 2)", "string", "(1,2]"),
    (
        r"(-\infty,0)\cup(1,\infty)",
        r"(1,\infty)\cup(-\infty,0)",
        "string",
        r"(1,\infty)\cup(-\infty,1)",
    ),
    (r"\{3,1,2\}", r"\{1,2,3\}", "string", r"\{1,2,4\}"),
    (r"\{0.5, 2\}", r"\{2, \frac12\}", "rational", r"\{2, \frac13\}"),
    ("3, 2", "2, 3", "string", "3, 3"),
    ("x=2, x=3", "2, 3", "string", "x=2"),
    (r"1\pm\sqrt{2}", r"1+\sqrt{2}, 1-\sqrt{2}", "numeric", r"1+\sqrt{2}, 2-\sqrt{2}"),
    (
        r"\begin{pmatrix}1&2\\3&4\end{pmatrix}",
        r"\begin{bmatrix}1&2\\3&4\end{bmatrix}",
        "string",
        r"\begin{pmatrix}1&2\\4&3\end{pmatrix}",
    ),
    (
        r"\begin{pmatrix}0.5\\2\end{pmatrix}",
        r"\begin{pmatrix}\frac12\\2\end{pmatrix}",
        "rational",
        r"\begin{pmatrix}2\\0.5\end{pmatrix}",
    ),
    ("1,000", "1000", "string", "1,001"),
    (r"\$18.90", "18.9", "rational", "18.09"),
    ("x = 5", "5", "string", "x = 6"),
    (r"\text{(C)}", "C", "string", "B"),
]


@pytest.fixture(scope="module", autouse=True)
def _warm():
    warm_up()


@pytest.mark.parametrize(("pred", "gold", "stage", "twin"), CASES)
def test_stage_decides_and_twin_differs(pred, gold, stage, twin):
    verdict = grade_one(pred, gold, timeout_s=10)
    assert verdict == Verdict(True, pred.strip(), stage)
    negative = grade_one(twin, gold, timeout_s=10)
    assert negative.correct is False, negative


@pytest.mark.parametrize(
    ("pred", "gold", "reason"),
    [
        ("0", "1e-20", "numeric"),  # zero equals only zero
        (r"\frac{1}{3}", "0.333", "rational"),  # no rounding of exact values
        ("(1, 2)", r"\{1, 2\}", "structure mismatch: tuple vs set"),
        ("(1, 2, 3)", "(1, 2)", "tuple: 3 items, expected 2"),
        ("[0, 1]", "(0, 1)", "interval: ends differ"),
        ("x \\leq 3", "x < 3", "relation differs"),
        ("2, 2", "2, 3", "unmatched element"),
        ("9^{9^{9^{9}}}", "1", "guard: exponent tower"),
    ],
)
def test_unequal_with_reason(pred, gold, reason):
    assert grade_one(pred, gold, timeout_s=10) == Verdict(False, pred, reason)


def test_unparseable_latex_is_a_parse_error():
    verdict = grade_one(r"\frac{", "1", timeout_s=10)
    assert verdict.correct is False and verdict.reason.startswith("parse error")


def test_completion_formats():
    assert grade(r"Thus $\boxed{\dfrac{1}{2}}$.", "0.5")
    assert not grade(r"Thus $\boxed{\dfrac{1}{3}}$.", "0.5")
    assert grade("<think>2+2</think><answer>4</answer>", "4")
    assert not grade("<think>2+2</think><answer>5</answer>", "4")
    gsm_gold = "She has 3 + 4 = 7 apples.\n#### 7"
    assert grade(r"\boxed{7}", gsm_gold)
    assert not grade(r"\boxed{8}", gsm_gold)
    assert (
        grade_one("No marked answer in this long text.\nIt rambles on.", "3").reason
        == "no answer found"
    )


def test_grade_batch_reasons_and_length_check():
    verdicts = grade_batch(["#### 1,000", r"\boxed{x^2}", "4"], ["1000", "x*x", "3"], timeout_s=10)
    assert [v.reason for v in verdicts] == ["string", "symbolic", "rational"]
    assert [v.correct for v in verdicts] == [True, True, False]
    with pytest.raises(ValueError):
        grade_batch(["1"], [])


def test_overrun_is_killed_and_replaced():
    """A request that outruns its bound returns None in time; the next call still works."""
    start = time.monotonic()
    slow = ["expr", "9^{9^{9}}", "1"]  # unguarded here: an integer of 370 million digits
    assert run_bounded([slow], timeout_s=0.5) is None
    assert time.monotonic() - start < 1.5
    assert run_bounded([["expr", "2x", "x+x"]], timeout_s=20) == [(True, "symbolic")]


def test_pairs_do_not_time_out_under_load():
    """Many threads share the helpers with pairs that take about 0.07 s of CPU each: every pair
    still grades correct with a 0.6 s bound, though many calls (all threads start together)
    wait longer than that for a free helper. Only the helper's own CPU time on the call counts,
    not the wait for a helper or a core. (The bound is about 8x a pair's cost: CPU time itself
    grows on a contended machine.)"""
    import threading

    import sympy

    from rewards.math.bounded import POOL_SIZE, warm_up

    warm_up()
    x = sympy.Symbol("x")
    results, walls = [], []
    bound_s = 0.6
    threads_n = 24 * POOL_SIZE
    # Distinct pairs (nothing is answered from a cache), written out before any thread starts.
    ks = [[10 * t + i + 2 for i in range(3)] for t in range(threads_n)]
    pairs = [[(f"(x+{k})^{{10}}", sympy.latex(sympy.expand((x + k) ** 10))) for k in row]
             for row in ks]
    start_together = threading.Barrier(threads_n)

    def grade(t: int):
        start_together.wait()
        for a, b in pairs[t]:
            start = time.monotonic()
            results.append(run_bounded([["expr", a, b]], timeout_s=bound_s))
            walls.append(time.monotonic() - start)

    threads = [threading.Thread(target=grade, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(results) == 3 * threads_n
    failed = [r for r in results if r != [(True, "symbolic")]]
    assert failed == [], f"{len(failed)} of {len(results)} pairs failed under load"
    waited = sum(w > bound_s for w in walls)  # calls that waited longer than their own bound
    assert waited >= len(walls) // 8, f"only {waited} of {len(walls)} calls outlasted the bound"


def test_symbolic_decisions_are_remembered_and_timeouts_are_not(monkeypatch):
    """A repeated pair (RL grades a group's agreeing answers, and golds every epoch) never goes
    back to the helper; a timed-out pair does, since a timeout is no decision."""
    from rewards.math import equiv

    calls = []

    def counting(requests, timeout_s):  # the real helper, counted
        calls.append(len(requests))
        return run_bounded(requests, timeout_s)

    monkeypatch.setattr(equiv, "run_bounded", counting)
    pred, gold = "\\boxed{\\frac{y^2-49}{y-7}}", "y+7"  # a division by a sum: sympy decides
    assert grade_one(pred, gold).reason == "symbolic"
    assert grade_one(pred, gold).correct and grade_one(f"so {pred}", gold).correct
    assert calls == [1]
    slow = "\\sin^2(32x)+\\cos^2(32x)"  # true, but sympy needs seconds for it
    assert equiv.answers_equal(slow, "1", timeout_s=0.3) == (False, "timeout")
    assert equiv.answers_equal(slow, "1", timeout_s=0.3) == (False, "timeout")
    assert calls == [1, 1, 1]
