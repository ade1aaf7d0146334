"""Reward registry: lookup by name and dotted path, specs, weighted combination."""

import math

import pytest

from rewards import format as format_module
from rewards.registry import (
    REWARDS,
    RewardConfigError,
    RewardLookupError,
    RewardSpec,
    accuracy_reward,
    build,
    check_scores,
    combine,
    parse_specs,
    resolve,
)


def constant_reward(completions, *, value=1.0, **row):
    return [value] * len(completions)


NOT_CALLABLE = 3


def test_registered_names():
    assert set(REWARDS) == {
        "accuracy",
        "format",
        "tag_format",
        "soft_overlong",
        "cosine",
        "code",
        "humaneval",
    }
    assert resolve("tag_format") is format_module.tag_format_reward


@pytest.mark.parametrize("path", [f"{__name__}:constant_reward", f"{__name__}.constant_reward"])
def test_resolve_dotted_paths(path):
    assert resolve(path) is constant_reward


def test_resolve_nested_attribute_after_colon():
    assert resolve("rewards.registry:REWARDS.get") == REWARDS.get


def test_unknown_name_lists_known_ones():
    with pytest.raises(RewardLookupError) as err:
        resolve("acc")
    message = str(err.value)
    assert "unknown reward 'acc'" in message
    for name in REWARDS:
        assert name in message


@pytest.mark.parametrize(
    "path,expected",
    [
        ("no_such_pkg_r1kit.mod:fn", "cannot import module 'no_such_pkg_r1kit.mod'"),
        ("rewards.format:no_such_fn", "has no attribute 'no_such_fn'"),
        (f"{__name__}:NOT_CALLABLE", "is a int, not callable"),
        (":fn", "bad reward path"),
    ],
)
def test_bad_dotted_path_says_what_failed(path, expected):
    with pytest.raises(RewardLookupError, match=expected):
        resolve(path)


def test_build_binds_settings_and_weights():
    rewards = build(
        [
            RewardSpec(f"{__name__}:constant_reward", 0.5, {"value": 4.0}, label="four"),
            RewardSpec("soft_overlong", -2.0, {"max_len": 20, "cache_len": 4}),
        ]
    )
    assert [(r.label, r.weight) for r in rewards] == [("four", 0.5), ("soft_overlong", -2.0)]
    out = combine(rewards, ["x", "y"], completion_lengths=[10, 18])
    # four: 0.5 * 4 = 2; soft_overlong at 18 of (20, cache 4): -0.5, weighted -2 -> +1.
    assert out.per_reward == {"four": [4.0, 4.0], "soft_overlong": [0.0, -0.5]}
    assert out.total == [2.0, 3.0]


@pytest.mark.parametrize(
    "specs,expected",
    [
        ([RewardSpec("cosine", kwargs={"max_length": 9})], "has no setting max_length"),
        ([RewardSpec("cosine")], "needs setting\\(s\\) max_len"),
        ([RewardSpec("format"), RewardSpec("format")], "two rewards labelled 'format'"),
        ([RewardSpec("format", math.nan)], "non-finite weight"),
        ([RewardSpec("nope")], "unknown reward 'nope'"),
    ],
)
def test_build_rejects_bad_specs(specs, expected):
    with pytest.raises((RewardConfigError, RewardLookupError), match=expected):
        build(specs)


def test_parse_specs_from_recipe_list():
    specs = parse_specs(
        ["accuracy", {"name": "format", "weight": 0.5, "kwargs": {"prompt_opens_think": False}}]
    )
    assert specs == [
        RewardSpec("accuracy"),
        RewardSpec("format", 0.5, {"prompt_opens_think": False}),
    ]
    with pytest.raises(RewardConfigError, match="unknown key"):
        parse_specs([{"name": "format", "wieght": 2}])
    with pytest.raises(RewardConfigError, match="no 'name'"):
        parse_specs([{"weight": 2}])


def test_check_scores_rejects_bad_outputs():
    with pytest.raises(ValueError, match="returned 1 scores for 2"):
        check_scores("r", [1.0], 2)
    with pytest.raises(ValueError, match="non-finite"):
        check_scores("r", [1.0, math.inf], 2)


def test_accuracy_reward_against_answer_column():
    completions = [
        "so</think> the answer is \\boxed{\\dfrac{3}{4}}",
        "so</think> \\boxed{0.75}",
        "so</think> \\boxed{3/5}",
        "no answer at all",
    ]
    assert accuracy_reward(completions, answer=["0.75", "\\frac34", "0.75", "1"]) == [
        1.0,
        1.0,
        0.0,
        0.0,
    ]


def test_combine_weighted_sum_hand_computed():
    rewards = build(
        [RewardSpec("accuracy", 1.0), RewardSpec("format", 0.25), RewardSpec("tag_format", 0.5)]
    )
    completions = ["r</think><answer>7</answer>", "r</think>\\boxed{8}", "7"]
    out = combine(rewards, completions, answer=["7", "7", "7"])
    assert out.per_reward["accuracy"] == [1.0, 0.0, 1.0]
    assert out.per_reward["format"] == [1.0, 1.0, 0.0]
    assert out.per_reward["tag_format"] == [1.0, 0.25, 0.0]
    # 1 + 0.25 + 0.5 = 1.75; 0 + 0.25 + 0.125 = 0.375; 1 + 0 + 0 = 1
    assert out.total == [1.75, 0.375, 1.0]
