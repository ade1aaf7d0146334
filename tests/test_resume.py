"""Kill-and-resume: ``r1kit train`` killed with SIGKILL at any moment, then run again with the
same command (``train.resume=auto``), ends bit-identical to a run never interrupted.

Every run is the real CLI in a subprocess, in deterministic CPU mode, on the tiny Qwen3-MoE with
the HF engine and a learnable reward (``rewards/toy.py``). Kills land at named points:

- a paused kill: the killed run is the CLI started through ``PAUSE_SHIM``, which wraps one
  function of the trainer so that, at the chosen step, it writes a marker file and sleeps. The
  test waits for the marker, then sends SIGKILL; nothing is left to timing. Points: mid-rollout
  (completions sampled, not yet scored), mid-update (after an optimiser step changed the weights
  in memory) and mid-save (``model/`` written into the ``.tmp-`` folder, ``trainer.pt`` not yet);
- a watched kill: the plain CLI, killed the moment a file appears in the run folder (a
  ``.tmp-step-*`` folder under ``checkpoints/``, a metrics.jsonl line), wherever it is then.

The resumed run is always the plain CLI. Checked against the reference run: every tensor of the
final ``model.safetensors`` and the optimiser state (``torch.equal``), and metrics.jsonl (steps
1..6 each exactly once, every metric but timings equal).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow

STEPS = 6
ARGS = [
    "tests/data/tiny_grpo_random.yaml",
    "rollout.n=4", "train.prompts_per_step=2", "rollout.max_tokens=16",
    f"train.steps={STEPS}", "train.save_every=2", "train.keep_last=2", "train.lr=1e-2",
    "algo.mask_truncated=false", "reward.funcs=[rewards.toy:digit_share]", "reward.weights=[1.0]",
    "reward.workers=1", "train.deterministic=true", "train.tensorboard=false",
    "train.sample_every=1",  # a sample table every step: a resume must not repeat any
]
TIMEOUT = 240  # seconds for one CLI run; a run takes ~10 s alone on 2 cores

# Runs ``r1kit.cli.main`` with one trainer function wrapped to pause at $PAUSE_POINT on trainer
# step $PAUSE_STEP (0-based: the step being computed): it writes $PAUSE_MARKER, then sleeps until
# killed. Product code is untouched.
PAUSE_SHIM = r"""
import os, sys, time
from pathlib import Path
import grpo.checkpoint as ck, r1kit.train as setup, grpo.trainer as tr
from r1kit.cli import main

POINT, STEP = os.environ["PAUSE_POINT"], int(os.environ["PAUSE_STEP"])
MARKER = os.environ["PAUSE_MARKER"]

def pause(where):
    Path(MARKER + ".part").write_text(where)
    os.rename(MARKER + ".part", MARKER)
    time.sleep(3600)

score = tr.GRPOTrainer._score
def _score(self, *args):  # rollout: sampled, not yet scored
    if POINT == "rollout" and self.step == STEP:
        pause(f"rollout step={self.step}")
    return score(self, *args)

update = tr.GRPOTrainer.update
def _update(self, batch):  # update: after the first optimiser step of this update
    if POINT == "update" and self.step == STEP:
        self.p.optimizer.register_step_post_hook(lambda *a: pause(f"update step={self.step}"))
    return update(self, batch)

save, saving = setup.save, []
def _save(trainer, *args, **kwargs):
    saving[:] = [trainer.step]
    return save(trainer, *args, **kwargs)

rng_state = ck.rng_state
def _rng_state():  # save: model/ is in the .tmp- folder, trainer.pt is not
    if POINT == "save" and saving == [STEP]:
        pause(f"save step={STEP}")
    return rng_state()

