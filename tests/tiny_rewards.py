"""Rewards for end-to-end training tests: simple targets a random tiny policy can learn fast."""


def digit_share(completions: list[str], **kwargs) -> list[float]:
    """Share of a completion's characters that are digits.

    >>> digit_share(["a1", "22", ""])
    [0.5, 1.0, 0.0]
    """
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]
