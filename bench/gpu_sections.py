"""The process ``make gpu-check`` runs its GRPO-step sections in, one after another.

``python -m bench.gpu_sections OUT DEVICE SMALL [DEADLINE]``: saves the random-init policy
(``bench.gpu_step.save_model``), then runs ``SECTIONS`` in order, each catching its own exception
(recorded with its traceback; the next section runs) and rewriting ``OUT`` as it ends, so that a
section that kills the process loses only itself. A section not started by ``DEADLINE``
(``time.time()``) is skipped. The sections are described in ``bench.gpu_step`` (``grpo_step``,
``logprob_memory``, ``sync_debug``), ``bench.gpu_deterministic`` and ``bench.gpu_trl``; TRL's
runs after r1kit's trainer has freed its memory, and the deterministic process starts at its
turn on a GPU, at once on the CPU (where nothing is timed, so CI waits less).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import gpu_deterministic, gpu_trl
from bench.gpu_step import (
    BUDGET_SPENT,
    SIZES,
    Context,
    error_of,
    grpo_step,
    logprob_memory,
    save_model,
    sync_debug,
)

SECTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "grpo_step": grpo_step, "logprob_memory": logprob_memory, "sync_debug": sync_debug,
    "deterministic": gpu_deterministic.deterministic_check, "trl_step": gpu_trl.trl_step}


def run_sections(out: Path, device: str, small: bool, deadline: float = math.inf) -> None:
    """Every section in turn, each one's result (or error) written to ``out`` as it ends; a
    section not started by ``deadline`` (``time.time()``) is skipped."""
    import torch

    res: dict[str, Any] = {"sizes": asdict(SIZES[small])}
    with tempfile.TemporaryDirectory(prefix="r1kit-gpu-step-") as tmp:
        folder = Path(tmp) / "model"
        ctx = None
        try:
            t0 = time.perf_counter()
            save_model(folder, small, device)
            res["model_seconds"] = time.perf_counter() - t0
            ctx = Context(device, small, folder, Path(tmp))
            res["device"] = ctx.name
            if not ctx.cuda:  # nothing is timed on the CPU: CI waits less
                ctx.early_deterministic = gpu_deterministic.start(ctx)
        except Exception as e:  # noqa: BLE001  (every section then records the same error)
            res.update({name: {"error": f"model: {error_of(e)}"} for name in SECTIONS})
        for name, section in SECTIONS.items():
            if ctx is None:
                break
            t0 = time.perf_counter()
            if time.time() > deadline:
                res[name] = {"skipped": BUDGET_SPENT}
                continue
            try:
                res[name] = section(ctx)
            except Exception as e:  # noqa: BLE001  (recorded; the next section runs)
                res[name] = {"error": error_of(e), "traceback": traceback.format_exc()[-3000:]}
                if device == "cuda":
                    torch.cuda.empty_cache()
            res[name]["section_seconds"] = time.perf_counter() - t0
            out.write_text(json.dumps(res, default=float))
        if ctx is not None:
            ctx.close()
    out.write_text(json.dumps(res, default=float))


def main(argv: list[str]) -> int:
    run_sections(Path(argv[0]), argv[1], argv[2] == "1",
                 float(argv[3]) if len(argv) > 3 else math.inf)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
