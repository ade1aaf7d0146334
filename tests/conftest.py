"""Shared test set-up: a per-run cache for the tiny policies, small vLLM CPU memory, and the
``slow`` marker decided by measured time (docs/TESTING.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# vLLM's CPU backend reserves this many GiB of KV cache per engine; tests need little.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

if os.environ.get("R1KIT_TEST_DEVICE"):  # `make gpu-check` runs a subset with tensors on a GPU
    import torch

    torch.set_default_device(os.environ["R1KIT_TEST_DEVICE"])

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """One cache of tiny checkpoints for the whole run (each family is built once)."""
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="session")
def tiny_qwen(tiny_cache) -> Path:
    from r1kit.tiny import build_tiny

    return build_tiny("qwen3_moe", cache_dir=tiny_cache)


@pytest.fixture(scope="session")
def tiny_deepseek(tiny_cache) -> Path:
    from r1kit.tiny import build_tiny

    return build_tiny("deepseek_v3", cache_dir=tiny_cache)


# --- `slow` by measured time -------------------------------------------------------------------
# tests/durations.json holds each test's seconds (setup + call + teardown) from a whole-suite run;
# `make durations` refreshes it. A test recorded above SLOW_ABOVE_S is marked slow, on top of the
# marks written in the test files; a test the file does not know (a new one) counts as fast.
DURATIONS = Path(__file__).resolve().with_name("durations.json")
SLOW_ABOVE_S = 10.0

# The fast path (`make test-fast`, `pytest -m "not slow"`) always runs these, whatever their time:
# one end-to-end training step, one evaluation and one sandboxed run. Collection fails if one of
# them is gone or marked slow, so the promise cannot rot silently.
FAST_PATH = {
    "tests/test_dry_run.py::test_dry_run_trains_two_steps[r1_zero_qwen3_30b_a3b.yaml]":
        "`r1kit train --dry-run`: two GRPO steps (sample, score, update) on a reduced Qwen3-MoE",
    "tests/test_eval_run.py::test_math_gold_answers_score_full_marks":
        "`r1kit eval` on MATH-500 and GSM8K (replay engine): grading, samples, summary, report",
    "tests/test_sandbox.py::test_stdin_to_stdout_and_result_fields":
        "a program run in the bwrap sandbox",
}


def recorded_seconds(path: Path = DURATIONS) -> dict[str, float]:
    if not path.is_file():
        raise pytest.UsageError(f"{path} is missing: run `make durations` (docs/TESTING.md)")
    return json.loads(path.read_text())["seconds"]


def slow_by_time(nodeids, seconds: dict[str, float], threshold: float = SLOW_ABOVE_S,
                 keep_fast=FAST_PATH) -> set[str]:
    """The node ids to mark slow: recorded above ``threshold`` and not kept in the fast path."""
    return {n for n in nodeids if n not in keep_fast and seconds.get(n, 0.0) > threshold}


def fast_path_problems(collected: set[str], slow: set[str], narrowed: set[str],
                       keep_fast=FAST_PATH) -> list[str]:
    """What is wrong with the fast path, given the collected node ids, those marked slow, and the
    files whose collection the command line narrowed to single tests (``file.py::test``). A fast
    path test is checked only where its file was collected whole."""
    problems = []
    files = {n.split("::")[0] for n in collected}
    for nid in keep_fast:
        path = nid.split("::")[0]
        if nid in slow:
            problems.append(f"{nid} is marked slow but must stay in the fast path")
        elif path in files and path not in narrowed and nid not in collected:
            problems.append(f"{nid} is no longer collected")
    return problems


def _narrowed_files(config) -> set[str]:
    root, here = config.rootpath, config.invocation_params.dir
    out = set()
    for arg in config.args:
        path, sep, _ = str(arg).partition("::")
        if sep:
            try:
                out.add((here / path).resolve().relative_to(root).as_posix())
            except ValueError:
                pass
    return out


@pytest.hookimpl(tryfirst=True)  # before -m deselects: `-m "not slow"` sees these marks
def pytest_collection_modifyitems(config, items):
    slow = slow_by_time([item.nodeid for item in items], recorded_seconds())
    for item in items:
        if item.nodeid in slow:
            item.add_marker(pytest.mark.slow)
    marked = {item.nodeid for item in items if item.get_closest_marker("slow")}
    problems = fast_path_problems({item.nodeid for item in items}, marked, _narrowed_files(config))
    if problems:
        raise pytest.UsageError(
            "tests/conftest.py FAST_PATH: " + "; ".join(problems)
            + " (pick another test that does the same work end to end; docs/TESTING.md)")
