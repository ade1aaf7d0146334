"""Length-shaped rewards: DAPO's soft overlong penalty and cosine length scaling.

- ``soft_overlong_penalty`` is eq. 13 of DAPO (Yu et al. 2025): 0 up to
  ``max_len - cache_len``, then linear down to -1 at ``max_len``, and -1 beyond.
- ``cosine_scaled`` is the cosine length-scaling reward of Yeo et al. 2025 ("Demystifying
  Long Chain-of-Thought Reasoning in LLMs"): a correct answer earns ``r_c0`` at length 0
  falling to ``r_cL`` at ``max_len``; a wrong one earns ``r_w0`` rising to ``r_wL``; a
  completion of ``max_len`` or more earns ``r_exceed`` whatever its answer. Between the
  ends: ``r_L + (r_0 - r_L) * (1 + cos(pi * t / max_len)) / 2``.

Length is counted in tokens when the row has a ``completion_lengths`` column (token
counts from the rollout, aligned with the completions). Without it the fallback is
``len(completion) / chars_per_token`` (default 4 characters per token, a usual ratio for
English BPE vocabularies), so ``max_len`` and ``cache_len`` stay in tokens either way.
The fallback is an estimate: pass token counts whenever the rollout has them.

What this module does not do: tokenize, or decide correctness itself (``cosine_reward``
asks ``rewards.math.grade_batch`` against the ``answer`` column).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rewards.math import grade_batch


def soft_overlong_penalty(length: float, max_len: float, cache_len: float) -> float:
    """DAPO eq. 13: 0 until ``max_len - cache_len``, linear to -1 at ``max_len``, then -1.

    >>> soft_overlong_penalty(100, max_len=200, cache_len=50)
    0.0
    >>> soft_overlong_penalty(175, max_len=200, cache_len=50)
    -0.5
    >>> soft_overlong_penalty(201, max_len=200, cache_len=50)
    -1.0
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got {cache_len=}, {max_len=}")
    start = max_len - cache_len
    if length <= start:
        return 0.0
    if length <= max_len:
        return (start - length) / cache_len
    return -1.0


def cosine_scaled(
    correct: bool,
    length: float,
    max_len: float,
    *,
    r_c0: float = 2.0,
    r_cL: float = 1.0,
    r_w0: float = -10.0,
    r_wL: float = 0.0,
    r_exceed: float = -10.0,
) -> float:
    """Cosine length-scaled correctness reward of Yeo et al. 2025 for one completion.

    >>> cosine_scaled(True, 0, 100)
    2.0
    >>> cosine_scaled(True, 50, 100)
    1.5
    >>> cosine_scaled(False, 50, 100)
    -5.0
    >>> cosine_scaled(True, 100, 100)
    -10.0
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if length >= max_len:
        return r_exceed
    r_0, r_L = (r_c0, r_cL) if correct else (r_w0, r_wL)
    return r_L + 0.5 * (r_0 - r_L) * (1.0 + math.cos(math.pi * length / max_len))


def completion_length(
    completions: list[str],
    completion_lengths: Sequence[float] | None,
    chars_per_token: float = 4.0,
) -> list[float]:
    """Token counts if given, else the ``len / chars_per_token`` estimate.

    >>> completion_length(["abcdefgh", "ab"], None)
    [2.0, 0.5]
    >>> completion_length(["abcdefgh", "ab"], [7, 1])
    [7.0, 1.0]
    """
    if completion_lengths is None:
        return [len(c) / chars_per_token for c in completions]
    if len(completion_lengths) != len(completions):
        raise ValueError(
            f"completion_lengths has {len(completion_lengths)} entries "
            f"for {len(completions)} completions"
        )
    return [float(n) for n in completion_lengths]


def soft_overlong_reward(
    completions: list[str],
    *,
    max_len: float,
    cache_len: float,
    completion_lengths: Sequence[float] | None = None,
    chars_per_token: float = 4.0,
    **row: list,
) -> list[float]:
    """DAPO soft overlong penalty per completion (``soft_overlong_penalty``).

    >>> soft_overlong_reward(["a", "b", "c"], max_len=10, cache_len=4,
    ...                      completion_lengths=[6, 8, 12])
    [0.0, -0.5, -1.0]
    """
    lengths = completion_length(completions, completion_lengths, chars_per_token)
    return [soft_overlong_penalty(n, max_len, cache_len) for n in lengths]


def cosine_reward(
    completions: list[str],
    answer: list[str],
    *,
    max_len: float,
    completion_lengths: Sequence[float] | None = None,
    chars_per_token: float = 4.0,
    r_c0: float = 2.0,
    r_cL: float = 1.0,
    r_w0: float = -10.0,
    r_wL: float = 0.0,
    r_exceed: float = -10.0,
    grade_timeout_s: float = 5.0,
    **row: list,
) -> list[float]:
    """Cosine length-scaled reward; correctness from ``rewards.math`` against ``answer``.

    >>> cosine_reward(["so \\\\boxed{4}", "so \\\\boxed{5}"], answer=["4", "4"],
    ...               max_len=100, completion_lengths=[50, 50])
    [1.5, -5.0]
    """
    lengths = completion_length(completions, completion_lengths, chars_per_token)
    verdicts = grade_batch(list(completions), list(answer), timeout_s=grade_timeout_s)
    bounds = {"r_c0": r_c0, "r_cL": r_cL, "r_w0": r_w0, "r_wL": r_wL, "r_exceed": r_exceed}
    return [cosine_scaled(v.correct, n, max_len, **bounds) for v, n in zip(verdicts, lengths)]
