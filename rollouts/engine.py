"""The one interface the trainer sees: a rollout engine.

HF (``rollouts.hf``), colocated vLLM (``rollouts.vllm_engine``) and vLLM server
(``rollouts.server``) engines all satisfy ``Engine``; the trainer never asks which it holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence, runtime_checkable

from tqdm import tqdm

from rollouts.types import GenerationStats, Group, Sampling


@runtime_checkable
class Engine(Protocol):
    last_stats: GenerationStats | None
    """Cost of the most recent ``generate`` call (tokens/s, peak memory)."""

    def generate(self, prompts: Sequence[str], n: int, sampling: Sampling) -> list[Group]:
        """Sample ``n`` completions for each prompt; one ``Group`` per prompt, in order."""
        ...

    def update_weights(self, model: Any) -> None:
        """Make the engine sample from ``model``'s current weights (a transformers or peft
        model, possibly MoE, possibly LoRA-wrapped)."""
        ...

    def sleep(self, level: int = 1) -> None:
        """Give accelerator memory back while the trainer runs: the KV cache, and the weights
        (level 1: kept on the host; level 2: dropped, for a weight sync to replace). A no-op
        where the backend has nothing to give back (documented per engine)."""
        ...

    def wake(self, tags: Sequence[str] | None = None) -> None:
        """Undo ``sleep``: everything, or only ``tags`` (``"weights"``, then ``"kv_cache"``
        once the weights are synced, so that the two are never resident beside the trainer's
        gradients at once)."""
        ...

    def close(self) -> None:
        """Free everything the engine holds, child processes included."""
        ...


def check_generate_args(prompts: Sequence[str], n: int) -> None:
    """Errors every engine raises the same way for bad ``generate`` input."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")


def peak_memory_bytes(device: Any = None) -> int:
    """What ``GenerationStats.peak_memory_bytes`` reports: peak allocated memory of a CUDA
    ``device`` (the current one if None and CUDA is available), else this process's peak RSS."""
    import resource

    import torch

    on_gpu = torch.cuda.is_available() if device is None else device.type == "cuda"
    if on_gpu:
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def generate_chunk(engine, prompts: list[str], n: int, sampling, index: int) -> list[Group]:
    """``engine.generate`` of chunk ``index`` of a job sampled in chunks: with seed
    ``sampling.seed + index`` (distinct draws for repeated prompts, and the same draws when a
    stopped job samples that chunk again)."""
    seed = None if sampling.seed is None else sampling.seed + index
    return engine.generate(prompts, n, dataclasses.replace(sampling, seed=seed))


def sample_with_progress(engine, prompts: list[str], n: int, sampling, chunk: int,
                         show: bool):
    """``engine.generate`` over ``chunk`` prompts at a time under a progress bar (chunk ``i``
    through ``generate_chunk``). Returns the groups and the summed ``GenerationStats``."""
    groups, total = [], GenerationStats(0, 0, 0, 0.0, 0)
    with tqdm(total=len(prompts), desc="sampling", unit="prompt", disable=not show,
              dynamic_ncols=True) as bar:
        for i, start in enumerate(range(0, len(prompts), chunk)):
            groups += generate_chunk(engine, prompts[start:start + chunk], n, sampling, i)
            total = total.plus(engine.last_stats)
            bar.update(engine.last_stats.prompts)
    return groups, total
