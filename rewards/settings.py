"""The ``reward`` section of a recipe, and the one place it becomes reward specs and a scorer.

The field docs are what ``r1kit <command> --help`` prints (``r1kit.config`` composes the sections).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rewards.registry import RewardSpec
from rewards.scorer import Scorer


@dataclass
class RewardConfig:
    funcs: list[str] = field(default_factory=lambda: ["accuracy", "format"])
    """Reward functions by registry name or dotted import path (``pkg.module:function``)."""
    weights: list[float] = field(default_factory=lambda: [1.0, 0.5])
    """One weight per reward function; the total reward is the weighted sum."""
    overlong_buffer: int = 32
    """DAPO's soft overlong buffer in tokens: ``soft_overlong`` is 0 up to
    ``rollout.max_tokens - overlong_buffer``, then falls linearly to -1 at ``rollout.max_tokens``."""
    timeout_s: float = 10.0
    """Per-sample time limit of a reward; a reward past it scores 0 and is counted."""
    workers: int = 2
    """Worker processes that score in parallel."""

    def specs(self, max_tokens: int) -> list[RewardSpec]:
        """The rewards as ``RewardSpec`` s. Length rewards take their lengths from the rollout:
        the completion budget is ``max_tokens`` (``rollout.max_tokens``).

        >>> [s.kwargs for s in RewardConfig(["soft_overlong"], [1.0]).specs(64)]
        [{'max_len': 64, 'cache_len': 32}]
        """
        settings = {
            "soft_overlong": {"max_len": max_tokens, "cache_len": self.overlong_buffer},
            "cosine": {"max_len": max_tokens},
        }
        return [RewardSpec(name, weight, settings.get(name, {}))
                for name, weight in zip(self.funcs, self.weights)]

    def scorer(self, max_tokens: int) -> Scorer:
        """A started ``Scorer`` of these rewards (close it, or use it as a context manager)."""
        return Scorer(self.specs(max_tokens), workers=self.workers, timeout_s=self.timeout_s)
