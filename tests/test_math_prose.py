"""Answers written the way models write them outside a box: in prose, Minerva endings, several
boxes, labels, decimal commas, doubled backslashes, percent and units as words.

Every case that must grade True has a wrong twin that must grade False.
"""

import pytest

from rewards.math import extract_answer, grade, grade_one
from rewards.math.equiv import decimal_comma

CASES = [  # (completion, gold, a wrong completion in the same form)
    # prose after "Answer", no box
    ("Answer $ 14 $", "14", "Answer $ 15 $"),
    ("Answer\n\\[\n  \\frac{5}{3}\n\\]", r"\frac53", "Answer\n\\[\n  \\frac{3}{5}\n\\]"),
    ("Answer \\( (6+2) \\)", "8", "Answer \\( (6+3) \\)"),
    # Minerva endings, in prose and after intermediate boxes
    (
        "Final Answer: The area of $PQR$ is 48. I hope it is correct.",
        "48",
        "Final Answer: The area of $PQR$ is 47. I hope it is correct.",
    ),
    (
        r"first $\boxed{30}$, then $\boxed{12}$. Final Answer: The final answer is $42$.",
        "42",
        r"first $\boxed{30}$, then $\boxed{42}$. Final Answer: The final answer is $12$.",
    ),
    (
        "Final Answer: The final answer is 3,000,017. I hope it is correct.",
        "3000017",
        "Final Answer: The final answer is 3,000,071. I hope it is correct.",
    ),
    # a short sentence: its last math span, or what follows "is"
    ("Hence $y \\leq 4$ holds.", "y \\leq 4", "Hence $y \\leq 3$ holds."),
    ("so the total is 2,500.50 dollars", "2500.5", "so the total is 2,500.55 dollars"),
    ("the floor area is 2,400.5m²", "2400.5", "the floor area is 2,400.25m²"),
    # the last number, only for a numeric gold, only when nothing is marked
    (
        "We subtract 9 from 16 and the chance is 7/16.\nThat settles the question.",
        r"\frac{7}{16}",
        "We subtract 9 from 16 and the chance is 9/16 overall.\nThat settles the question.",
    ),
    # several boxes against one list
    (r"$\boxed{4}$ and $\boxed{-3}$", "-3, 4", r"$\boxed{4}$ and $\boxed{3}$"),
    # labels on the left of the gold
    (r"$\boxed{3:5}$", "$A_{1}:A_{2}=3:5$", r"$\boxed{5:3}$"),
    # decimal comma, one way and the other
    ("$\\boxed{2,35}$", "2.35", "$\\boxed{2,53}$"),
    ("$\\boxed{0.125}$", "0,125", "$\\boxed{125}$"),
    # doubled backslashes
    (r"so \\boxed{\\frac{2}{7}}", r"\frac{2}{7}", r"so \\boxed{\\frac{7}{2}}"),
    (r"$\boxed{\cfrac{2}{9}}$", "2/9", r"$\boxed{\cfrac{9}{2}}$"),
    # a matrix written as an array
    (
        r"$\left[\begin{array}{cc}1 & 0 \\ 2 & 5\end{array}\right]$",
        r"\begin{pmatrix}1&0\\2&5\end{pmatrix}",
        r"$\left[\begin{array}{cc}1 & 0 \\ 5 & 2\end{array}\right]$",
    ),
    # percent as a word, units inside the box
    (r"$\boxed{35 pct}$", r"35\%", r"$\boxed{53 pct}$"),
    (r"$\boxed{64\textnormal{ feet}}$", "64", r"$\boxed{46\textnormal{ feet}}$"),
]


@pytest.mark.parametrize(("pred", "gold", "wrong"), CASES)
def test_prose_and_notation(pred, gold, wrong):
    assert grade_one(pred, gold, timeout_s=10).correct, grade_one(pred, gold, timeout_s=10)
    assert not grade(wrong, gold, timeout_s=10)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        # the last number is not read against a tuple, a set or an expression
        ("we tried x = 2 and then y = 3 and it worked\nso that is it", "(2, 3)"),
        ("the curve is x to the power 3, we think\nso that is it", "x^3"),
        # nor when an answer was marked but is unreadable
        ("The answer is in \\boxed{12", "12"),
        ("Answer $ \n 12 \n $", "12"),
        # a spaced comma is a list, and a thousands group is not a decimal comma
        (r"$\boxed{4, 5}$", "4.5"),
        (r"$\boxed{1,250}$", "1.25"),
    ],
)
def test_fallbacks_do_not_guess(pred, gold):
    assert not grade(pred, gold, timeout_s=10)


def test_last_number_can_be_turned_off_and_on():
    text = "We add 3 and 4 to get 7.\nNothing else to say here."
    assert grade_one(text, "7").correct
    assert grade_one(text, "7", last_number=False).reason == "no answer found"
    assert extract_answer(text) is None  # the extractor alone still marks nothing


def test_decimal_comma_rule():
    assert decimal_comma("-3,5", "-3.5") and decimal_comma("0,111", "0.111")
    assert not decimal_comma("3,500", "3.5") and not decimal_comma("3,5", "3.50")


LISTS = [  # (completion, gold, a wrong completion in the same form)
    # braces as a set: order-free against a set or list, in order against a tuple
    ("${2,9}$", "$(2,9)$", "${9,2}$"),
    (r"$\boxed{\{5, -4\}}$", "$-4;5$", r"$\boxed{\{5, 4\}}$"),
    ("${-8, 8}$", r"$\pm 8$", "${-8, 9}$"),
    # semicolons between answers and between coordinates
    (r"$\boxed{(1, 2, 3), (0, 0, 1)}$", "$(0;0;1),(1;2;3)$", r"$\boxed{(1, 2, 3), (0, 1, 0)}$"),
    (r"$\boxed{(3, 1), (5, 1)}$", "$a=3,b=1;a=5,b=1$", r"$\boxed{(3, 1), (1, 5)}$"),
    # "or" / "and" between answers
    (r"$\boxed{(2,5), (5,2)}$", "$(5,2)or(2,5)$", r"$\boxed{(2,5), (2,5)}$"),
    ("$8, 15, and 17$", "$8, 15, 17$", "$8, 15, and 18$"),
    ("$\\boxed{4, 6}$", "$4$ and $6$", "$\\boxed{4, 7}$"),
    # a repeated element counts once; a range written as a chain is an interval
    (r"$\boxed{(1, 4), (4, 1), (1, 4)}$", "(4, 1), (1, 4)", r"$\boxed{(1, 4), (1, 4)}$"),
    ("$(-1, 1)$", "$-1<g(t)<1$", "$[-1, 1)$"),
    # several boxes, tuples included, and a gold written as several boxes
    (r"$\boxed{(0, 1)}$ and $\boxed{(1, 0)}$", "(1, 0), (0, 1)", r"$\boxed{(0, 1)}$"),
    (r"$\boxed{-5, 2}$", r"\(\boxed{2}\) or \(\boxed{-5}\)", r"$\boxed{-5, 3}$"),
]


@pytest.mark.parametrize(("pred", "gold", "wrong"), LISTS)
def test_lists_and_sets(pred, gold, wrong):
    assert grade_one(pred, gold, timeout_s=10).correct, grade_one(pred, gold, timeout_s=10)
    assert not grade(wrong, gold, timeout_s=10)


def test_gold_boxes_far_apart_are_not_one_list():
    gold = r"first \boxed{2}, which we check at length over many lines of text, then \boxed{7}"
    assert grade(r"$\boxed{7}$", gold) and not grade(r"$\boxed{2, 7}$", gold)
