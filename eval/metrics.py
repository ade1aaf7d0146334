"""Suite scores with error bars: per-problem metrics, bootstrap intervals, paired comparisons.

Inputs are per-suite matrices, one row per problem and one column per sample:

- ``correct``: ``(P, n)`` bool, or float for mean-type metrics (response length, format
  compliance); ``pass@k`` and ``maj`` read it as 0/1 correctness.
- ``votes``: ``(P, n)`` int, the cluster id of each sample's extracted answer within its problem
  (samples with equal normalised answers share an id, and all samples of one cluster have the
  same correctness); ``-1`` means no answer was extracted, and such a sample does not vote.

The metrics, each a per-problem function ``(correct, votes) -> (P,)`` (any leading dimensions
work: ``(..., n) -> (...)``, which the bootstrap uses to score many replicates at once); a suite
score is the mean over problems:

- ``avg``: the mean over the n samples. On correctness this is avg@n, the pass@1 estimate
  averaged over n samples, as reported by DeepSeek-R1 (arXiv:2501.12948).
- ``pass@k``: the unbiased estimator of Chen et al. 2021 (Codex, arXiv:2107.03374),
  ``1 - C(n-c, k) / C(n, k)`` for c correct of n samples, in its numerically stable product form.
- ``maj``: maj@n, majority vote over all n samples (self-consistency, Wang et al. 2022,
  arXiv:2203.11171). Departure from the usual ``Counter.most_common`` implementations: a tie
  between the largest clusters is not broken by sample order; the score is the expected
  correctness when the tie is broken uniformly at random (two tied clusters, one right: 0.5).
  A problem where no sample has an answer scores 0.

The intervals (``bootstrap_ci``): a two-stage (hierarchical) bootstrap, Davison & Hinkley 1997
("Bootstrap Methods and their Application", section 3.8). Each replicate resamples the P problems
with replacement, then the n samples of each chosen problem with replacement (votes stay with
their samples), and takes the mean over problems of the per-problem metric. The interval is the
percentile interval (Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13): for
level 0.95 and B replicates, the B*0.025-th and B*0.975-th ordered replicates
(``numpy.quantile(..., method="inverted_cdf")``), so both ends are values some replicate took.

What an interval means: where the score would land if the suite's problems were drawn again from
the same population of problems and the model sampled again, i.e. it aims to cover the
population mean (for avg, ``E[p]`` over problems of each problem's solve rate p). It is not an
interval for "these exact problems with infinitely many samples", which would be narrower.

Two caveats, both measured in ``tests/test_eval_metrics.py``:

- Resampling at both stages is conservative. The spread of the per-problem scores already holds
  the within-problem noise, so the second stage counts it about twice (Davison & Hinkley 1997,
  3.8, who prefer resampling the top level only). With 50 problems, p ~ Beta(2, 3) and n = 4,
  the 95% interval covers ``E[p]`` in 0.98 of simulated suites, and a paired test under the null
  gives p < 0.05 in 0.005 of them. The excess shrinks as n grows and vanishes at n = 1, where
  the second stage is a no-op. ``within=False`` resamples problems only: coverage 0.955 and a
  null rate of 0.065 in the same simulations.
- For a per-problem metric that is not linear in the samples (``pass@k`` with k > 1, ``maj``),
  resampling samples with replacement shifts the replicates: duplicates make fewer distinct
  samples, so bootstrapped pass@k runs low (Jensen). With many problems and large n the interval
  can then sit beside the value (P = 500, n = 64: pass@8 = 0.761 with a 95% interval of 0.727
  to 0.754). ``within=False`` does not have this bias.

Miller 2024 ("Adding Error Bars to Evals", arXiv:2411.00640) argues for clustered errors and
paired differences in LM evals in the same way.

Paired comparison (``paired_bootstrap``): two runs A and B on the same problems in the same row
order (n may differ). Each replicate draws one set of problem indices, shared by A and B, so the
problems' difficulty cancels in the difference; the samples within each problem are resampled
independently per run. The diff ``a - b`` gets a percentile interval and a two-sided bootstrap
p-value, ``p = min(1, 2 * min(lo, hi))`` with ``lo = (1 + #{d* <= 0}) / (B + 1)`` and ``hi``
likewise for ``d* >= 0``: the smallest alpha at which the level-(1 - alpha) percentile interval
reaches 0, with the +1 correction of North, Curtis & Sham 2002 ("A note on the calculation of
empirical P values from Monte Carlo procedures") so it is never 0 (at least 2 / (B + 1)).

That bootstrap p-value is anti-conservative on few problems (5 problems of which 3 improved: p =
0.02, where the exact sign test says 0.25), so ``r1kit eval compare`` uses ``paired_test``: the
p-value of the paired sign-flip test over problems (``sign_flip_p``; exact when at most
``EXACT_MAX_CHANGED`` problems changed, seeded Monte Carlo above), valid at any number of
problems; the interval from the paired bootstrap's standard error with a t quantile
(``t_interval``), given only from ``MIN_INTERVAL_PROBLEMS`` (30) shared problems. The verdict of
``describe`` follows p (distinguishable iff p < 1 - level), and below ``MIN_VERDICT_PROBLEMS``
(10) shared problems it is "too few problems to tell".

numpy only: no torch here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``fn(correct, votes) -> score``: ``(..., n), (..., n) -> (...)``, one score per problem."""

