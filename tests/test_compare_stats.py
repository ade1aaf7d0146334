"""``r1kit eval compare`` does not overclaim: the sign-flip p-value against enumeration, the
false-positive rate of "distinguishable" and the coverage of the reported interval by simulation,
no verdict on few problems, and every difference between the runs besides the model in the output.

Simulations use fixed seeds (deterministic). Observed at the time of writing, 1000 null suites
per size (n = 4, p_i ~ Beta(2, 3)): "distinguishable" in 0 (5 problems: too few to tell), 0.018
(10), 0.042 (30) and 0.032 (200) of them. Coverage of the 95% interval over 400 suites: 0.958
(30 problems, n = 1, no difference), 0.935 (30, n = 1, B 15 points better where it can be),
0.958 (200, n = 1) and 0.985 (30, n = 4: the second bootstrap stage is conservative). With one
sample per problem and bimodal difficulty (Beta(0.3, 0.3)) it was 0.92 to 0.94 in longer runs.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from eval import metrics as M
from eval.report import compare_markdown, compare_runs
from r1kit.cli import main


def brute_force_p(d: np.ndarray) -> float:
    """Two-sided sign-flip p by listing every sign pattern."""
    target = abs(d.sum()) - 1e-9
    hits = [abs(np.dot(s, d)) >= target for s in itertools.product([-1, 1], repeat=len(d))]
    return float(np.mean(hits))


def test_sign_flip_matches_enumeration_and_the_sign_test():
    assert M.sign_flip_p([1.0, 1.0, 1.0, 0.0, 0.0]) == 0.25  # the exact sign test on 3 of 3
    assert M.sign_flip_p([0.0, 0.0]) == 1.0
    assert M.sign_flip_p([0.5, -0.5]) == 1.0
    rng = np.random.default_rng(0)
    for _ in range(30):
        d = rng.integers(-4, 5, size=rng.integers(1, 12)) / 4
        assert M.sign_flip_p(d) == pytest.approx(brute_force_p(d), abs=1e-12), d


def test_monte_carlo_sign_flip_agrees_with_the_exact_count():
    rng = np.random.default_rng(1)
    d = rng.integers(-2, 3, size=(3, 24)) / 2.0
    d[:, :23] += (d[:, :23] == 0) * 0.5  # at least 23 changed problems: above the exact limit
    exact = [M._exact_sign_flip(row) for row in d]
    mc = M.sign_flip_p(d, samples=20000, seed=3)
    assert mc.shape == (3,)
    assert np.allclose(mc, exact, atol=0.01), (mc, exact)
    assert np.array_equal(M.sign_flip_p(d[1], samples=20000, seed=3), mc[1])  # same per row


@pytest.mark.parametrize("problems", [5, 10, 30, 200])
def test_same_policy_is_called_distinguishable_at_most_5_percent(problems):
    rng = np.random.default_rng(problems)
    sims, n = 1000, 4
    p = rng.beta(2, 3, size=(sims, problems, 1))
    a = (rng.random((sims, problems, n)) < p).mean(-1)  # avg@4 per problem, (S, P)
    b = (rng.random((sims, problems, n)) < p).mean(-1)
    pvals = M.sign_flip_p(a - b, samples=2000, seed=0)
    rate = M.distinguishable(pvals, problems).mean()
    assert rate <= 0.05, rate
    if problems >= 30:
        assert rate > 0.02, rate  # a test that never rejects would pass the line above too


@pytest.mark.parametrize("problems, n, shift", [(30, 1, 0.0), (30, 1, 0.15), (200, 1, 0.15),
                                                (30, 4, 0.15)])
def test_interval_covers_the_population_difference_where_reported(problems, n, shift):
    rng = np.random.default_rng(problems + n)
    big = rng.beta(2, 3, size=10**6)
    truth = (np.clip(big + shift, 0, 1) - big).mean()
    sims, hits = 400, 0
    for sim in range(sims):
        pa = rng.beta(2, 3, size=problems)
        a = rng.random((problems, n)) < pa[:, None]
        b = rng.random((problems, n)) < np.clip(pa + shift, 0, 1)[:, None]
        votes = np.full(a.shape, -1)
        c = M.paired_test(b, votes, a, votes, "avg", samples=500, seed=sim)
        hits += c.low <= truth <= c.high
    # 95% nominal; 400 suites give a standard error of about 0.011
    assert hits / sims >= 0.93, hits / sims


def test_no_interval_and_no_verdict_on_few_problems():
    a = np.zeros((5, 2), bool)
    b = a.copy()
    b[:3] = True  # 3 of 5 problems go from 0 to 2 of 2: the example
    votes = np.full(a.shape, -1)
    c = M.paired_test(b, votes, a, votes, "avg")
    assert c.diff == pytest.approx(0.6) and c.p_value == 0.25 and c.changed == 3
    assert np.isnan(c.low) and np.isnan(c.high)
    text = M.describe(c, "B", "A")
    assert text == ("B is higher than A on avg by 60 points (p = 0.25; no interval under 30 "
                    "problems): too few problems to tell (5 shared; a verdict needs at least "
                    "10).")
    big = np.zeros((29, 1), bool)
    c = M.paired_test(~big, np.full(big.shape, -1), big, np.full(big.shape, -1), "avg")
    assert np.isnan(c.low) and c.p_value == pytest.approx(1 / 2001)  # Monte Carlo floor
    assert M.describe(c, "B", "A").endswith("): distinguishable from noise.")


# --- whole runs on disk -----------------------------------------------------------------------


def write_run(path: Path, correct: dict[str, list[list[bool]]], *, engine: str = "hf",
              settings: dict | None = None) -> Path:
    """An eval run folder as ``r1kit eval`` leaves it, for suites of given correctness."""
    (path / "samples").mkdir(parents=True)
    summary = {"model": "m", "engine": engine, "suites": {}}
    saved = {}
    for suite, rows in correct.items():
        n = len(rows[0])
        with open(path / "samples" / f"{suite}.jsonl", "w") as f:
            for i, row in enumerate(rows):
                comps = [{"correct": c, "answer": "1" if c else "0", "format": 1.0, "tokens": 5,
                          "chars": 9, "finish_reason": "stop"} for c in row]
                f.write(json.dumps({"id": f"{suite}-{i}", "completions": comps}) + "\n")
        summary["suites"][suite] = {"kind": "math", "n": n, "ks": [1]}
        saved[suite] = {"model": "m", "n": n, "temperature": 0.6, "top_p": 0.95,
                        "max_tokens": 64, "stop": [], "prompt_style": "r1_zero", "seed": 0,
                        **(settings or {})}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "settings.json").write_text(json.dumps(saved))
    return path


def test_cli_on_five_problems_says_too_few_to_tell(tmp_path, capsys):
    a = write_run(tmp_path / "a", {"s": [[False, False]] * 5})
    b = write_run(tmp_path / "b", {"s": [[True, True]] * 3 + [[False, False]] * 2})
    out = tmp_path / "cmp.json"
    assert main(["eval", "compare", str(a), str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "too few problems to tell" in text and "distinguishable from noise" not in text
    m = json.loads(out.read_text())["suites"]["s"]["metrics"]["avg@n"]
    assert m["p_value"] == 0.25 and m["low"] is None and m["high"] is None
    assert "| avg@2 |" not in text and "| avg@n | 0.0 | 60.0 | 60.0 | n/a | 0.25 |" in text


def test_differences_besides_the_model_are_said(tmp_path, capsys):
    rows = [[True, False]] * 12
    a = write_run(tmp_path / "a", {"s": rows, "only_a": rows}, engine="hf")
    b = write_run(tmp_path / "b", {"s": rows, "only_b": rows}, engine="replay",
                  settings={"prompt_style": "chat", "temperature": 1.0, "seed": 7})
    result = compare_runs(a, b)
    notes = " | ".join(result["notes"])
    assert "different engines: A 'hf', B 'replay'" in notes
    assert "only A has suite(s) only_a" in notes and "only B has suite(s) only_b" in notes
    assert "prompt_style 'r1_zero' vs 'chat'" in notes and "temperature 0.6 vs 1.0" in notes
    assert "seed" not in notes  # a different seed is what a second run is for
    assert main(["eval", "compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert text.count("**Not like for like:**") == 4 and "only_b" in text
    same = compare_runs(a, a)
    assert same["notes"] == [] and "Not like for like" not in compare_markdown(same)
