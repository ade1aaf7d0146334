"""The suite's own time budget: `make test-fast` (`pytest -m "not slow"`) fits in a few minutes on
2 cores and still runs the fast-path tests of tests/conftest.py; `slow` follows the measured times
of tests/durations.json (docs/TESTING.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import (
    DURATIONS,
    FAST_PATH,
    REPO,
    SLOW_ABOVE_S,
    fast_path_problems,
    recorded_seconds,
    slow_by_time,
)

# Recorded seconds the fast set may add up to. `make test-fast` must end within 5 min on 2 cores;
# the rest is collection, session fixtures charged to a first user, and a busier machine.
FAST_BUDGET_S = 240


@pytest.fixture(scope="module")
def fast_ids() -> list[str]:
    """The node ids `pytest -m "not slow"` selects from the whole suite (a collection only)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                        "-p", "no:cacheprovider", "-m", "not slow"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    ids = []
    for line in r.stdout.splitlines():
        if not line.strip():
            break  # the node ids end at the first blank line
        ids.append(line.strip())
    assert ids and all("::" in i for i in ids), r.stdout[-3000:]
    return ids


def test_fast_set_fits_the_budget(fast_ids):
    seconds = recorded_seconds()
    total = sum(seconds.get(i, 0.0) for i in fast_ids)
    top = sorted(fast_ids, key=lambda i: -seconds.get(i, 0.0))[:5]
    assert total < FAST_BUDGET_S, (
        f"the fast set's recorded time is {total:.0f} s (budget {FAST_BUDGET_S} s); slowest: "
        + ", ".join(f"{i} {seconds.get(i, 0.0):.0f} s" for i in top))


def test_durations_cover_the_fast_set(fast_ids):
    """A test missing from the table counts as fast; many missing means the table is stale (tests
    renamed or added since `make durations`) and the fast set's time is unknown."""
    seconds = recorded_seconds()
    unknown = [i for i in fast_ids if i not in seconds]
    assert len(unknown) <= 0.15 * len(fast_ids), (
        f"{len(unknown)} of {len(fast_ids)} fast tests have no time in {DURATIONS.name}: "
        f"run `make durations`; e.g. {unknown[:5]}")


def test_fast_path_tests_are_collected_and_not_slow(fast_ids):
    assert set(FAST_PATH) <= set(fast_ids), sorted(set(FAST_PATH) - set(fast_ids))


def test_slow_is_decided_by_the_recorded_time():
    table = {"t.py::a": SLOW_ABOVE_S + 0.1, "t.py::b": SLOW_ABOVE_S - 0.1, "t.py::c": 500.0}
    ids = ["t.py::a", "t.py::b", "t.py::c", "t.py::new"]  # `new` has no recorded time
    assert slow_by_time(ids, table) == {"t.py::a", "t.py::c"}
    assert slow_by_time(ids, table, threshold=600) == set()
    assert slow_by_time(ids, table, keep_fast={"t.py::c": "why"}) == {"t.py::a"}


def test_a_fast_path_test_gone_or_marked_slow_is_reported():
    keep = {"t.py::e2e": "why"}
    assert fast_path_problems({"t.py::e2e", "t.py::x"}, set(), set(), keep) == []
    assert fast_path_problems({"t.py::x"}, set(), set(), keep) == [
        "t.py::e2e is no longer collected"]
    assert fast_path_problems({"t.py::e2e"}, {"t.py::e2e"}, set(), keep) == [
        "t.py::e2e is marked slow but must stay in the fast path"]
    # a run of other files, or of single tests of t.py (t.py::x on the command line), is fine
    assert fast_path_problems({"u.py::y"}, set(), set(), keep) == []
    assert fast_path_problems({"t.py::x"}, set(), {"t.py"}, keep) == []


def test_every_recorded_time_is_a_node_id_and_seconds():
    seconds = recorded_seconds()
    assert seconds, f"{DURATIONS} is empty: run `make durations`"
    for nid, s in seconds.items():
        assert "::" in nid and nid.split("::")[0].endswith(".py") and s >= 0, (nid, s)


def test_measure_durations_reads_junit_and_keeps_old_times_of_failures(tmp_path):
    import json

    from tests.measure_durations import main

    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" time="70.5"'
        ' timestamp="2026-12-07T12:00:00" hostname="h">'
        '<testcase classname="tests.test_dry_run" name="test_every_real_recipe_is_covered"'
        ' time="1.5" />'
        '<testcase classname="tests.test_train" name="test_async_needs_the_server_engine"'
        ' time="0.2"><failure message="boom">x</failure></testcase>'
        '<testcase classname="rewards.math.__init__" name="rewards.math" time="0.01" />'
        '</testsuite></testsuites>')
    out = tmp_path / "durations.json"
    out.write_text(json.dumps({"seconds": {
        "tests/test_train.py::test_async_needs_the_server_engine": 9.0,
        "tests/test_gone.py::t": 1}}))
    assert main([str(xml), "--out", str(out), "--source", "a test"]) == 0
    data = json.loads(out.read_text())
    assert data["source"] == "a test" and data["suite_seconds"] == 70.5
    assert data["seconds"] == {"tests/test_dry_run.py::test_every_real_recipe_is_covered": 1.5,
                               "tests/test_train.py::test_async_needs_the_server_engine": 9.0,
                               "rewards/math/__init__.py::rewards.math": 0.01}
