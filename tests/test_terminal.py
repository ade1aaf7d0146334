"""What a user sees on the terminal, in subprocesses as the console script runs: a training run
that made no update says so and fails; warnings never land on a progress bar's line; Ctrl-C
during train, eval or generate prints one line saying what is kept and how to resume (exit 130,
no traceback), and generate keeps what it sampled; generate says when a vLLM engine starts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO

TINY = ["rollout.n=2", "train.prompts_per_step=1", "reward.workers=1",
        "train.tensorboard=false", "train.sample_every=0"]


def start(*args: str) -> subprocess.Popen:
    """``r1kit ARGS`` in its own session (Ctrl-C in a terminal reaches the whole group); the
    tiny policy comes from the user's cache, as in tests/test_train.py."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    return subprocess.Popen([sys.executable, "-m", "r1kit", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def ctrl_c_when(proc: subprocess.Popen, ready, timeout: float = 120) -> tuple[str, str]:
    """Send SIGINT to ``proc``'s process group once ``ready()`` holds; its stdout and stderr."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "never got ready"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    return proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def no_update_run(tmp_path_factory) -> tuple[int, str, str]:
    """``r1kit train`` with progress bars where no step updates: the random-init policy never
    answers right in 4 tokens, so every group has zero reward variance (each step warns)."""
    out = tmp_path_factory.mktemp("no-update")
    proc = start("train", "tests/data/tiny_grpo_random.yaml", f"log.out_dir={out}", *TINY,
                 "train.steps=2", "rollout.max_tokens=4", "algo.max_refills=0",
                 "reward.funcs=[accuracy]", "reward.weights=[1.0]")
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr


def test_a_run_with_no_update_says_so_and_fails(no_update_run):
    """Exit 1 and, last on stderr, one line saying why; the result JSON is still printed."""
    code, out, err = no_update_run
    assert code == 1, err[-3000:]
    assert json.loads(out)["version"] == 0
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("r1kit: training made no update in 2 steps: every group had zero "
                           "reward variance"), last


def test_warnings_do_not_land_on_the_progress_bar_line(no_update_run):
    """The per-step warning is printed while the training bar is on screen: the bar is cleared
    first, so after the last carriage return of its line the warning starts the line."""
    _, _, err = no_update_run
    warned = [line for line in err.split("\n") if "zero reward variance after" in line]
    assert len(warned) == 2, err[-3000:]
    for line in warned:
        assert re.match(r"\d{4}-\d\d-\d\d \S+ WARNING r1kit", line.split("\r")[-1]), repr(line)


@pytest.mark.slow
def test_ctrl_c_during_training_names_the_checkpoint_to_resume_from(tmp_path):
    """Ctrl-C once a checkpoint exists: exit 130 and one line on stderr giving the step it
    stopped at and the checkpoint a re-run resumes from (the newest one on disk)."""
    proc = start("train", "tests/data/tiny_grpo_random.yaml", f"log.out_dir={tmp_path}", *TINY,
                 "train.steps=100000", "train.save_every=1", "rollout.max_tokens=8",
                 "reward.funcs=[rewards.toy:digit_share]", "reward.weights=[1.0]",
                 "algo.mask_truncated=false", "--no-progress")
    ckpts = tmp_path / "checkpoints"
    out, err = ctrl_c_when(proc, lambda: (ckpts / "step-000001").is_dir())
    assert proc.returncode == 130, err[-3000:]
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    m = re.fullmatch(r"r1kit: interrupted at step (\d+) of 100000; re-run the same command to "
                     r"resume from (step-\d{6})", lines[0])
    assert m, lines[0]
    newest = max(p.name for p in ckpts.iterdir() if p.name.startswith("step-"))
    assert m[2] == newest and int(m[1]) > int(newest.split("-")[1])


def test_ctrl_c_during_eval_says_how_many_problems_are_kept(tmp_path):
    """Ctrl-C once the first problem is written: exit 130 and one line saying how many problems
    are kept and that a re-run resumes; the samples file holds exactly that many."""
    suite = tmp_path / "sums.jsonl"
    suite.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)})
                             + "\n" for i in range(1000)))
    run = tmp_path / "run"
    proc = start("eval", "--model", "tiny:qwen3_moe", "--suite", f"{suite}:math", "-n", "1",
                 "--out-dir", str(run), "eval.max_tokens=8", "eval.batch_problems=1",
                 "--no-progress")
    samples = run / "samples" / "sums.jsonl"
    out, err = ctrl_c_when(proc, lambda: samples.is_file() and samples.stat().st_size > 0)
    assert proc.returncode == 130, err[-3000:]
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    m = re.fullmatch(rf"r1kit: eval interrupted after (\d+) of 1000 problems \(kept in "
                     rf"{re.escape(str(run))}/samples\); re-run the same command to resume",
                     lines[0])
    assert m, lines[0]
    assert int(m[1]) == len(samples.read_text().splitlines()) >= 1


GENERATE = ["generate", "recipes/tiny_generate_hf.yaml", "data.num_prompts=6", "rollout.n=2",
            "rollout.max_tokens=8", "rollout.batch_size=1"]


@pytest.mark.slow
def test_generate_keeps_what_it_sampled_when_stopped_and_resumes(tmp_path):
    """Ctrl-C once the first chunk is written: exit 130, one line, the lines written so far
    kept; the same command again samples only the rest, leaving those lines as they were."""
    run = tmp_path / "run"
    lines = run / "completions.jsonl"
    proc = start(*GENERATE, f"log.out_dir={run}", "--no-progress")
    out, err = ctrl_c_when(proc, lambda: lines.is_file() and lines.stat().st_size > 0)
    assert proc.returncode == 130 and out == "" and "Traceback" not in err, err[-3000:]
    said = err.strip().splitlines()
    m = re.fullmatch(rf"r1kit: generate interrupted after (\d+) of 6 prompts \(kept in "
                     rf"{re.escape(str(lines))}\); re-run the same command to resume", said[-1])
    assert m and len(said) == 1, err[-3000:]
    kept = lines.read_text().splitlines()
    assert int(m[1]) == len(kept) >= 1
    again = start(*GENERATE, f"log.out_dir={run}", "--no-progress")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    metrics = json.loads(out)
    assert metrics["prompts"] == 6 and metrics["sampled_now"] == 6 - len(kept)
    rows = lines.read_text().splitlines()
    assert rows[:len(kept)] == kept and len(rows) == 6


@pytest.mark.vllm
def test_generate_says_while_the_vllm_engine_starts(tmp_path):
    """The vLLM engine takes a minute or more to start, its output going to engine.log: a phase
    line on stderr says so first (the run is stopped once it appears)."""
    run = tmp_path / "run"
    proc = start("generate", "recipes/tiny_generate_hf.yaml", "rollout.engine=vllm",
                 "data.num_prompts=2", "rollout.n=2", "rollout.max_tokens=8",
                 f"log.out_dir={run}", "--no-progress")
    watchdog = threading.Timer(300, lambda: os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "starting vLLM engine" in line:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        watchdog.cancel()
    assert seen and seen[-1] == f"r1kit: starting vLLM engine (log: {run}/engine.log)\n", seen
