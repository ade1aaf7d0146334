"""Format and length rewards against values worked out by hand."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rewards.format import format_reward, is_strict_format, tag_format_reward, tag_score
from rewards.length import (
    completion_length,
    cosine_reward,
    cosine_scaled,
    soft_overlong_penalty,
    soft_overlong_reward,
)

# --- strict format -------------------------------------------------------------------------

GOOD_OPEN_IN_PROMPT = [
    "Add them: 2+2=4.</think>\n<answer>4</answer>",
    "reasoning</think><answer> x^2 </answer>\n\n",
    "reasoning</think>\nThe sum is four.\n\\boxed{4}",
    "reasoning</think>\nSo $\\boxed{\\frac{1}{2}}$.",
    "reasoning</think>\n\\[\\boxed{\\{1, 2\\}}\\]<|im_end|>",
    "reasoning with \\boxed{3} draft</think> final \\boxed{4}</s>",
]

BAD_OPEN_IN_PROMPT = [
    ("<think>reasoning</think><answer>4</answer>", "second <think> opens a nested block"),
    ("reasoning<answer>4</answer>", "no </think>"),
    ("a</think>b</think><answer>4</answer>", "two </think>"),
    ("   </think><answer>4</answer>", "blank reasoning"),
    ("reasoning</think><answer>4</answer> extra words", "text after the answer"),
    ("reasoning</think><answer>4</answer><answer>5</answer>", "two answers"),
    ("reasoning</think><answer>  </answer>", "empty answer"),
    ("reasoning</think><answer>4", "unclosed answer"),
    ("reasoning</think>so <answer>4</answer>", "text before <answer>"),
    ("reasoning</think>\\boxed{4} and then more", "text after \\boxed"),
    ("reasoning</think>\\boxed{}", "empty box"),
    ("reasoning</think>\\boxed{4", "unbalanced box"),
    ("reason <answer>3</answer></think><answer>4</answer>", "answer tag inside thinking"),
    ("reasoning</think>the answer is 4", "no final answer"),
]


@pytest.mark.parametrize("text", GOOD_OPEN_IN_PROMPT)
def test_strict_format_accepts(text):
    assert is_strict_format(text)
    assert not is_strict_format(text, prompt_opens_think=False)


@pytest.mark.parametrize("text,why", BAD_OPEN_IN_PROMPT)
def test_strict_format_rejects(text, why):
    assert not is_strict_format(text), why


def test_strict_format_with_think_in_completion():
    assert is_strict_format("\n<think>r</think><answer>4</answer>", prompt_opens_think=False)
    assert not is_strict_format("r</think><answer>4</answer>", prompt_opens_think=False)
    assert not is_strict_format("x<think>r</think><answer>4</answer>", prompt_opens_think=False)
    assert not is_strict_format(
        "<think><think>r</think><answer>4</answer>", prompt_opens_think=False
    )


def test_answer_style_restricts():
    tagged, boxed = "r</think><answer>4</answer>", "r</think>\\boxed{4}"
    assert format_reward([tagged, boxed], answer_style="tag") == [1.0, 0.0]
    assert format_reward([tagged, boxed], answer_style="boxed") == [0.0, 1.0]
    assert format_reward([tagged, boxed]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="answer_style"):
        format_reward([tagged], answer_style="xml")


def test_format_reward_ignores_row_columns():
    assert format_reward(["r</think><answer>4</answer>"], answer=["4"], prompt=["p"]) == [1.0]


# --- tag reward ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,opens,expected",
    [
        ("r</think><answer>4</answer>", True, 1.0),  # 3 tags + order = 4/4
        ("r</think>4", True, 0.25),  # one tag
        ("<answer>4</answer>", True, 0.5),  # two tags, no order credit (one missing)
        ("<answer>4</answer></think>", True, 0.75),  # all once, wrong order
        ("<think>r</think><answer>4</answer>", True, 0.75),  # <think> in completion costs 1/4
        ("r</think></think></think><answer>4</answer>", True, 0.25),  # repeat: -1/4, no order
        ("<think>r</think><answer>4</answer>", False, 1.0),  # 4 tags + order = 5/5
        ("r</think><answer>4</answer>", False, 0.6),  # 3 of 4 tags
        ("<think><think></think></think><answer></answer><answer></answer>", False, -0.8),
        ("", False, 0.0),
    ],
)
def test_tag_score_hand_computed(text, opens, expected):
    assert tag_score(text, prompt_opens_think=opens) == pytest.approx(expected)


TAGS = ["<think>", "</think>", "<answer>", "</answer>", "x", "\n"]


@given(st.lists(st.sampled_from(TAGS), max_size=30), st.booleans())
def test_tag_score_cannot_be_gamed_by_repeating(pieces, opens):
    text = "".join(pieces)
    score = tag_score(text, prompt_opens_think=opens)
    assert -1.0 <= score <= 1.0
    # Doubling the text repeats every tag that occurs; it can never raise the score.
    assert tag_score(text + text, prompt_opens_think=opens) <= score


def test_tag_format_reward_batch():
    out = tag_format_reward(["r</think><answer>4</answer>", "nothing"], answer=["4", "4"])
    assert out == [1.0, 0.0]


# --- soft overlong (DAPO eq. 13) -----------------------------------------------------------


@pytest.mark.parametrize(
    "length,expected",
    [
        (0, 0.0),
        (16, 0.0),
        (17, -0.25),
        (18, -0.5),
        (19, -0.75),
        (20, -1.0),
        (21, -1.0),
        (1e6, -1.0),
    ],
)
def test_soft_overlong_penalty_hand_computed(length, expected):
    # max_len 20, cache 4: penalty starts after 16, -1/4 per token.
    assert soft_overlong_penalty(length, max_len=20, cache_len=4) == pytest.approx(expected)


def test_soft_overlong_rejects_bad_bounds():
    with pytest.raises(ValueError):
        soft_overlong_penalty(1, max_len=10, cache_len=0)
    with pytest.raises(ValueError):
        soft_overlong_penalty(1, max_len=10, cache_len=11)


def test_soft_overlong_reward_fallback_in_characters_per_token():
    # 72 characters / 4 = 18 tokens -> -0.5 with max_len 20, cache 4.
    out = soft_overlong_reward(["a" * 72, "a" * 8], max_len=20, cache_len=4)
    assert out == pytest.approx([-0.5, 0.0])
    out = soft_overlong_reward(["a" * 72], max_len=20, cache_len=4, chars_per_token=2.0)
    assert out == [-1.0]  # 36 tokens


def test_completion_lengths_must_align():
    with pytest.raises(ValueError, match="2 completions"):
        completion_length(["a", "b"], [1])


# --- cosine (Yeo et al. 2025) --------------------------------------------------------------


def test_cosine_scaled_hand_computed():
    kw = {"r_c0": 2.0, "r_cL": 1.0, "r_w0": -10.0, "r_wL": 0.0, "r_exceed": -10.0}
    assert cosine_scaled(True, 0, 100, **kw) == 2.0
    # t/T = 1/4: cos(pi/4) = sqrt(2)/2 -> 1 + 0.5 * (1 + 0.70710678) = 1.85355339
    assert cosine_scaled(True, 25, 100, **kw) == pytest.approx(1.8535533906)
    assert cosine_scaled(True, 99.999, 100, **kw) == pytest.approx(1.0, abs=1e-6)
    assert cosine_scaled(False, 0, 100, **kw) == -10.0
    # wrong at t/T = 3/4: 0 + 0.5 * (-10) * (1 - 0.70710678) = -1.46446609
    assert cosine_scaled(False, 75, 100, **kw) == pytest.approx(-1.4644660941)
    assert cosine_scaled(True, 100, 100, **kw) == -10.0
    assert cosine_scaled(False, 150, 100, **kw) == -10.0


def test_cosine_scaled_custom_bounds():
    kw = {"r_c0": 1.0, "r_cL": 0.5, "r_w0": -1.0, "r_wL": -0.5, "r_exceed": -2.0}
    assert cosine_scaled(True, 50, 200, **kw) == pytest.approx(0.5 + 0.25 * (1 + math.sqrt(0.5)))
    assert cosine_scaled(False, 200, 200, **kw) == -2.0
    with pytest.raises(ValueError):
        cosine_scaled(True, 1, 0)


def test_cosine_reward_grades_against_answer():
    completions = [
        "r</think> \\boxed{\\frac{1}{2}}",  # correct, 25 tokens of 100
        "r</think> \\boxed{0.4}",  # wrong, 75 tokens
        "r</think> \\boxed{0.5}",  # correct but at max_len
    ]
    out = cosine_reward(
        completions,
        answer=["\\frac12", "0.5", "1/2"],
        max_len=100,
        completion_lengths=[25, 75, 100],
    )
    assert out == pytest.approx([1.8535533906, -1.4644660941, -10.0])
