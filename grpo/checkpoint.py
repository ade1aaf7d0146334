"""Training checkpoints: written atomically, pruned to the last k, found again for ``resume=auto``.

A checkpoint is a folder ``{out_dir}/checkpoints/step-{step:06d}`` holding:

- ``model/``: the policy in HF format (``save_pretrained``; with LoRA, the adapter only) plus the
  tokenizer, so ``AutoModelForCausalLM.from_pretrained`` (or ``PeftModel.from_pretrained``) opens
  it directly;
- ``trainer.pt``: optimiser and scheduler state, the trainer's counters and data position, and
  the RNG states of torch (CPU and CUDA), Python and numpy. The engines' sampling needs no saved
  state: each step's sampling seed is a function of ``rollout.seed``, the step and the refill
  round (``GRPOTrainer.rollout``), and the HF engine samples under a forked RNG.

Atomicity: everything is written into a hidden temporary folder beside it, which is renamed to
its final name only when complete (a rename within one file system is atomic). A process killed
at any moment therefore leaves either the previous set of checkpoints, or that set plus the new
one; never a half checkpoint under a final name. Temporary folders left by a killed save are
removed by the next save or resume. Older checkpoints are deleted only after the new one exists.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

PREFIX = "step-"


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    d = checkpoints_dir(out_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and (p / "trainer.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def save_checkpoint(out_dir: str | Path, step: int, model: Any, tokenizer: Any,
                    trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep_last``."""
    d = checkpoints_dir(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    _remove_partial(d)
    final = d / f"{PREFIX}{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=d))
    try:
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        torch.save({**trainer_state, "rng": rng_state()}, tmp / "trainer.pt")
        _fsync_tree(tmp)
        if final.exists():  # a re-run of the same step after a resume
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(out_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(ckpt: str | Path) -> dict[str, Any]:
    """The ``trainer.pt`` of a checkpoint; restores the RNG states as a side effect."""
    state = torch.load(Path(ckpt) / "trainer.pt", weights_only=False)
    set_rng_state(state["rng"])
    _remove_partial(Path(ckpt).parent)
    return state


def _remove_partial(d: Path) -> None:
    for p in d.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