_CHUNK_ELEMENTS = 1 << 23
"""Replicates are scored in chunks of at most this many (replicate, problem, sample) elements:
~64 MB per int64 array, a handful alive at once inside ``maj``."""


# --- pass@k ---------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for c correct of n samples (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never forms a large binomial.

    >>> round(pass_at_k(10, 3, 1), 6)  # pass@1 is c / n
    0.3
    >>> round(pass_at_k(4, 1, 2), 6)  # 3 of the C(4, 2) = 6 pairs hold the correct sample
    0.5
    >>> pass_at_k(5, 4, 2)  # n - c < k: every k-subset holds a correct sample
    1.0
    """
    if n < 1:
        raise ValueError(f"pass_at_k: n must be >= 1, got n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in [1, n={n}], got k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c must be in [0, n={n}], got c={c}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@lru_cache(maxsize=256)
def _pass_table(n: int, k: int) -> np.ndarray:
    """pass@k for c = 0..n, shape ``(n + 1,)``."""
    table = np.array([pass_at_k(n, c, k) for c in range(n + 1)])
    table.flags.writeable = False
    return table


def pass_at_k_metric(k: int) -> MetricFn:
    """The per-problem pass@k metric: a lookup of ``pass_at_k(n, c, k)`` by c = #correct."""
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")

    def fn(correct: np.ndarray, votes: np.ndarray) -> np.ndarray:
        correct = np.asarray(correct)
        n = correct.shape[-1]
        if k > n:
            raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
        c = np.rint(correct.sum(-1)).astype(np.int64)  # (...,) number correct
        return _pass_table(n, k)[c]

    fn.__name__ = fn.__qualname__ = f"pass@{k}"
    return fn


# --- avg and maj ----------------------------------------------------------------------------


