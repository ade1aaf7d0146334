r"""The grader's rules for math-verify's classes: text escaped as a JSON string, a gold of several
boxes read in order, the last number of a one-line prose answer, a bare answer measured outside
its math, a gold written as a computed float, and the ``Options`` (float precision, strict
variables, set against inequality). Each rule with the answers it must accept and the wrong
answers that look like them, which it must not."""

from __future__ import annotations

import pytest

from rewards.math import Options, grade, grade_one
from rewards.math.extract import extract_answer, undouble


# -- text escaped once as a JSON string: doubled commands, \n and \" escapes ---------------------
def test_json_escaped_completion_is_read():
    pred = (r"Here $\\rho = \\sqrt{4} = 2.$\n\ntitle(\"$(2,0)$\");\n\nIn polar form "
            r"$\\boxed{\\left( 2, \\frac{\\pi}{3} \\right)}.$")
    assert grade(pred, r"$(2, \frac{\pi}{3})$")
    swapped = pred.replace(r"2, \\frac{\\pi}{3}", r"\\frac{\\pi}{3}, 2")
    assert not grade(swapped, r"$(2, \frac{\pi}{3})$")  # the tuple's order still counts
    assert not grade(pred, r"$(2, \frac{\pi}{6})$")


def test_single_backslash_latex_is_never_unescaped():
    # \nu, \theta and a LaTeX line break are not JSON escapes when no command is doubled.
    for text in (r"\nu = 3 \\ \theta = 2", r"\boxed{\nu}", r"\begin{pmatrix}1\\2\end{pmatrix}"):
        assert undouble(text) == text
    # Doubled commands beside a real single command other than \n or \t: left alone.
    assert undouble(r"\\frac{1}{2} and \pi") == r"\\frac{1}{2} and \pi"


# -- a gold written as several boxes is a list in the order written ------------------------------
def test_gold_boxes_are_read_in_order():
    gold = r"$\boxed{12 kg} -- \boxed{7}$"
    assert grade("${12 kg,7}$", gold) and grade(r"$\boxed{(12 kg, 7)}$", gold)
    assert not grade("${7 kg, 12}$", gold)  # the unit on the other number
    assert not grade(r"$\boxed{(7, 12 kg)}$", gold)  # a tuple keeps its order
    assert not grade(r"$\boxed{12 kg}$", gold)  # a partial list
    assert not grade("${12 kg, 7, 5}$", gold)  # one answer too many
    ordered = r"$\boxed{1}$ and $\boxed{2}$"
    assert grade("$(1, 2)$", ordered) and not grade("$(2, 1)$", ordered)


# -- the last number of a one-line prose answer, for a numeric gold ------------------------------
def test_last_number_of_one_line_prose():
    assert grade("first I had 40 but then it came to 2,500.5km²", "$2500.5$")
    assert not grade("it came to 2,500.5km², not 40", "$2500.5$")  # the last number is read
    assert not grade("we count 32, 349 apples", "32349")  # a list of two, not 32,349
    # The RL reward's setting (no last number) pays none of it.
    assert not grade_one("first 40 but then it came to 2,500.5", "2500.5",
                         last_number=False).correct
    # Not against a tuple or an expression: a number there is a fragment.
    assert not grade("so we take the 3 from x^3", "$3x^2$")


# -- a bare answer is measured outside its math spans --------------------------------------------
def test_a_long_matrix_on_one_line_is_a_bare_answer():
    m = r"\begin{pmatrix}\frac{2}{3} & -\frac{1}{9} \\ \frac{4}{7} & \frac{11}{13}\end{pmatrix}"
    assert grade(f"The inverse we want: $ {m} $", f"${m}$")
    transposed = m.replace(r"-\frac{1}{9} \\ \frac{4}{7}", r"\frac{4}{7} \\ -\frac{1}{9}")
    assert not grade(f"The inverse we want: $ {transposed} $", f"${m}$")
    # Long prose on one line is still no bare answer.
    prose = "We try many things here and there, " * 4 + "and it is $5$"
    assert extract_answer(prose) is None