tr.GRPOTrainer._score, tr.GRPOTrainer.update = _score, _update
setup.save, ck.rng_state = _save, _rng_state
sys.exit(main(sys.argv[1:]))
"""


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, R1KIT_CACHE=str(cache), **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")])
    return env


def _cmd(out: Path, *extra: str, shim: bool = False) -> list[str]:
    head = [sys.executable, "-c", PAUSE_SHIM] if shim else [sys.executable, "-m", "r1kit.cli"]
    return [*head, "train", *ARGS, f"log.out_dir={out}", *extra, "--no-progress"]


def train(out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    """The plain CLI, run to its end."""
    return subprocess.run(_cmd(out, *extra), check=False, cwd=REPO, env=_env(cache),
                          capture_output=True, text=True, timeout=TIMEOUT)


def kill_when(proc: subprocess.Popen, ready, what: str, group: bool = False) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` is true (polled every millisecond); with
    ``group``, its whole process group (a launcher and its ranks, started in a new session)."""
    def kill() -> None:
        os.killpg(proc.pid, signal.SIGKILL) if group else proc.send_signal(signal.SIGKILL)

    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)
    kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL


def kill_paused(out: Path, cache: Path, point: str, step: int, *extra: str) -> str:
    """Start the CLI through the pause shim, SIGKILL it at ``point`` of ``step``; returns the
    marker text (where it paused)."""
    marker = out.parent / f"{out.name}.paused"
    env = _env(cache, PAUSE_POINT=point, PAUSE_STEP=str(step), PAUSE_MARKER=str(marker))
    with open(out.parent / f"{out.name}.killed.log", "w") as log:
        proc = subprocess.Popen(_cmd(out, *extra, shim=True), cwd=REPO, env=env, stdout=log,
                                stderr=log)
        kill_when(proc, marker.exists, f"the pause at {point} step {step}")
    return marker.read_text()


