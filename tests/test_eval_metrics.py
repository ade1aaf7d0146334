"""eval/metrics.py against enumerations, hand-worked cases, plain-loop references and simulation.

Part 1: pass@k against counting k-subsets, maj against hand-worked votes and a Python loop.
Part 2: bootstrap intervals on cases small enough to work out the bootstrap distribution by hand,
then coverage of the population mean over simulated suites.
Part 3: the paired bootstrap: identical runs, a clearly better run, pairing narrower than not
pairing, and the false-positive rate of p < 0.05 under a null. The test ``r1kit eval compare``
reports (sign flip, interval from 30 problems, verdict from 10) is in ``test_compare_stats.py``.

Simulations use fixed seeds, so every number here is deterministic. Observed at the time of
writing (P = 50 problems, p_i ~ Beta(2, 3), n = 4, 200 suites, 400 bootstrap samples): coverage
of the 95% two-stage interval 0.98 (problems only, ``within=False``: 0.955); fraction of
p < 0.05 under the null 0.005 (problems only: 0.065). The two-stage bootstrap is conservative,
as the module docstring says.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from eval import metrics
from eval.metrics import (
    METRICS,
    Comparison,
    Estimate,
    avg,
    bootstrap_ci,
    bootstrap_replicates,
    describe,
    maj,
    metric,
    paired_bootstrap,
    pass_at_k,
    pass_at_k_metric,
)

# --- Part 1: metrics ------------------------------------------------------------------------


def _pass_by_subsets(n: int, c: int, k: int) -> float:
    """The fraction of k-subsets of n samples (c of them correct) holding a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_subset_counting():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_pass_by_subsets(n, c, k), abs=1e-12)


def test_pass_at_k_large_n_is_finite_and_matches_binomials():
    for c in range(0, 201, 7):
        for k in (1, 10, 100, 200):
            got = pass_at_k(200, c, k)
            assert math.isfinite(got) and 0.0 <= got <= 1.0
            want = 1 - math.comb(200 - c, k) / math.comb(200, k)  # exact integers, then float
            assert got == pytest.approx(want, abs=1e-9)
    assert pass_at_k(200, 0, 50) == 0.0
    assert pass_at_k(200, 200, 50) == 1.0


