"""Answer extraction and normalisation: hand-worked cases, each with a negative twin."""

from fractions import Fraction

import pytest

from rewards.math import extract_answer
from rewards.math.normalize import normalize, parse_rational, refuse_reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"First \boxed{1}, then $\boxed{\frac{a}{b^{2}}}$.", r"\frac{a}{b^{2}}"),
        (r"nested \boxed{\left\{1, \{2\}\right\}} end", r"\left\{1, \{2\}\right\}"),
        (r"pmatrix \boxed{\begin{pmatrix}1\\2\end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
        (r"so $\boxed 5$.", "5"),
        (r"so \fbox{7} here", "7"),
        ("<think>maybe 3</think><answer> 4 </answer>", "4"),
        (r"<answer>so \boxed{9}</answer>", "9"),
        ("Therefore, the final answer is $\\frac{2}{3}$.", r"\frac{2}{3}"),
        ("He earns 3 * 4 = 12.\n#### 12", "12"),
        ("  -0.25 ", "-0.25"),
    ],
)
def test_extracts_marked_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        r"The answer is in \boxed{12",  # truncated: unclosed brace
        "Long reasoning with 3 and 4 and no marked answer at all here.\nAnother line ends 7.",
        "",
    ],
)
def test_no_answer_without_marker(text):
    assert extract_answer(text) is None


def test_last_number_fallback_is_opt_in():
    text = "We add 3 and 4 to get 7.\nThe total is 1,250 apples"
    assert extract_answer(text) is None
    assert extract_answer(text, last_number=True) == "1,250"


def test_last_boxed_wins_and_huge_input_is_quick():
    assert extract_answer(r"\boxed{1} \boxed{2}") == "2"
    assert extract_answer(r"\boxed{" * 20_000) is None  # 140 kB of unclosed markers


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (r"\dfrac{1}{2}", r"\frac12"),
        (r"\left(1,2\right)", "(1, 2)"),
        (r"\$1{,}000", "1000"),
        ("1,000,000", "1000000"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        (r"25\%", "25"),
        (r"12\text{ cm}^2", "12"),
        (r"4 \mbox{ inches}", "4"),
        (r"\text{Monday}", "Monday"),
        (r"3\!\,\;\sqrt2", r"3\sqrt{2}"),
        ("42.", "42"),
        (r"x \le 3", r"x\leq 3"),
        (r"\text{(D)}", "D"),
    ],
)
def test_normalize_merges_variants(a, b):
    assert normalize(a) == normalize(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (r"\frac{1}{2}", r"\frac{2}{1}"),
        ("(1,2)", "[1,2]"),
        ("1,001", "1000"),
        (r"\pi r", r"\pir"),
        ("12", "1.2"),
        ("2,3", "23"),  # a list of two answers is not a thousands separator
    ],
)
def test_normalize_keeps_differences(a, b):
    assert normalize(a) != normalize(b)


def test_parse_rational_is_exact():
    assert parse_rational("0.1") == Fraction(1, 10)
    assert parse_rational(r"\frac{-6}{4}") == Fraction(-3, 2)
    assert parse_rational("1/0") is None
    assert parse_rational(r"\sqrt{2}") is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("9^{9^{9^{9}}}", "guard: exponent tower"),
        ("10^{10^{10}}", "guard: exponent tower"),
        ("(x+1)^{99999}", "guard: huge power"),
        ("123456!", "guard: huge factorial"),
        ("{" * 500 + "1" + "}" * 500, "guard: answer longer than 600 chars"),
        ("{" * 100 + "1" + "}" * 100, "guard: nesting deeper than 30"),
    ],
)
def test_guard_refuses_pathological(text, reason):
    assert refuse_reason(text) == reason


@pytest.mark.parametrize(
    "text", ["2^{2^{10}}", "x^{2}+y^{2}", r"e^{x^2}", "10!", r"\frac{1}{2^{99}}"]
)
def test_guard_allows_ordinary(text):
    assert refuse_reason(text) is None
