"""Toy rewards: targets a random-init tiny policy can learn in a few dozen GRPO steps, for smoke
tests and benchmarks of the trainer (``reward.funcs=[rewards.toy:digit_share]``). They say
nothing about reasoning; the math and code rewards do."""

from __future__ import annotations


def digit_share(completions: list[str], **kwargs) -> list[float]:
    """Share of a completion's characters that are digits.

    >>> digit_share(["a1", "22", ""])
    [0.5, 1.0, 0.0]
    """
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]


def digit_share_odd_only(completions: list[str], answer: list[str], **kwargs) -> list[float]:
    """``digit_share`` for problems with an odd answer, 0 for the rest: the even-answer groups
    have zero reward variance, which dynamic sampling must drop and refill.

    >>> digit_share_odd_only(["a1", "a1"], answer=["3", "4"])
    [0.5, 0.0]
    """
    return [s if int(a) % 2 else 0.0 for s, a in zip(digit_share(completions), answer)]