@pytest.mark.parametrize("n, c, k", [(4, 1, 5), (4, 1, 0), (4, -1, 1), (4, 5, 1), (0, 0, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_metric_is_the_estimator_per_row():
    rng = np.random.default_rng(0)
    correct = rng.random((30, 6)) < 0.4
    for k in range(1, 7):
        got = pass_at_k_metric(k)(correct, np.zeros((30, 6), int))
        want = [pass_at_k(6, int(row.sum()), k) for row in correct]
        np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(pass_at_k_metric(1)(correct, None), correct.mean(1))
    with pytest.raises(ValueError, match="pass@7 needs at least 7"):
        pass_at_k_metric(7)(correct, None)


def test_avg_is_the_row_mean_on_floats():
    lengths = np.array([[100.0, 300.0], [50.0, 50.0]])
    np.testing.assert_allclose(avg(lengths, None), [200.0, 50.0])


# Hand-worked majority votes: (correct, votes, expected score).
MAJ_CASES = {
    "clear majority right": ([1, 1, 1, 0, 0], [0, 0, 0, 1, 2], 1.0),
    "clear majority wrong": ([1, 0, 0, 0, 0], [0, 1, 1, 1, 2], 0.0),
    "two-way tie, one right": ([1, 1, 0, 0], [0, 0, 1, 1], 0.5),
    "three-way tie, one right": ([0, 1, 0], [5, 7, 9], 1 / 3),
    "three-way tie, two right": ([1, 1, 0, 0, 1, 1], [0, 0, 1, 1, 2, 2], 2 / 3),
    "no answers at all": ([0, 0, 0], [-1, -1, -1], 0.0),
    # three -1 samples would be the largest "cluster"; they do not vote, cluster 1 has 2 votes
    "-1 does not vote": ([0, 0, 0, 1, 0, 0], [-1, -1, -1, 0, 1, 1], 0.0),
    "one answer among -1": ([0, 0, 1], [-1, -1, 3], 1.0),
    "large ids": ([1, 0, 0], [10**12, 42, 42], 0.0),
}


@pytest.mark.parametrize("name", MAJ_CASES)
def test_maj_hand_worked(name):
    correct, votes, want = MAJ_CASES[name]
    got = maj(np.array([correct], bool), np.array([votes]))
    assert got.shape == (1,)
    assert got[0] == pytest.approx(want, abs=1e-12)


def _maj_reference(correct_row, votes_row) -> float:
    """Plain-Python maj: count votes, average the correctness of the tied largest clusters."""
    counts = Counter(v for v in votes_row if v != -1)
    if not counts:
        return 0.0
    top = max(counts.values())
    winners = [v for v, size in counts.items() if size == top]
    right = {v: c for v, c in zip(votes_row, correct_row) if v != -1}
    return sum(right[v] for v in winners) / len(winners)


@pytest.mark.parametrize("sparse_ids", [False, True])
def test_maj_matches_a_plain_loop(sparse_ids):
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 5, 8, 16):
        clusters = rng.integers(1, 5)
        votes = rng.integers(-1, clusters, size=(4, 50, n))  # (R, P, n): leading dims too
        if sparse_ids:
            votes = np.where(votes >= 0, votes * 7_919 + 10**9, -1)
        # one correctness per (problem, cluster); no answer is wrong
        right_of = {}
        correct = np.zeros(votes.shape, bool)
        for idx in np.ndindex(votes.shape):
            v = votes[idx]
            if v >= 0:
                correct[idx] = right_of.setdefault((idx[:-1], v), bool(rng.random() < 0.5))
        got = maj(correct, votes)
        assert got.shape == (4, 50)
        for idx in np.ndindex(got.shape):
            assert got[idx] == pytest.approx(_maj_reference(correct[idx], votes[idx]), abs=1e-12)


def test_metric_parses_names():
    assert metric("avg") is avg and metric("maj") is maj
    assert set(METRICS) >= {"avg", "maj"}
    fn = metric("pass@4")
    assert fn.__name__ == "pass@4"
    correct = np.array([[1, 0, 0, 0, 0, 0]], bool)
    assert fn(correct, None)[0] == pytest.approx(pass_at_k(6, 1, 4))
    for bad in ("best", "pass", "pass@", "pass@x", "maj@4x", "foo@3", ""):
        with pytest.raises(ValueError, match="unknown metric"):
            metric(bad)
    with pytest.raises(ValueError, match="k <= n"):
        metric("pass@5", n=4)
    with pytest.raises(ValueError):
        metric("pass@0")


# --- Part 2: bootstrap intervals ------------------------------------------------------------

NO_VOTES = np.full((1, 2), -1)


def test_all_correct_has_a_zero_width_interval():
    correct = np.ones((7, 4), bool)
    votes = np.zeros((7, 4), int)
    for name in ("avg", "maj", "pass@2"):
        assert bootstrap_ci(correct, votes, name, samples=200) == Estimate(1.0, 1.0, 1.0, 0.95)


def test_one_problem_two_samples_hand_worked():
    # The within-problem bootstrap of [right, wrong] draws 2 of 2 with replacement: avg is
    # 0 w.p. 1/4, 0.5 w.p. 1/2, 1 w.p. 1/4. Percentile convention: the B*q-th ordered value
    # (inverted CDF). Level 0.95: q = 0.025 and 0.975 fall in the 0 and 1 atoms -> [0, 1].
    # Level 0.4: q = 0.3 and 0.7 both fall in the 0.5 atom (CDF 0.25 -> 0.75) -> [0.5, 0.5].
    correct = np.array([[True, False]])
    assert bootstrap_ci(correct, NO_VOTES, avg) == Estimate(0.5, 0.0, 1.0, 0.95)
    assert bootstrap_ci(correct, NO_VOTES, avg, level=0.4) == Estimate(0.5, 0.5, 0.5, 0.4)
    dist = bootstrap_replicates(correct, NO_VOTES, avg, samples=4000)
    for value, prob in ((0.0, 0.25), (0.5, 0.5), (1.0, 0.25)):
        assert np.mean(dist == value) == pytest.approx(prob, abs=0.03)
    # problems only: one problem, nothing varies
    assert bootstrap_ci(correct, NO_VOTES, avg, within=False) == Estimate(0.5, 0.5, 0.5, 0.95)


def test_two_problems_one_sample_hand_worked():
    # n = 1: within-problem resampling is a no-op; the problem stage draws 2 of [1, 0]:
    # the same {0: 1/4, 0.5: 1/2, 1: 1/4} distribution.
    correct = np.array([[1.0], [0.0]])
    votes = np.array([[-1], [-1]])
    assert bootstrap_ci(correct, votes, avg) == Estimate(0.5, 0.0, 1.0, 0.95)
    assert bootstrap_ci(correct, votes, avg, level=0.4) == Estimate(0.5, 0.5, 0.5, 0.4)
    a = bootstrap_replicates(correct, votes, avg, samples=500, seed=3)
    b = bootstrap_replicates(correct, votes, avg, samples=500, seed=3, within=False)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["avg", "maj"])
def test_interval_is_the_ordered_replicates(name):
    # Float scores for avg make every replicate distinct, so interpolating would show.
    rng = np.random.default_rng(2)
    correct = rng.random((40, 8)) if name == "avg" else rng.random((40, 8)) < 0.3
    votes = rng.integers(-1, 3, size=(40, 8))
    est = bootstrap_ci(correct, votes, name, samples=1000, level=0.9, seed=5)
    dist = np.sort(bootstrap_replicates(correct, votes, name, samples=1000, seed=5))
    assert est.low == dist[49] and est.high == dist[949]  # the 50th and 950th of 1000
    assert est.value == pytest.approx(METRICS[name](correct, votes).mean())


def test_bootstrap_is_deterministic_chunked_and_id_invariant(monkeypatch):
    rng = np.random.default_rng(3)
    correct = rng.random((30, 5)) < 0.5
    votes = rng.integers(-1, 4, size=(30, 5))
    first = bootstrap_ci(correct, votes, "maj", samples=300, seed=11)
    assert bootstrap_ci(correct, votes, "maj", samples=300, seed=11) == first
    assert bootstrap_ci(correct, votes, "maj", samples=300, seed=12) != first
    # renaming the clusters (sparse ids) changes nothing
    sparse = np.where(votes >= 0, votes * 1_000_003 + 17, -1)
    assert bootstrap_ci(correct, sparse, "maj", samples=300, seed=11) == first
    # many small chunks: a different random stream, the same distribution
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 30 * 5 * 7)
    chunked = bootstrap_replicates(correct, votes, "avg", samples=2000, seed=1)
    whole = bootstrap_replicates(correct, votes, "avg", samples=2000, seed=2)
    assert chunked.mean() == pytest.approx(whole.mean(), abs=0.01)
    assert chunked.std() == pytest.approx(whole.std(), rel=0.1)