# -- a gold written as a computed float ----------------------------------------------------------
def test_gold_computed_float_against_an_exact_answer():
    assert grade(r"$\sqrt{29}$", "5.385164807134504", timeout_s=20)
    assert grade(r"$\frac{2}{7}$", "0.2857142857142857")
    assert not grade(r"$\frac{2}{7}$", "0.2857142857142858")  # not its rounding
    assert not grade(r"$\sqrt{30}$", "5.385164807134504", timeout_s=20)
    assert not grade(r"$\sqrt{29}$", "5.3852", timeout_s=20)  # few digits: an exact decimal
    assert not grade(r"$\pi$", "3.14", timeout_s=20)
    assert not grade("5.38516480713450", r"$\sqrt{29}$", timeout_s=20)  # a decimal for a root
    assert not grade("5.3851648071", "5.385164807134504")  # two decimals compare exactly


# -- Options: math-verify's float rounding, strict variables, set against inequality -------------
def test_precision_option_rounds_numbers_to_the_places_given():
    two = Options(precision=2)
    assert not grade("0.33", r"\frac{1}{3}")  # the default: too few digits
    assert grade("0.33", r"\frac{1}{3}", options=two)
    assert not grade("0.34", r"\frac{1}{3}", options=two)
    assert not grade("0.33", r"\frac{1}{3}", options=Options(precision=3))
    gold = r"$(\frac{2}{3}, \frac{1}{8})$"
    assert grade("$(0.67, 0.13)$", gold, options=two)
    assert not grade("$(0.13, 0.67)$", gold, options=two)  # swapped
    assert not grade("1.41", r"\sqrt{2}", options=two)  # numbers only, not irrationals
    assert not grade("0.333", "0.334", options=Options(precision=3))


def test_strict_option_renames_variables_only_when_off():
    loose = Options(strict=False)
    assert not grade("$g(t)+1$", "$g(s)+1$") and grade("$g(t)+1$", "$g(s)+1$", options=loose)
    assert not grade("$x + 2y$", "$2x + y$", options=loose)  # same names: no renaming
    assert not grade("$x + y$", "$2x$", options=loose)  # two variables for one
    assert not grade("$f(y) = y^2$", "$f(x) = x^3$", options=loose)
    assert not grade("$y + 2x$", "$x + 2y$")  # renaming would match it: strict by default


def test_set_relation_option_is_asymmetric():
    chain, member = r"$1 \leq t \leq 9$", r"$t \in [1, 9]$"
    off = Options(set_relation=False)
    assert grade(chain, member) and not grade(chain, member, options=off)
    assert grade(member, chain, options=off)  # a gold inequality still takes the interval
    assert grade("$[1, 9]$", member, options=off)  # no inequality in the prediction
    for wrong in (r"$1 \leq t < 9$", r"$1 < t \leq 9$", r"$-9 \leq t \leq -1$"):
        assert not grade(wrong, member) and not grade(wrong, member, options=off)


@pytest.mark.parametrize("options", [Options(), Options(precision=6), Options(strict=False),
                                     Options(set_relation=False)])
def test_options_keep_the_known_attacks_out(options):
    attacks = [  # (wrong prediction, gold)
        (r"\boxed{32, 349}", r"\boxed{32349}"),  # a list is no thousands separator
        ("$11a+c$", "$7 = 11a+c$"),  # an equation's other side
        (r"\boxed{(3, 2)}", "(2, 3)"),  # swapped tuple
        (r"\boxed{S_{MBCN}}", r"$S_{MBCN}:S=7:32$"),  # the label, not the value
        (r"\boxed{1}", r"\boxed{1}\boxed{2}"),  # a partial list
        (r"\boxed{125}", r"$12.5$"),  # a dropped decimal point
    ]
    for pred, gold in attacks:
        assert not grade(pred, gold, options=options), (pred, gold, options)


def test_bench_grades_option_rows_with_their_options():
    from bench.math_grader import MATH_VERIFY_OPTIONS, R1KIT_OPTIONS, _r1kit

    pairs = [("0.67", r"\frac{2}{3}"), ("$g(t)+1$", "$g(s)+1$"), (r"$1 \leq t \leq 9$", "[1, 9]")]
    options = [{"precision": 2}, {"strict": False}, {"allow_set_relation_comp": False}]
    assert [_r1kit(p, g, o) for (p, g), o in zip(pairs, options)] == [True, True, False]
    assert [_r1kit(p, g, {}) for p, g in pairs] == [False, False, True]
    assert set(R1KIT_OPTIONS) == set(MATH_VERIFY_OPTIONS)  # every option reaches both graders