def ckpt_names(out: Path) -> list[str]:
    d = out / "checkpoints"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def metric_lines(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def complete_lines(out: Path) -> list[str]:
    """metrics.jsonl's complete lines (a watcher may read a line half written)."""
    path = out / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return text.splitlines()[: text.count("\n")]


def comparable(line: dict) -> dict:
    """A metrics line without its wall-clock timings."""
    return {k: v for k, v in line.items() if not k.startswith(("time/", "tokens_per_s/"))}


def final_state(out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    final = out / "checkpoints" / f"step-{STEPS:06d}"
    state = torch.load(final / "trainer.pt", weights_only=False)
    return load_file(final / "model" / "model.safetensors"), state["optimizer"]["state"]


def assert_same_as_reference(out: Path, ref: Path) -> None:
    assert ckpt_names(out) == ckpt_names(ref) == ["step-000004", "step-000006"]
    (w, opt), (w_ref, opt_ref) = final_state(out), final_state(ref)
    assert w.keys() == w_ref.keys()
    differ = [k for k in w if not torch.equal(w[k], w_ref[k])]
    assert not differ, f"{len(differ)}/{len(w)} tensors differ, e.g. {differ[:3]}"
    assert opt.keys() == opt_ref.keys()
    for i in opt:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt[i][k], opt_ref[i][k]), f"optimiser state {i}.{k} differs"
    lines, ref_lines = metric_lines(out), metric_lines(ref)
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
    for m, m_ref in zip(lines, ref_lines):
        assert comparable(m) == comparable(m_ref), f"metrics of step {m['step']} differ"
    assert (out / "samples.md").read_text() == (ref / "samples.md").read_text()


def resume(out: Path, cache: Path, ref: Path, *extra: str) -> None:
    r = train(out, cache, *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_as_reference(out, ref)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_qwen, tiny_cache) -> Path:
    """One uninterrupted run, shared by the module."""
    out = tmp_path_factory.mktemp("resume") / "reference"
    r = train(out, tiny_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = metric_lines(out)
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
    assert lines[-1]["reward"] > 0 and lines[-1]["grad_norm"] > 0  # it trained
    return out


@pytest.mark.parametrize("point, step, checkpoints_left, lines_left", [
    ("update", 1, [], 1),  # before the first checkpoint: resume starts over from step 0
    ("rollout", 3, ["step-000002"], 3),  # resume from step 2, redo step 3
    ("update", 4, ["step-000002", "step-000004"], 4),
])
def test_paused_kill_then_resume_is_bit_identical(reference, tiny_cache, tmp_path, point, step,
                                                   checkpoints_left, lines_left):
    out = tmp_path / "run"
    assert kill_paused(out, tiny_cache, point, step) == f"{point} step={step}"
    assert [n for n in ckpt_names(out) if not n.startswith(".")] == checkpoints_left
    assert len(metric_lines(out)) == lines_left
    resume(out, tiny_cache, reference)


def test_kill_during_save_leaves_no_half_checkpoint(reference, tiny_cache, tmp_path):
    out = tmp_path / "run"
    assert kill_paused(out, tiny_cache, "save", 4) == "save step=4"
    names = ckpt_names(out)
    assert names[1] == "step-000002" and len(names) == 2, names
    tmp = out / "checkpoints" / names[0]
    assert tmp.name.startswith(".tmp-step-000004-")  # the half checkpoint is hidden
    assert (tmp / "model" / "model.safetensors").is_file() and not (tmp / "trainer.pt").exists()
    resume(out, tiny_cache, reference)
    assert not list((out / "checkpoints").glob(".tmp-*"))  # removed by the resumed run


def test_watched_kills_then_resume_is_bit_identical(reference, tiny_cache, tmp_path):
    """The plain CLI, killed twice wherever it happens to be: the moment the step-2 save's
    ``.tmp-`` folder appears, then (resumed) the moment step 5's metrics line is written."""
    out = tmp_path / "run"
    ckdir = out / "checkpoints"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(_cmd(out), cwd=REPO, env=_env(tiny_cache), stdout=log, stderr=log)
        kill_when(proc, lambda: ckdir.is_dir() and any(ckdir.glob(".tmp-step-000002-*")),
                  "the step-2 save")
        assert not (ckdir / "step-000004").exists()
        proc = subprocess.Popen(_cmd(out), cwd=REPO, env=_env(tiny_cache), stdout=log, stderr=log)
        kill_when(proc, lambda: len(complete_lines(out)) >= 5, "step 5's metrics line")
    assert (ckdir / "step-000004").is_dir()
    resume(out, tiny_cache, reference)
    assert not list(ckdir.glob(".tmp-*"))


def test_resume_never_refuses_a_folder_with_checkpoints(reference, tiny_cache, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", out / "checkpoints")
    r = train(out, tiny_cache, "train.resume=never")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("r1kit: ") and "train.resume=never" in lines[0]
    assert not (out / "metrics.jsonl").exists()
    assert ckpt_names(out) == ["step-000004", "step-000006"]


ASYNC = ["rollout.engine=vllm_server", "train.async_steps=1"]


@pytest.mark.slow
@pytest.mark.vllm
def test_async_kill_then_resume_is_bit_identical(tiny_qwen, tiny_cache, tmp_path):
    """One-step-off training with the vLLM server engine: SIGKILLed after the first optimiser
    step of step 3 (0-based), while step 4's rollout is being sampled on the server, it resumes
    from step 2's checkpoint, which holds the rollout sampled ahead for step 3, and ends with the
    weights, optimiser state, metrics and samples of an uninterrupted async run."""
    ref = tmp_path / "reference"
    r = train(ref, tiny_cache, *ASYNC)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = metric_lines(ref)
    assert [m["staleness"] for m in lines] == [0] + [1] * (STEPS - 1)
    assert lines[-1]["grad_norm"] > 0
    state = torch.load(ref / "checkpoints" / "step-000004" / "trainer.pt", weights_only=False)
    # The 5th step's rollout, sampled by version 3 (three optimiser steps) while the 4th trained.
    (ahead,) = state["ahead"]
    assert ahead.version == 3 and len(ahead.groups) == 2
    out = tmp_path / "run"
    assert kill_paused(out, tiny_cache, "update", 3, *ASYNC) == "update step=3"
    assert [n for n in ckpt_names(out) if not n.startswith(".")] == ["step-000002"]
    resume(out, tiny_cache, ref, *ASYNC)