def test_coverage_of_the_population_mean():
    """95% intervals over 200 simulated suites cover E[p] = a / (a + b) about 95% of the time."""
    a, b, problems, n = 2.0, 3.0, 50, 4
    truth = a / (a + b)
    rng = np.random.default_rng(1)
    hits = {True: 0, False: 0}  # within-problem resampling on / off
    votes = np.full((problems, n), -1)
    for suite in range(200):
        p = rng.beta(a, b, size=problems)
        correct = rng.random((problems, n)) < p[:, None]
        for within in hits:
            est = bootstrap_ci(correct, votes, avg, samples=400, seed=suite, within=within)
            hits[within] += est.low <= truth <= est.high
    coverage = {k: v / 200 for k, v in hits.items()}
    assert 0.90 <= coverage[True] <= 0.99, coverage
    assert 0.90 <= coverage[False] <= 0.99, coverage
    assert coverage[True] >= coverage[False]  # two stages: conservative, never narrower here


# --- Part 3: paired comparison --------------------------------------------------------------


def test_identical_runs_are_not_distinguishable():
    rng = np.random.default_rng(4)
    correct = rng.random((60, 4)) < 0.5
    votes = rng.integers(-1, 3, size=(60, 4))
    cmp = paired_bootstrap(correct, votes, correct, votes, "avg", samples=500)
    assert cmp.diff == 0.0 and cmp.low < 0 < cmp.high
    assert cmp.p_value > 0.5
    text = describe(cmp, "run_a", "run_b")
    assert "score the same" in text and "not distinguishable from noise at the 95% level" in text


def test_identical_runs_without_variance_have_p_one():
    correct = np.array([[1, 1], [0, 0], [1, 1]], bool)
    votes = np.array([[0, 0], [1, 1], [2, 2]])
    cmp = paired_bootstrap(correct, votes, correct, votes, "maj", samples=300)
    assert cmp == Comparison("maj", 0.0, 0.0, 0.0, 1.0, 0.95, 3)
    text = describe(cmp, "x", "y")
    assert "identical" in text and "not distinguishable" in text


def test_a_clearly_better_run_is_distinguishable_in_the_right_direction():
    rng = np.random.default_rng(5)
    p = rng.uniform(0.1, 0.5, size=80)
    a = rng.random((80, 4)) < p[:, None]
    b = rng.random((80, 8)) < (p + 0.4)[:, None]  # a different n is fine
    cmp = paired_bootstrap(a, np.full(a.shape, -1), b, np.full(b.shape, -1), "avg", samples=1000)
    assert cmp.diff < -0.3 and cmp.high < 0
    assert cmp.p_value == pytest.approx(2 / 1001)  # no replicate reaches 0: the +1 floor
    assert cmp.problems == 80 and cmp.metric == "avg"
    text = describe(cmp, "run_a", "run_b")
    assert text.startswith("run_b is higher than run_a on avg by ")
    assert text.endswith("): distinguishable from noise.")
    low, high = text.split("CI ")[1].split(",")[0].split(" to ")
    assert 0 < float(low) < -cmp.diff * 100 < float(high)


