r"""Real-output style pairs (tests/data/math_real_outputs.jsonl): r1kit against Math-Verify.

Each row is ``{"pred", "gold", "label", "class"}``: a completion written the way
models and RL datasets write them (Minerva endings, display math after
"Answer", several boxes, a left-hand side on one side, chained inequalities,
matrices, rounded decimals, ...), labelled by hand. The test prints both
accuracies per class, asserts r1kit is at least as accurate as Math-Verify and
lists every pair r1kit gets wrong: :data:`KNOWN_MISSES` must equal that list,
so it cannot grow silently.
"""

import json
from collections import Counter
from pathlib import Path

import pytest

from bench.math_grader import real_output_rows
from rewards.math import grade_one, warm_up

DATA = Path(__file__).parent / "data" / "math_real_outputs.jsonl"
KNOWN_MISSES: dict[int, str] = {}  # row index -> why r1kit gets it wrong; none today


@pytest.fixture(scope="module")
def rows():
    warm_up()
    return real_output_rows(DATA)


@pytest.fixture(scope="module")
def r1kit_verdicts(rows):
    return [grade_one(r["pred"], r["gold"], timeout_s=10) for r in rows]


def test_set_is_large_balanced_and_well_formed(rows):
    assert len(rows) >= 150
    assert {tuple(sorted(r)) for r in rows} == {("class", "gold", "label", "pred")}
    positives = sum(r["label"] for r in rows)
    assert 0.4 <= positives / len(rows) <= 0.6
    per_class = Counter((r["class"], r["label"]) for r in rows)
    for cls in {r["class"] for r in rows}:  # every class has right and wrong answers
        assert per_class[(cls, True)] >= 3 and per_class[(cls, False)] >= 3, cls
    assert len({(r["pred"], r["gold"]) for r in rows}) == len(rows)  # no duplicate pairs


def test_r1kit_misses_are_known(rows, r1kit_verdicts):
    misses = {
        i: f"[{r['class']}] {r['pred'][-60:]!r} vs {r['gold']!r}: {v.extracted!r} {v.reason}"
        for i, (r, v) in enumerate(zip(rows, r1kit_verdicts))
        if v.correct != r["label"]
    }
    assert misses.keys() == KNOWN_MISSES.keys(), "\n".join(misses.values())


def test_r1kit_at_least_as_accurate_as_math_verify(rows, r1kit_verdicts):
    pytest.importorskip("math_verify")
    from bench.math_grader import _math_verify

    table: dict[str, list[int]] = {}
    for r, v in zip(rows, r1kit_verdicts):
        counts = table.setdefault(r["class"], [0, 0, 0])
        counts[0] += v.correct == r["label"]
        counts[1] += _math_verify(r["pred"], r["gold"]) == r["label"]
        counts[2] += 1
    ours, theirs = (sum(c[k] for c in table.values()) for k in (0, 1))
    report = [f"{cls:20} r1kit {a}/{n}  math-verify {b}/{n}" for cls, (a, b, n) in table.items()]
    print("\n".join([*report, f"{'total':20} r1kit {ours}/{len(rows)}  math-verify {theirs}"]))
    assert ours >= theirs, "\n".join(report)


@pytest.mark.parametrize(
    ("pred", "gold", "correct"),
    [
        ("Final Answer: The final answer is $4$. I hope it is correct.", "4", True),
        ("**Answer:**\n\\[\n\\frac{7}{2}\n\\]", "3.5", True),
        ("The answer is 2,500.", "2500", True),
        (r"$\boxed{5}$ and $\boxed{-1}$", "-1, 5", True),
        (r"$\boxed{5}$ and $\boxed{5}$", "-1, 5", False),  # a repeated box is one answer
        (r"\boxed{(m,n)=(2,7)}", "(2,7)", True),
        (r"\boxed{9}", "BC = 9", True),
        (r"\boxed{b = 9, a = 2}", "a=2, b=9", True),
        (r"\boxed{a = 9, b = 2}", "a=2, b=9", False),  # names are kept when both sides have them
        (r"\boxed{x = 2+3 = 5}", "5", True),
        (r"\boxed{x \ne 5}", "x != 5", True),
        (r"\boxed{2 \le t < 9}", "[2, 9)", True),
        (r"\boxed{2 < t < 9}", "[2, 9)", False),
        (r"\boxed{x \in [-2, 7]}", "[-2, 7]", True),  # membership: the set is the answer
        (r"\boxed{x \in [-2, 7)}", "[-2, 7]", False),
        (r"\boxed{\frac{20000}{\pi}}", r"x \in [-2, 7]", False),
        (r"\boxed{x \geq 3}", r"(3, \infty)", False),
        (r"\boxed{6!}", "720", True),
        (r"\boxed{\log_3 27}", "3", True),
        (r"\boxed{0.0833}", r"\frac{1}{12}", True),
        (r"\boxed{0.0834}", r"\frac{1}{12}", False),
        (r"\boxed{0.08}", r"\frac{1}{12}", False),  # fewer than 3 significant digits
        (r"\boxed{1.414}", r"\sqrt{2}", False),  # irrational gold: exact form only
    ],
)
def test_real_output_rules(pred, gold, correct):
    assert grade_one(pred, gold, timeout_s=10).correct is correct


def test_data_file_is_plain_jsonl():
    lines = DATA.read_text(encoding="utf-8").splitlines()
    assert all(isinstance(json.loads(line)["label"], bool) for line in lines)
