"""Training checkpoints: written atomically, pruned to the last k, found again for ``resume=auto``.

A checkpoint is a folder ``{out_dir}/checkpoints/step-{step:06d}`` holding:

- ``model/``: the policy in HF format (``save_pretrained``; with LoRA, the adapter only) plus the
  tokenizer, so ``AutoModelForCausalLM.from_pretrained`` (or ``PeftModel.from_pretrained``) opens
  it directly;
- ``trainer.pt``: optimiser and scheduler state, the trainer's counters and data position, and
  the RNG states of torch (CPU and CUDA), Python and numpy. The engines' sampling needs no saved
  state: each step's sampling seed is a function of ``rollout.seed``, the step and the refill
  round (``GRPOTrainer.rollout``), and the HF engine samples under a forked RNG.

Under FSDP2 (several ranks, ``train.parallel: fsdp2``) no rank holds the whole model, so a
checkpoint (``save_sharded_checkpoint``) holds instead:

- ``shards/``: ``torch.distributed.checkpoint`` (DCP) files of the model's and the optimiser's
  state, each rank writing its own shards (``get_state_dict``: fully-qualified names, so a
  checkpoint can be loaded on another number of ranks, or on one process, and DCP reshards);
- ``rng.rank{r}.pt``: rank ``r``'s RNG states (a resume on the same number of ranks restores
  every rank's; on another number it restores rank 0's everywhere and is not bit-identical);
- ``trainer.pt``: as above without the optimiser (it is in ``shards/``), plus the world size;
- ``model/`` only when exported (``train.export_every`` and the last step): the full state dict
  gathered to rank 0's CPU (``get_model_state_dict(full_state_dict=True, cpu_offload=True)``)
  and written by ``save_pretrained``, which transformers, peft and vLLM open.

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


def save_sharded_checkpoint(out_dir: str | Path, step: int, model: Any, optimizer: Any,
                            tokenizer: Any, trainer_state: dict[str, Any], keep_last: int, *,
                            rank: int, world: int, export: bool) -> Path:
    """Every rank: write checkpoint ``step`` of an FSDP2 run (module docstring) atomically,
    then rank 0 prunes to the newest ``keep_last``. ``model`` is the policy (its parameters
    DTensor shards), ``trainer_state`` the trainer's without the optimiser."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
    )

    d = checkpoints_dir(out_dir)
    final = d / f"{PREFIX}{step:06d}"
    box: list[Any] = [None]
    if rank == 0:
        d.mkdir(parents=True, exist_ok=True)
        _remove_partial(d)
        box = [tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=d)]
    dist.broadcast_object_list(box, src=0)
    tmp = Path(box[0])
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp / "shards")
        del model_sd, optim_sd
        torch.save(rng_state(), tmp / f"rng.rank{rank}.pt")
        if export:  # a collective: every rank sends its shards, rank 0 holds them on its CPU
            full = get_model_state_dict(model, options=StateDictOptions(
                full_state_dict=True, cpu_offload=True))
            if rank == 0:
                model.save_pretrained(tmp / "model", state_dict=full)
                tokenizer.save_pretrained(tmp / "model")
            del full
        dist.barrier()
        if rank == 0:
            torch.save({**trainer_state, "rng": rng_state(), "world": world, "sharded": True},
                       tmp / "trainer.pt")
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if rank == 0:
        for old in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def is_sharded(ckpt: str | Path) -> bool:
    """Whether ``ckpt`` was written by ``save_sharded_checkpoint``."""
    return (Path(ckpt) / "shards").is_dir()


def load_sharded_state(ckpt: str | Path, model: Any, optimizer: Any) -> None:
    """Load ``shards/`` into ``model`` and ``optimizer``, whatever their sharding now (DCP
    reshards: FSDP2 on any number of ranks, or one process's plain tensors). Every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=Path(ckpt) / "shards")
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])


def load_trainer_state(ckpt: str | Path, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """The ``trainer.pt`` of a checkpoint; restores the RNG states as a side effect (rank
    ``rank``'s own where the checkpoint holds them, see ``save_sharded_checkpoint``)."""
    # On the CPU: the optimiser's load_state_dict moves its state to each parameter's device.
    state = torch.load(Path(ckpt) / "trainer.pt", weights_only=False, map_location="cpu")
    own = Path(ckpt) / f"rng.rank{rank}.pt"
    same = state.get("world", 1) == world
    set_rng_state(torch.load(own, weights_only=False, map_location="cpu") if same and own.is_file() else state["rng"])
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