def test_describe_wording_and_orientation():
    cmp = Comparison("pass@1", -0.032, -0.053, -0.011, 0.004, 0.95, 500)
    assert describe(cmp, "run_a", "run_b") == (
        "run_b is higher than run_a on pass@1 by 3.2 points (95% CI 1.1 to 5.3, p = 0.004): "
        "distinguishable from noise."
    )
    cmp = Comparison("maj", 0.012, -0.01, 0.034, 0.41, 0.9, 500)
    assert describe(cmp, "base", "tuned") == (
        "base is higher than tuned on maj by 1.2 points (90% CI -1 to 3.4, p = 0.41): "
        "not distinguishable from noise at the 90% level."
    )
    cmp = Comparison("avg", 120.0, 80.0, 160.0, 0.002, 0.95, 10)
    assert describe(cmp, "a", "b", scale=1) == (
        "a is higher than b on avg by 120 (95% CI 80 to 160, p = 0.002): "
        "distinguishable from noise."
    )


def test_pairing_is_narrower_when_runs_share_difficulty():
    # Difficulty varies a lot across problems and both runs share it: the problem-level noise
    # cancels in the paired difference but not in the difference of two separate bootstraps.
    rng = np.random.default_rng(6)
    p = rng.beta(0.3, 0.3, size=100)
    a = rng.random((100, 8)) < p[:, None]
    b = rng.random((100, 8)) < np.clip(p + 0.03, 0, 1)[:, None]
    votes = np.full(a.shape, -1)
    paired = paired_bootstrap(a, votes, b, votes, avg, samples=1000)
    unpaired = bootstrap_replicates(a, votes, avg, seed=1) - bootstrap_replicates(
        b, votes, avg, seed=2
    )
    low, high = np.quantile(unpaired, [0.025, 0.975], method="inverted_cdf")
    assert paired.high - paired.low < 0.5 * (high - low)


def test_false_positive_rate_under_the_null():
    """A and B: independent draws from the same per-problem probabilities; p < 0.05 rarely."""
    rng = np.random.default_rng(2)
    problems, n, sims = 50, 4, 200
    votes = np.full((problems, n), -1)
    rejected = {True: 0, False: 0}
    for sim in range(sims):
        p = rng.beta(2, 3, size=problems)
        a = rng.random((problems, n)) < p[:, None]
        b = rng.random((problems, n)) < p[:, None]
        for within in rejected:
            cmp = paired_bootstrap(a, votes, b, votes, avg, samples=400, seed=sim, within=within)
            rejected[within] += cmp.p_value < 0.05
    rate = {k: v / sims for k, v in rejected.items()}
    assert rate[True] <= 0.08 and rate[False] <= 0.08, rate


# --- validation -----------------------------------------------------------------------------


GOOD_C = np.ones((3, 2), bool)
GOOD_V = np.zeros((3, 2), int)


@pytest.mark.parametrize(
    "correct, votes, match",
    [
        (np.ones(3, bool), np.zeros(3, int), "must be \\(problems, samples\\)"),
        (GOOD_C, np.zeros((3, 3), int), "votes has shape"),
        (np.ones((0, 2), bool), np.zeros((0, 2), int), "at least one problem"),
        (np.ones((3, 0), bool), np.zeros((3, 0), int), "at least one problem"),
        (GOOD_C, np.zeros((3, 2)), "integer cluster ids"),
        (GOOD_C, np.full((3, 2), -2), "-1 for no answer"),
        (np.full((3, 2), np.nan), GOOD_V, "NaN"),
        (np.full((3, 2), "x"), GOOD_V, "bool or numeric"),
    ],
)
def test_bad_inputs_are_rejected(correct, votes, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(correct, votes, avg)
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(GOOD_C, GOOD_V, correct, votes, avg)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(GOOD_C, GOOD_V, avg, level=1.0)
    with pytest.raises(ValueError, match="samples"):
        bootstrap_ci(GOOD_C, GOOD_V, avg, samples=0)
    with pytest.raises(ValueError, match="same problems"):
        paired_bootstrap(GOOD_C, GOOD_V, GOOD_C[:2], GOOD_V[:2], avg)
    with pytest.raises(ValueError, match="k <= n"):
        bootstrap_ci(GOOD_C, GOOD_V, "pass@3")
    with pytest.raises(ValueError, match="k <= n"):  # the smaller n of the two runs
        paired_bootstrap(np.ones((3, 4), bool), np.zeros((3, 4), int), GOOD_C, GOOD_V, "pass@3")
    with pytest.raises(ValueError, match="-1 for no answer"):
        maj(GOOD_C, np.full((3, 2), -5))
