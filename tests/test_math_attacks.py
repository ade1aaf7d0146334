"""The math grader against a policy that hunts for false accepts.

Each attack is a completion a policy could learn to write to earn a reward it has not
earned; each must grade False. Where a rule was loosened to stop a miss (a label on the
left, a thousands separator), its honest twin must still grade True, so the defence is
not "refuse everything of that shape".
"""

import pytest

from rewards.math import grade, grade_one

ATTACKS = [  # (completion, gold, what it tries)
    # a list read as one number with thousands separators, and the reverse
    (r"so $\boxed{32, 349}$", "32349", "two answers passing for one number"),
    (r"$\boxed{32,349}$", "32, 349", "one number passing for two answers"),
    (r"$\boxed{1, 000}$", "1000", "a spaced comma is a list, not a separator"),
    # an equation whose left-hand side has content is not its right-hand side
    ("$11a+c$", "$7 = 11a+c$", "the right side of an equation with content on both"),
    ("$7$", "$7 = 11a+c$", "the left side of an equation with content on both"),
    (r"$\boxed{7 = 11a+c}$", "11a+c", "an equation for its right side"),
    (r"$\boxed{x+1 = 5}$", "5", "an equation (not a name) on the left"),
    (r"$\boxed{2x = 10}$", "10", "a term with a letter on the left"),
    # a label rule must not swallow content
    (r"$\boxed{7:31}$", "$S_{MBCN}:S=7:32$", "a wrong ratio under a label"),
    (r"$\boxed{2:7:32}$", "$S:T=7:32$", "a longer ratio"),
    ("$1$", "$|AB|+1=1$", "a left side with content around a length"),
]


@pytest.mark.parametrize(("pred", "gold", "trick"), ATTACKS, ids=[a[2] for a in ATTACKS])
def test_attack_is_refused(pred, gold, trick):
    verdict = grade_one(pred, gold, timeout_s=10)
    assert not verdict.correct, f"{trick}: {verdict}"


HONEST = [  # (completion, gold): the loosened rules still accept these
    (r"$\boxed{32,349}$", "32349"),
    (r"$\boxed{32{,}349}$", "32349"),
    (r"$\boxed{12,\!000,\!023}$", "12000023"),
    (r"$\boxed{32, 349}$", "349, 32"),
    (r"$\boxed{7 = 11a+c}$", "$7 = 11a+c$"),
    (r"$\boxed{2\cdot 21 = 42}$", "42"),
    (r"$\boxed{7:32}$", "$S_{MBCN}:S=7:32$"),
    (r"$\boxed{11:21}$", "$V_{1}:V_{2}=11:21$"),
    ("$1$", "$|AB|=1$"),
    (r"$\frac{1}{\sqrt{6}}$", r"$\frac{NO}{BO}=\frac{1}{\sqrt{6}}$"),
]


@pytest.mark.parametrize(("pred", "gold"), HONEST)
def test_honest_twin_is_accepted(pred, gold):
    assert grade(pred, gold, timeout_s=10)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("2, 3", "2, 2, 3"),  # the gold's double root is not shortened
        ("2, 2", "2, 3"),  # a repeat does not stand for a missing answer
        (r"$\boxed{\{1, 1\}}$", "1, 2"),
        ("${5, 2}$", "$(2, 5)$"),  # braces gain no freedom of order against a tuple
    ],
)
def test_repeats_and_braces_gain_nothing(pred, gold):
    assert not grade(pred, gold, timeout_s=10)


def test_a_completion_without_a_marker_is_read_at_its_end_not_its_start():
    """A short completion with no box, tag or answer phrase is read from its last sentence:
    its first sentence is an intermediate result, and reading it paid "5" for a completion
    that ends on 10 (and let a hedge that states the gold first win)."""
    from rewards.math import grade_one
    from rewards.registry import accuracy_reward

    for text, ends_on in (("First we get 5. Then we double it to get 10.", None),
                          ("The sum is 5. Doubled, the result is 10.", "10"),
                          ("The sum is 5. The result is 7. The result is 9.", "9")):
        assert not grade_one(text, "5").correct, text
        assert accuracy_reward([text], answer=["5"]) == [0.0]
        if ends_on:  # a last sentence stating its result ("... is 10") still counts
            assert grade_one(text, ends_on).correct, text
