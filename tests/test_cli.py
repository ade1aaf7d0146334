"""The r1kit console script end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def r1kit(*args: str, cache=None, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if cache is not None:
        env["R1KIT_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", "r1kit", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)


def test_help_lists_commands_and_unknown_command_fails():
    r = r1kit("--help")
    assert r.returncode == 0
    for cmd in ("tiny", "generate", "train", "grade", "sandbox", "bench"):
        assert f"  {cmd}" in r.stdout
    r = r1kit("trian")
    assert r.returncode == 2 and "unknown command 'trian'" in r.stderr
    # training is never started by accident: a bare `r1kit train` prints its usage
    r = r1kit("train")
    assert r.returncode == 2 and "usage: r1kit train" in r.stderr


def test_generate_help_comes_from_field_docs():
    r = r1kit("generate", "--help")
    assert r.returncode == 0
    assert "rollout.n (int, default 4)" in r.stdout
    assert "Completions per prompt (the GRPO group size)." in r.stdout


def test_tiny_builds_then_hits_cache(tiny_cache):
    r = r1kit("tiny", "--family", "qwen3_moe", cache=tiny_cache)
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    assert path.startswith(str(tiny_cache)) and os.path.isfile(os.path.join(path, "config.json"))
    again = r1kit("tiny", "--family", "qwen3_moe", cache=tiny_cache)
    assert again.stdout.strip() == path


@pytest.mark.slow
def test_generate_hf_writes_scored_groups(tiny_cache, tmp_path):
    out = tmp_path / "run"
    r = r1kit("generate", "recipes/tiny_generate_hf.yaml", "data.num_prompts=2", "rollout.n=3",
              "rollout.max_tokens=16", f"log.out_dir={out}", cache=tiny_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["completions"] == 6 and metrics["tokens_per_s"] > 0
    assert metrics["peak_memory_mb"] > 0
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(row["completions"]) == 3 for row in rows)
    for row in rows:
        for c in row["completions"]:
            assert len(c["token_ids"]) == len(c["logprobs"])
            assert isinstance(c["reward"], float)
    # a random-init policy neither answers correctly nor keeps the format
    assert metrics["reward_mean"] <= 0.0 + 1e-9
    # stdout is the metrics JSON alone; the last stderr line says where outputs went
    assert json.loads(r.stdout)["completions"] == 6
    assert r.stderr.strip().splitlines()[-1].startswith(f"r1kit: wrote {out}/completions.jsonl")
    assert metrics["reward_failures/accuracy"] == 0
    assert (out / "engine.log").exists()
    # sampling and scoring show progress on stderr (tqdm's final state of each bar)
    assert "sampling: 100%" in r.stderr and "2/2" in r.stderr
    assert "scoring: 100%" in r.stderr and "6/6" in r.stderr


def test_generate_stops_when_a_reward_fails_on_every_sample(tiny_cache, tmp_path):
    out = tmp_path / "run"
    r = r1kit("generate", "recipes/tiny_generate_hf.yaml", "data.num_prompts=2", "rollout.n=2",
              "rollout.max_tokens=8", "reward.funcs=[format, os:getcwd]", "reward.weights=[1, 1]",
              f"log.out_dir={out}", cache=tiny_cache)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(
        "r1kit: reward os:getcwd failed on all 4 samples")
    assert json.loads((out / "metrics.json").read_text())["reward_failures/os:getcwd"] == 4


@pytest.mark.slow
@pytest.mark.vllm
def test_generate_with_vllm_from_the_demo_recipe(tiny_cache, tmp_path):
    out = tmp_path / "run"
    r = r1kit("generate", "recipes/tiny_generate.yaml", "data.num_prompts=4", "rollout.n=4",
              f"log.out_dir={out}", cache=tiny_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["engine"] == "vllm" and metrics["completions"] == 16
    for key in ("reward/accuracy", "reward/format", "reward/soft_overlong"):
        assert key in metrics
    # completions respect the recipe's rollout.max_tokens
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    lengths = [len(c["token_ids"]) for row in rows for c in row["completions"]]
    assert max(lengths) <= 96


@pytest.mark.slow
@pytest.mark.vllm
def test_bench_rollout_quick_writes_json(tiny_cache, tmp_path):
    out = tmp_path / "bench.json"
    r = r1kit("bench", "rollout", "--quick", "--sync-repeats", "2", "--out", str(out),
              cache=tiny_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {c["engine"] for c in result["cells"]} == {"hf", "vllm"}
    assert all(c["tokens_per_s"] > 0 for c in result["cells"])
    assert 0 < result["weight_sync_seconds"]["median"] < 60
    assert "weight sync into vLLM" in r.stdout
