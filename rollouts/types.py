"""Types that flow out of a rollout engine: prompts in, groups of completions out.

A ``Group`` is the unit GRPO works on: one prompt and the ``n`` completions sampled for it. Every
engine (HF, colocated vLLM, vLLM server) returns exactly these types, so nothing downstream knows
which engine produced them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_THINK_RE = re.compile(r"^(.*?)</think>(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Sampling:
    """How to sample. Engine-independent; each engine maps it onto its own sampler."""

    max_tokens: int = 256
    """Most new tokens per completion."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 keeps the whole distribution (what GRPO's ratio assumes)."""
    top_k: int = -1
    """Keep the k most likely tokens; -1 keeps all."""
    seed: int | None = None
    """Seed for reproducible sampling; None draws fresh randomness."""
    first_prompt: int = 0
    """Where this call's prompts start in a larger batch it is a share of: completion ``j`` of
    prompt ``i`` draws from the seeded stream of completion ``(first_prompt + i) * n + j``, so
    a batch split over several calls (or several ranks' engines) samples what one call would."""
    stop: tuple[str, ...] = ()
    """Strings that end a completion (not included in its text)."""
    min_tokens: int = 0
    """Fewest new tokens: neither EOS nor a stop string ends a completion before this many
    (vLLM's ``min_tokens``); 0 in RL, where the policy must learn when to stop. Benchmarks use it
    to force equal lengths on every engine."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.first_prompt < 0:
            raise ValueError(f"first_prompt must be >= 0, got {self.first_prompt}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be in [0, max_tokens={self.max_tokens}], "
                             f"got {self.min_tokens}")


def split_think(text: str) -> tuple[str, str]:
    """Split a completion into its reasoning and its answer part.

    The R1-Zero prompt ends with ``<think>``, so a completion usually starts inside the think
    block; a leading ``<think>`` is accepted too. With no ``</think>`` the whole text is reasoning
    and the answer is empty.

    >>> split_think("add 2 and 2</think> <answer>4</answer>")
    ('add 2 and 2', ' <answer>4</answer>')
    >>> split_think("<think>hmm")
    ('hmm', '')
    """
    body = text[len(THINK_OPEN):] if text.startswith(THINK_OPEN) else text
    m = _THINK_RE.match(body)
    if m is None:
        return body, ""
    return m.group(1), m.group(2)


@dataclass
class Completion:
    """One sampled continuation of a prompt."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    """The sampler's log-probability of each sampled token (same length as ``token_ids``)."""
    finish_reason: str
    """``"stop"`` (EOS or a stop string) or ``"length"`` (hit ``max_tokens``)."""
    routed_experts: torch.Tensor | None = None
    """The expert ids the routers chose at every position the engine ran forward on for this
    sequence: int16 ``(len(prompt_token_ids) + len(token_ids) - 1, L, k)``, row ``t`` being input
    position ``t`` of prompt + completion (no padding; the last sampled token is never fed back, so
    it has no row), ``L`` the MoE layers in order (dense layers skipped), ``k`` the experts per
    token in the router's own order. Feed it, with a leading batch dim, to
    ``grpo.routing.replay_routing``. None unless the engine records routing (``HFEngine(...,
    record_routing=True)``)."""

    @property
    def think(self) -> str:
        return split_think(self.text)[0]

    @property
    def answer(self) -> str:
        return split_think(self.text)[1]


@dataclass
class Group:
    """One prompt and the ``n`` completions sampled for it."""

    prompt: str
    prompt_token_ids: list[int]
    completions: list[Completion] = field(default_factory=list)


@dataclass
class GenerationStats:
    """What one ``generate`` call cost."""

    prompts: int
    completions: int
    new_tokens: int
    seconds: float
    peak_memory_bytes: int
    """Peak resident memory of this process (CPU) or peak allocated device memory (GPU)."""

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")

    def plus(self, other: GenerationStats) -> GenerationStats:
        """The cost of both calls: counts and seconds summed, the higher peak.

        >>> GenerationStats(1, 2, 30, 1.0, 5).plus(GenerationStats(2, 4, 10, 0.5, 9))
        GenerationStats(prompts=3, completions=6, new_tokens=40, seconds=1.5, peak_memory_bytes=9)
        """
        return GenerationStats(self.prompts + other.prompts, self.completions + other.completions,
                               self.new_tokens + other.new_tokens, self.seconds + other.seconds,
                               max(self.peak_memory_bytes, other.peak_memory_bytes))
