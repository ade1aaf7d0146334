"""What a training run shows and records: metrics JSONL, TensorBoard, W&B, a progress bar, sample
tables, and engine logs kept out of the terminal.

Files in the run directory (``log.out_dir``): ``metrics.jsonl`` (one JSON object per step),
``tb/`` (TensorBoard events), ``samples.md`` (the sample tables, appended), ``train.log`` (r1kit's
log) and ``engine.log`` (vLLM's and transformers' log records).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

# Loggers whose records go to engine.log only, never to the terminal.
ENGINE_LOGGERS = ("vllm", "transformers", "torch", "httpx", "py.warnings")
PROGRESS_KEYS = (("reward", "reward"), ("acc", "reward/accuracy"), ("len", "response_len"),
                 ("kl", "kl"), ("mis", "mismatch/kl"), ("s/step", "time/step"))


def route_logs(out_dir: Path, level: str = "INFO", name: str = "train.log") -> None:
    """r1kit's records to ``name`` (warnings also to stderr); engine records to ``engine.log``
    only."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    train = logging.FileHandler(out_dir / name)
    train.setFormatter(fmt)
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.WARNING)
    root.addHandler(train)
    engine = logging.FileHandler(out_dir / "engine.log")
    engine.setFormatter(fmt)
    for name in ENGINE_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers = [engine]
        lg.propagate = False
    logging.captureWarnings(True)  # library warnings are engine noise: engine.log
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's file descriptors 1 and 2 to ``path`` for the block: what engines
    print from C++ or their own progress bars during start-up goes to the file, not the
    terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class RunLog:
    """Per-step metrics to JSONL, TensorBoard and W&B, and a progress bar on stderr."""

    def __init__(self, out_dir: Path, total_steps: int, start_step: int, *,
                 tensorboard: bool = True, wandb: bool = False, config: dict | None = None,
                 show_progress: bool = True):
        self.out_dir = out_dir
        self.jsonl = open(out_dir / "metrics.jsonl", "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events a killed run wrote past its checkpoint are dropped on resume
            self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=start_step + 1)
        self.wandb = None
        if wandb:
            import wandb as wb

            self.wandb = wb.init(config=config, dir=str(out_dir), resume="allow")
        self.bar = tqdm(total=total_steps, initial=start_step, desc="GRPO", unit="step",
                        file=sys.stderr, dynamic_ncols=True, disable=not show_progress)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        scalars = {k: v for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        self.bar.set_postfix({short: f"{metrics[k]:.3g}" for short, k in PROGRESS_KEYS
                              if isinstance(metrics.get(k), (int, float))}, refresh=False)
        self.bar.update(1)

    def samples(self, step: int, rows: list[tuple[str, str, float]], width: int = 70) -> None:
        """A table of (question, completion, reward) to the terminal and ``samples.md``."""
        lines = [f"step {step}: sample completions", f"{'reward':>7}  {'question':<24}  completion"]
        for q, text, r in rows:
            flat = " ".join(text.split())
            lines.append(f"{r:7.2f}  {q[:24]:<24}  {flat[:width]}")
        table = "\n".join(lines)
        self.bar.write(table, file=sys.stderr)
        with open(self.out_dir / "samples.md", "a") as f:
            f.write("```\n" + table + "\n```\n\n")

    def close(self) -> None:
        self.bar.close()
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
