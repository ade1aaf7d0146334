"""Scorer with real worker processes and rewards that misbehave in every way we know."""

import functools
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rewards.registry import RewardSpec, WeightedReward, build, combine
from rewards.scorer import FailureCounts, Scorer, ScorerConfig

# Rewards below are module-level so spawned workers can import them by reference.


def length_reward(completions, **row):
    return [float(len(c)) for c in completions]


def matches_answer(completions, answer, **row):
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]


def raises_on_boom(completions, **row):
    if any("boom" in c for c in completions):
        raise RuntimeError("boom")
    return [1.0] * len(completions)


def hangs_on_hang(completions, **row):
    if any("hang" in c for c in completions):
        time.sleep(10_000)
    return [1.0] * len(completions)


def exits_on_die(completions, **row):
    if any("die" in c for c in completions):
        os._exit(3)
    return [1.0] * len(completions)


def allocates_on_big(completions, **row):
    if any("big" in c for c in completions):
        blob = bytearray(3 * 2**30)  # past the 1 GiB limit the test sets
        return [float(len(blob))] * len(completions)
    return [1.0] * len(completions)


def nan_on_nan(completions, **row):
    return [float("nan") if "nan" in c else 1.0 for c in completions]


def orphan_then_hang(completions, pidfile, **row):
    """Starts a long-lived child, records its pid, then hangs: the child must not outlive us."""
    if any("orphan" in c for c in completions):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10_000)"])
        with Path(pidfile[0]).open("a") as f:
            f.write(f"{child.pid}\n")
        time.sleep(10_000)
    return [1.0] * len(completions)


def weighted(fn, weight=1.0):
    return WeightedReward(label=fn.__name__, fn=fn, weight=weight)


BAD = {"boom": raises_on_boom, "hang": hangs_on_hang, "die": exits_on_die, "big": allocates_on_big}
CONFIG = ScorerConfig(workers=2, timeout_s=1.0, chunk_size=4, memory_limit_mb=1024, preload=())


@pytest.fixture(scope="module")
def scorer():
    rewards = [weighted(length_reward, 0.5), weighted(matches_answer, 2.0)]
    rewards += [weighted(fn) for fn in BAD.values()] + [weighted(nan_on_nan)]
    with Scorer(rewards, CONFIG) as s:
        s.warmup()
        yield s