def avg(correct: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Mean over samples: avg@n on correctness, or the mean of any float matrix."""
    return np.asarray(correct, dtype=np.float64).mean(-1)


def _small_ids(votes: np.ndarray) -> np.ndarray:
    """Renumber each row's cluster ids into [0, n), keeping -1; a no-op when already there."""
    n = votes.shape[-1]
    if votes.max() < n:
        return votes
    order = np.argsort(votes, axis=-1, kind="stable")
    ranked = np.take_along_axis(votes, order, -1)  # (..., n) sorted ids
    new = np.ones(ranked.shape, dtype=bool)
    new[..., 1:] = ranked[..., 1:] != ranked[..., :-1]
    dense = np.where(ranked < 0, -1, np.cumsum(new, -1) - 1)
    out = np.empty_like(dense)
    np.put_along_axis(out, order, dense, -1)
    return out


def maj(correct: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Majority vote over all n samples; a tie between the largest clusters counts its expectation.

    Each sample's cluster size is counted with one ``bincount`` over ``row * n + id``; the
    winning samples are those whose cluster is as large as the row's largest, and the score is
    their mean correctness, which equals the mean correctness of the tied clusters (they all have
    the same size).

    >>> maj(np.array([[1, 1, 0]]), np.array([[0, 0, 1]]))  # 2 votes to 1, the 2 are right
    array([1.])
    >>> maj(np.array([[1, 0, 0, 0]]), np.array([[0, 1, -1, -1]]))  # a 1-1 tie, -1 does not vote
    array([0.5])
    """
    correct = np.asarray(correct)
    votes = np.asarray(votes)
    if votes.min(initial=0) < -1:
        raise ValueError("maj: votes must be cluster ids >= 0, or -1 for no answer")
    votes = _small_ids(votes)
    *lead, n = votes.shape
    ids = votes.reshape(-1, n)  # (R, n), R = all leading dims flattened
    rows = ids.shape[0]
    voted = ids >= 0
    key = np.arange(rows)[:, None] * n + np.where(voted, ids, 0)  # (R, n) unique per cluster
    counts = np.bincount(key[voted], minlength=rows * n)  # (R * n,) votes per (row, cluster)
    size = counts[key] * voted  # (R, n) size of each sample's cluster, 0 if it did not vote
    won = voted & (size == size.max(-1, keepdims=True))  # (R, n) samples of a largest cluster
    right = (correct.reshape(rows, n) * won).sum(-1)
    return (right / np.maximum(won.sum(-1), 1)).reshape(lead)


METRICS: dict[str, MetricFn] = {"avg": avg, "maj": maj}
"""Metrics by name."""

METRIC_FAMILIES: dict[str, Callable[[int], MetricFn]] = {"pass": pass_at_k_metric}
"""Metrics that take a k, by the name before ``@``: ``"pass@4"`` is ``pass_at_k_metric(4)``."""


def metric(name: str, n: int | None = None) -> MetricFn:
    """The metric called ``name``: ``"avg"``, ``"maj"``, or ``"<family>@<k>"`` such as ``"pass@4"``.

    With ``n`` (samples per problem), a k larger than n is an error here rather than at scoring.
    """
    if name in METRICS:
        return METRICS[name]
    match = re.fullmatch(r"(\w+)@(\d+)", name)
    if match is None or match[1] not in METRIC_FAMILIES:
        known = sorted(METRICS) + [f"{f}@<k>" for f in sorted(METRIC_FAMILIES)]
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(known)}")
    k = int(match[2])
    if n is not None and k > n:
        raise ValueError(f"metric {name!r} needs k <= n, but there are n={n} samples per problem")
    return METRIC_FAMILIES[match[1]](k)


def _as_metric(metric_fn: MetricFn | str, n: int) -> tuple[MetricFn, str]:
    if isinstance(metric_fn, str):
        return metric(metric_fn, n), metric_fn
    return metric_fn, getattr(metric_fn, "__name__", "metric")


# --- bootstrap ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A suite score with its bootstrap percentile interval."""

    value: float
    """The metric on the data as given (mean over problems)."""
    low: float
    high: float
    level: float
    """Nominal coverage of ``[low, high]``, e.g. 0.95."""


@dataclass(frozen=True)
class Comparison:
    """Run A against run B on the same problems: ``diff = a - b`` with its paired interval."""

    metric: str
    diff: float
    low: float
    high: float
    p_value: float
    """Two-sided bootstrap p-value for diff = 0; at least 2 / (samples + 1)."""
    level: float
    problems: int
    changed: int | None = None
    """Problems whose per-problem score differs between the runs (``paired_test`` sets it)."""


def _check_run(correct, votes, what: str = "") -> tuple[np.ndarray, np.ndarray]:
    correct, votes = np.asarray(correct), np.asarray(votes)
    if correct.ndim != 2:
        raise ValueError(f"{what}correct must be (problems, samples), got shape {correct.shape}")
    if votes.shape != correct.shape:
        raise ValueError(
            f"{what}votes has shape {votes.shape} but correct has {correct.shape}; "
            "they must match (one vote per sample)"
        )
    if correct.shape[0] < 1 or correct.shape[1] < 1:
        raise ValueError(f"{what}need at least one problem and one sample, got {correct.shape}")
    if not (correct.dtype == bool or np.issubdtype(correct.dtype, np.number)):
        raise ValueError(f"{what}correct must be bool or numeric, got dtype {correct.dtype}")
    if np.issubdtype(correct.dtype, np.floating) and not np.isfinite(correct).all():
        raise ValueError(f"{what}correct has NaN or inf values")
    if not np.issubdtype(votes.dtype, np.integer):
        raise ValueError(f"{what}votes must be integer cluster ids, got dtype {votes.dtype}")
    if votes.min() < -1:
        raise ValueError(f"{what}votes must be cluster ids >= 0, or -1 for no answer")
    return correct, _small_ids(votes)


def _check_options(samples: int, level: float) -> None:
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _resample(correct: np.ndarray, votes: np.ndarray, rows: np.ndarray, rng, within: bool):
    """Rows ``(R, P)`` chosen problems -> their samples, resampled if ``within``: ``(R, P, n)``."""
    n = correct.shape[1]
    if not within:
        return correct[rows], votes[rows]
    flat = rows[..., None] * n  # (R, P, 1) offset of each chosen problem's first sample
    if n > 1:
        flat = flat + rng.integers(0, n, size=rows.shape + (n,))  # (R, P, n)
    return correct.ravel()[flat], votes.ravel()[flat]


def _replicates(runs: list, fn: MetricFn, samples: int, seed: int, within: bool) -> np.ndarray:
    """Bootstrap suite scores of each ``(correct, votes)`` run, sharing problems: ``(runs, B)``."""
    rng = np.random.default_rng(seed)
    problems = runs[0][0].shape[0]
    width = max(correct.shape[1] for correct, _ in runs)
    chunk = max(1, _CHUNK_ELEMENTS // (problems * width))
    out = np.empty((len(runs), samples))
    for start in range(0, samples, chunk):
        stop = min(start + chunk, samples)
        rows = rng.integers(0, problems, size=(stop - start, problems))  # (R, P)
        for i, (correct, votes) in enumerate(runs):
            out[i, start:stop] = fn(*_resample(correct, votes, rows, rng, within)).mean(-1)
    return out


def _interval(dist: np.ndarray, level: float) -> tuple[float, float]:
    qs = [(1 - level) / 2, (1 + level) / 2]
    low, high = np.quantile(dist, qs, method="inverted_cdf")
    return float(low), float(high)


def bootstrap_replicates(
    correct,
    votes,
    metric_fn: MetricFn | str,
    *,
    samples: int = 1000,
    seed: int = 0,
    within: bool = True,
) -> np.ndarray:
    """The bootstrap distribution of the suite score, ``(samples,)``.

    Two-stage (problems, then samples within each problem); ``within=False``: problems only.
    """
    _check_options(samples, 0.5)
    correct, votes = _check_run(correct, votes)
    fn, _ = _as_metric(metric_fn, correct.shape[1])
    return _replicates([(correct, votes)], fn, samples, seed, within)[0]


def bootstrap_ci(
    correct,
    votes,
    metric_fn: MetricFn | str,
    *,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    within: bool = True,
) -> Estimate:
    """The suite score (mean over problems of ``metric_fn``) with a two-stage percentile interval.

    ``metric_fn`` is a metric function or its name (``"pass@4"``); ``within=False`` resamples
    problems only (see the module docstring for when that is the better choice).
    """
    _check_options(samples, level)
    correct, votes = _check_run(correct, votes)
    fn, _ = _as_metric(metric_fn, correct.shape[1])
    dist = _replicates([(correct, votes)], fn, samples, seed, within)[0]
    low, high = _interval(dist, level)
    return Estimate(float(fn(correct, votes).mean()), low, high, level)


def paired_bootstrap(
    a_correct,
    a_votes,
    b_correct,
    b_votes,
    metric_fn: MetricFn | str,
    *,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    within: bool = True,
) -> Comparison:
    """A against B on the same problems (same row order): paired interval and p-value of a - b.

    Problem indices are drawn once per replicate for both runs; samples within each problem are
    resampled independently per run (not at all with ``within=False``).
    """
    _check_options(samples, level)
    a = _check_run(a_correct, a_votes, "A: ")
    b = _check_run(b_correct, b_votes, "B: ")
    if a[0].shape[0] != b[0].shape[0]:
        raise ValueError(
            f"A has {a[0].shape[0]} problems and B has {b[0].shape[0]}; a paired comparison "
            "needs the same problems in the same row order"
        )
    fn, name = _as_metric(metric_fn, min(a[0].shape[1], b[0].shape[1]))
    dist_a, dist_b = _replicates([a, b], fn, samples, seed, within)
    diffs = dist_a - dist_b  # (samples,)
    low, high = _interval(diffs, level)
    below = (1 + np.count_nonzero(diffs <= 0)) / (samples + 1)
    above = (1 + np.count_nonzero(diffs >= 0)) / (samples + 1)
    diff = float(fn(*a).mean() - fn(*b).mean())
    p = min(1.0, 2 * min(below, above))
    return Comparison(name, diff, low, high, p, level, a[0].shape[0])


# --- paired test over problems -----------------------------------------------------------------

MIN_VERDICT_PROBLEMS = 10
"""Fewer shared problems than this: ``describe`` says "too few problems to tell". Even when every
one of 9 problems moves the same way, all that is known is about 9 problems of a suite."""

MIN_INTERVAL_PROBLEMS = 30
"""Fewer shared problems than this: ``paired_test`` reports no interval (``low``/``high`` NaN).
Below it a bootstrap interval covers less than its level (one sample per problem, P = 10: the
percentile interval about 0.88); from 30 the ``t_interval`` holds 0.94 to 0.96 in the
simulations of ``tests/test_compare_stats.py``."""

EXACT_MAX_CHANGED = 20
"""Up to this many problems whose score differs, the sign-flip p-value is enumerated exactly
(2^20 sign patterns, counted by meet in the middle); above it, Monte Carlo with a fixed seed."""

_TOL = 1e-9  # per-problem differences are sums of fractions; equal sums may differ in the last bit


def _signed_sums(x: np.ndarray) -> np.ndarray:
    """Every ``sum(s_i * x_i)`` over ``s in {-1, 1}^len(x)``: ``(2 ** len(x),)``."""
    sums = np.zeros(1)
    for v in x:
        sums = np.concatenate([sums + v, sums - v])
    return sums


def _exact_sign_flip(d: np.ndarray) -> float:
    """Exact two-sided p of ``|sum d|`` over all sign patterns of the non-zero entries of ``d``."""
    d = d[np.abs(d) > _TOL]
    target = abs(d.sum()) - _TOL
    if len(d) == 0 or target <= 0:
        return 1.0
    half = len(d) // 2
    left, right = _signed_sums(d[:half]), np.sort(_signed_sums(d[half:]))
    # pairs with |l + r| >= target: r >= target - l, or r <= -target - l (disjoint: target > 0)
    above = len(right) - np.searchsorted(right, target - left, side="left")
    below = np.searchsorted(right, -target - left, side="right")
    return float((above + below).sum()) / 2.0 ** len(d)


def sign_flip_p(diffs, *, samples: int = 10000, seed: int = 0) -> np.ndarray:
    """Two-sided p-value of the paired sign-flip (permutation) test, per row of ``diffs``.

    ``diffs``: ``(..., P)`` per-problem differences between two runs. Under the null that the two
    runs are draws of the same policy, each problem's pair of scores is exchangeable, so each
    difference is as likely to have either sign; the p-value is the fraction of the ``2^P`` sign
    patterns whose ``|sum|`` reaches the observed one (Fisher 1935; Good 2005, "Permutation,
    Parametric and Bootstrap Tests of Hypotheses", 3.1). Problems that did not change do not
    enter. With at most ``EXACT_MAX_CHANGED`` changed problems it is enumerated exactly;
    otherwise ``samples`` random patterns (seeded, the same for every row) give
    ``(1 + hits) / (samples + 1)``, which is valid at any ``samples`` (Phipson & Smyth 2010).
    Exact when both runs have the same n samples per problem; with different n, a problem's two
    scores are not exactly exchangeable and the test is approximate.

    >>> float(sign_flip_p([1.0, 1.0, 1.0, 0.0, 0.0]))  # 3 of 5 changed, all up: 2 / 8
    0.25
    """
    d = np.asarray(diffs, dtype=float)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if d.ndim == 0 or d.shape[-1] < 1 or not np.isfinite(d).all():
        raise ValueError(f"diffs must be finite, shape (..., problems), got shape {d.shape}")
    rows = d.reshape(-1, d.shape[-1])  # (S, P)
    out = np.empty(len(rows))
    changed = (np.abs(rows) > _TOL).sum(-1)  # (S,)
    exact = changed <= EXACT_MAX_CHANGED
    for i in np.flatnonzero(exact):
        out[i] = _exact_sign_flip(rows[i])
    if not exact.all():
        rng = np.random.default_rng(seed)
        signs = rng.integers(0, 2, size=(samples, rows.shape[1])) * 2.0 - 1  # (B, P)
        todo = np.flatnonzero(~exact)
        for start in range(0, len(todo), 256):
            idx = todo[start:start + 256]
            target = np.abs(rows[idx].sum(-1)) - _TOL  # (s,)
            hits = (np.abs(rows[idx] @ signs.T) >= target[:, None]).sum(-1)  # (s,)
            out[idx] = (1 + hits) / (samples + 1)
    return out.reshape(d.shape[:-1])


def distinguishable(p_value: float, problems: int, level: float = 0.95):
    """The verdict rule of ``describe``: p below ``1 - level`` on at least
    ``MIN_VERDICT_PROBLEMS`` problems (works on arrays too)."""
    return (np.asarray(p_value) < 1 - level) & (np.asarray(problems) >= MIN_VERDICT_PROBLEMS)


def t_interval(dist: np.ndarray, estimate: float, problems: int,
               level: float) -> tuple[float, float]:
    """``estimate +- t_{P-1} * se``, with ``se`` the standard deviation of the bootstrap
    replicates ``dist`` times ``sqrt(P / (P - 1))``: the normal-theory interval with a bootstrap
    standard error (Efron & Tibshirani 1993, 12.2 and 13.3). On few problems of 0/1 scores it
    covers better than the percentile interval, which behaves like ``z`` and a divide-by-P spread
    where ``t`` and P - 1 are due (P = 30, n = 1: 0.94 to 0.95 against 0.92 to 0.94)."""
    se = float(np.std(dist, ddof=1)) * np.sqrt(problems / (problems - 1))
    half = _t_quantile((1 + level) / 2, problems - 1) * se
    return estimate - half, estimate + half


def _t_quantile(q: float, dof: int) -> float:
    """Student's t quantile from the normal one, Cornish-Fisher expansion (Abramowitz & Stegun
    26.7.5): within 1e-4 of the exact value for dof >= 10, and 29 is the least used here."""
    z = NormalDist().inv_cdf(q)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / dof + g2 / dof ** 2 + g3 / dof ** 3 + g4 / dof ** 4


def paired_test(
    a_correct,
    a_votes,
    b_correct,
    b_votes,
    metric_fn: MetricFn | str,
    *,
    samples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    within: bool = True,
) -> Comparison:
    """A against B on the same problems (same row order), honest at any number of problems:
    ``p_value`` from the paired sign-flip test over problems (``sign_flip_p``), the interval from
    the paired bootstrap's standard error (``paired_bootstrap``'s replicates, ``t_interval``),
    reported only with at least ``MIN_INTERVAL_PROBLEMS`` problems (NaN below)."""
    _check_options(samples, level)
    a = _check_run(a_correct, a_votes, "A: ")
    b = _check_run(b_correct, b_votes, "B: ")
    if a[0].shape[0] != b[0].shape[0]:
        raise ValueError(
            f"A has {a[0].shape[0]} problems and B has {b[0].shape[0]}; a paired comparison "
            "needs the same problems in the same row order"
        )
    fn, name = _as_metric(metric_fn, min(a[0].shape[1], b[0].shape[1]))
    per_problem = fn(*a) - fn(*b)  # (P,)
    problems = len(per_problem)
    diff = float(per_problem.mean())
    p = float(sign_flip_p(per_problem, samples=samples, seed=seed))
    low = high = float("nan")
    if problems >= MIN_INTERVAL_PROBLEMS:
        dist_a, dist_b = _replicates([a, b], fn, samples, seed, within)
        low, high = t_interval(dist_a - dist_b, diff, problems, level)
        if a[0].dtype == bool and b[0].dtype == bool:  # 0/1 scores: a difference is in [-1, 1]
            low, high = max(low, -1.0), min(high, 1.0)
    changed = int((np.abs(per_problem) > _TOL).sum())
    return Comparison(name, diff, low, high, p, level, problems, changed)


def describe(comparison: Comparison, name_a: str, name_b: str, scale: float = 100) -> str:
    """One plain sentence: which run is higher, by how much, the interval, p, and the verdict.

    ``scale`` multiplies the score (100: a 0-1 score in points).
    """
    c = comparison
    unit = " points" if scale == 100 else ""
    pct = f"{c.level * 100:g}%"

    def num(x: float) -> str:
        return f"{x * scale + 0.0:.3g}"  # + 0.0 turns -0.0 into 0.0

    if c.changed == 0 or (c.diff == 0 and c.low == 0 and c.high == 0):
        return (
            f"{name_a} and {name_b} are identical on {c.metric}: no problem's score differs "
            f"(p = 1), so they are not distinguishable."
        )
    if c.problems < MIN_VERDICT_PROBLEMS:
        verdict = (f"too few problems to tell ({c.problems} shared; a verdict needs at least "
                   f"{MIN_VERDICT_PROBLEMS}).")
    elif distinguishable(c.p_value, c.problems, c.level):
        verdict = "distinguishable from noise."
    else:
        verdict = f"not distinguishable from noise at the {pct} level."
    if math.isnan(c.low):
        tail = (f"(p = {c.p_value:.2g}; no interval under {MIN_INTERVAL_PROBLEMS} problems): "
                f"{verdict}")
    else:
        tail = f"({pct} CI {{}} to {{}}, p = {c.p_value:.2g}): {verdict}"
    if c.diff == 0:
        return f"{name_a} and {name_b} score the same on {c.metric} " + tail.format(
            num(c.low), num(c.high)
        )
    if c.diff > 0:
        head = f"{name_a} is higher than {name_b} on {c.metric} by {num(c.diff)}{unit} "
        return head + tail.format(num(c.low), num(c.high))
    head = f"{name_b} is higher than {name_a} on {c.metric} by {num(-c.diff)}{unit} "
    return head + tail.format(num(-c.high), num(-c.low))


__all__ = [
    "METRICS",
    "METRIC_FAMILIES",
    "Comparison",
    "Estimate",
    "avg",
    "bootstrap_ci",
    "bootstrap_replicates",
    "describe",
    "distinguishable",
    "maj",
    "metric",
    "paired_bootstrap",
    "paired_test",
    "pass_at_k",
    "pass_at_k_metric",
    "sign_flip_p",
]