def test_a_reward_failing_on_every_sample_warns_once_for_the_batch(scorer, caplog):
    with caplog.at_level(logging.WARNING, logger="rewards.scorer"):
        result = scorer.score(["boom"] * 6, answer=["x"] * 6)
    assert result.failures["raises_on_boom"] == FailureCounts(errors=6)
    lines = [r.getMessage() for r in caplog.records if "raises_on_boom" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "failed on 6 of 6 samples (6 errors, 0 timeouts, 0 crashes)" in lines[0]
    assert "sample 0 (error): RuntimeError: boom" in lines[0]


def test_misbehaving_rewards_score_zero_and_are_counted(scorer, caplog):
    completions = ["ok1", "boom", "hang", "die", "big", "ok22", "nan", "ok333", "ok4444"]
    answers = ["ok1", "x", "hang", "x", "x", "ok22", "x", "x", "ok4444"]
    with caplog.at_level(logging.WARNING, logger="rewards.scorer"):
        result = scorer.score(completions, answer=answers)
    n = len(completions)
    # Well-behaved rewards are exact for every sample.
    assert result.per_reward["length_reward"] == [float(len(c)) for c in completions]
    assert result.per_reward["matches_answer"] == [1, 0, 1, 0, 0, 1, 0, 0, 1]
    # Each bad reward fails exactly on its trigger sample and scores 1.0 elsewhere.
    for marker, fn in BAD.items():
        bad = completions.index(marker)
        assert result.failed[fn.__name__] == [bad]
        assert result.per_reward[fn.__name__] == [0.0 if i == bad else 1.0 for i in range(n)]
    assert result.failures["raises_on_boom"] == FailureCounts(errors=1)
    assert result.failures["hangs_on_hang"] == FailureCounts(timeouts=1)
    assert result.failures["exits_on_die"] == FailureCounts(crashes=1)
    assert result.failures["allocates_on_big"] == FailureCounts(errors=1)
    assert result.failures["nan_on_nan"] == FailureCounts(errors=1)
    assert result.failures["length_reward"].total == 0
    expected_total = [
        0.5 * len(c)
        + 2.0 * m
        + sum(result.per_reward[f.__name__][i] for f in BAD.values())
        + (0.0 if c == "nan" else 1.0)
        for i, (c, m) in enumerate(zip(completions, result.per_reward["matches_answer"]))
    ]
    assert result.total == pytest.approx(expected_total)
    logged = caplog.text
    assert "RuntimeError: boom" in logged and "MemoryError" in logged
    assert "timeout" in logged and "crash" in logged and "non-finite" in logged

    # One warning per failing reward and batch, not one per sample.
    assert sum("raises_on_boom" in r.getMessage() for r in caplog.records) == 1

    # The pool keeps working for the next batch, and the counts accumulate.
    again = scorer.score(["a", "bb", "hang"], answer=["a", "x", "x"])
    assert again.per_reward["length_reward"] == [1.0, 2.0, 4.0]
    assert again.per_reward["matches_answer"] == [1.0, 0.0, 0.0]
    assert again.failures["hangs_on_hang"] == FailureCounts(timeouts=1)
    assert scorer.failures["hangs_on_hang"] == FailureCounts(timeouts=2)
    assert scorer.warmup(timeout_s=30)  # killed workers are replaced in the background
    assert len(scorer.worker_pids()) == CONFIG.workers


def test_empty_batch_and_misaligned_columns(scorer):
    empty = scorer.score([], answer=[])
    assert empty.total == [] and empty.per_reward["length_reward"] == []
    with pytest.raises(ValueError, match="column 'answer' has 1 rows for 2"):
        scorer.score(["a", "b"], answer=["a"])


def test_close_leaves_no_workers_nor_their_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    config = ScorerConfig(workers=2, timeout_s=1.0, chunk_size=2, preload=())
    scorer = Scorer([weighted(orphan_then_hang), weighted(length_reward)], config)
    scorer.warmup()
    result = scorer.score(["a", "orphan", "c"], pidfile=[str(pidfile)] * 3)
    assert result.per_reward["orphan_then_hang"] == [1.0, 0.0, 1.0]
    assert result.failures["orphan_then_hang"] == FailureCounts(timeouts=1)
    children = [int(line) for line in pidfile.read_text().split()]
    assert len(children) == 2  # once in the chunk, once when re-scored alone
    assert scorer.warmup(timeout_s=30)
    workers = scorer.worker_pids()
    assert len(workers) == 2
    scorer.close()
    scorer.close()  # idempotent
    for pid in [*children, *workers]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(RuntimeError, match="after close"):
        scorer.score(["a"], pidfile=[str(pidfile)])


def test_workers_import_the_rewards_modules_before_the_first_batch(tmp_path, monkeypatch):
    # The first step's scoring costs what a later step's does: a reward's module (here a user's,
    # outside the registry and outside every preload) is imported while the workers start,
    # not by the first batch's tasks. The module notes each process that imports it.
    log = tmp_path / "imported.txt"
    (tmp_path / "user_reward_mod.py").write_text(
        "import os\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(f'{os.getpid()}\\n')\n"
        "def user_reward(completions, **row):\n"
        "    return [1.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_reward_mod

    with Scorer([weighted(user_reward_mod.user_reward)], CONFIG) as s:
        assert s.warmup(timeout_s=60)
        workers = s.worker_pids()
        imported = {int(p) for p in log.read_text().split()}
        assert len(workers) == 2 and set(workers) <= imported, (workers, imported)
        assert s.score(["a", "b"]).total == [1.0, 1.0]


def test_unpicklable_reward_is_rejected_up_front():
    with pytest.raises(ValueError, match="cannot be sent to worker"):
        Scorer([WeightedReward("lam", lambda completions, **row: [1.0], 1.0)], CONFIG)


def test_registry_rewards_in_workers_match_in_process():
    """The real math grader (and anything it starts) works inside the workers."""
    specs = [
        RewardSpec("accuracy"),
        RewardSpec("format", 0.5),
        RewardSpec("soft_overlong", -1.0, {"max_len": 40, "cache_len": 10}),
        RewardSpec("cosine", 1.0, {"max_len": 64}, label="cosine"),
    ]
    completions = [
        "2+2</think> \\boxed{4}",
        "half</think><answer>\\frac{1}{2}</answer>",
        "guess</think> \\boxed{5}",
        "long " * 40 + "</think> \\boxed{x^2+1}",
    ]
    answers = ["4", "0.5", "4", "1+x^2"]
    expected = combine(build(specs), completions, answer=answers)
    with Scorer(specs, workers=2, timeout_s=20.0, chunk_size=2) as scorer:
        got = scorer.score(completions, answer=answers)
    assert got.per_reward == expected.per_reward
    assert got.total == pytest.approx(expected.total)
    assert got.per_reward["accuracy"] == [1.0, 1.0, 0.0, 1.0]
    assert all(c.total == 0 for c in got.failures.values())


def test_partial_rewards_pickle_and_run():
    scaled = functools.partial(matches_answer, answer=["abc"])
    with Scorer([WeightedReward("scaled", scaled, 3.0)], CONFIG) as s:
        assert s.score(["abc"]).total == [3.0]


def test_sandboxed_code_rewards_run_inside_workers():
    """The sandbox (its own subprocesses, limits and process groups) works from a worker."""
    prompt = "def add(a, b):\n    '''Return a + b.'''\n"
    test = (
        "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n"
    )
    doubling = "```python\nprint(2 * int(input()))\n```"
    columns = {
        "prompt": [prompt] * 2,
        "test": [test] * 2,
        "entry_point": ["add"] * 2,
        "tests": [[("3\n", "6\n"), ("5\n", "10\n")]] * 2,
    }
    specs = [RewardSpec("humaneval"), RewardSpec("code")]
    with Scorer(specs, workers=2, timeout_s=30.0, preload=()) as s:
        got = s.score(["    return a + b\n", doubling], **columns)
    assert got.per_reward == {"humaneval": [1.0, 0.0], "code": [0.0, 1.0]}
    assert all(c.total == 0 for c in got.failures.values())


def test_workers_that_cannot_start_raise_instead_of_scoring_zero(tmp_path):
    """A script without a main guard makes every spawned worker fail: that is an error."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from tests.test_scorer import length_reward, weighted\n"
        "from rewards.scorer import Scorer\n"
        "scorer = Scorer([weighted(length_reward)], preload=(), timeout_s=1.0)\n"
        "scorer.score(['a', 'b'])\n"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert proc.returncode != 0
    assert "if __name__ == '__main__'" in proc.stderr
