"""The ``rollout`` section of a recipe, and the one place it becomes a ``Sampling`` and an engine.

The field docs are what ``r1kit <command> --help`` prints (``r1kit.config`` composes the sections).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rollouts.engine import Engine
from rollouts.factory import make_engine
from rollouts.types import Sampling


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm", "vllm_server"] = "hf"
    """Which engine samples: transformers (``hf``), vLLM in this process (``vllm``), or a vLLM
    OpenAI-compatible server r1kit starts as a child process (``vllm_server``)."""
    n: int = 4
    """Completions per prompt (the GRPO group size)."""
    max_tokens: int = 128
    """Most new tokens per completion."""
    temperature: float = 1.0
    """Sampling temperature; 1.0 samples the policy's own distribution."""
    top_p: float = 1.0
    """Nucleus mass; keep 1.0 for on-policy GRPO."""
    top_k: int = -1
    """Top-k cut-off; -1 keeps all tokens."""
    min_tokens: int = 0
    """Fewest new tokens per completion (EOS is not sampled before). Keep 0 for RL: the policy
    must learn when to stop; benchmarks set it to force equal lengths on every engine."""
    seed: int = 0
    """Sampling seed; the same seed reproduces the same completions on the same engine."""
    seeded: Literal["auto", "always", "never"] = "auto"
    """Whether training rollouts carry a seed (``rollout.seed`` + step): ``always``
    (reproducible runs and bit-identical resumes), ``never``, or ``auto``: seeded, except with a
    vLLM engine on a GPU, where a per-request seed sends vLLM's sampler through its per-request
    generator loop and turns FlashInfer sampling off (``vllm/v1/sample/ops/
    topk_topp_sampler.py``). Evaluation and ``r1kit generate`` always seed."""
    prompt_style: Literal["r1_zero", "r1kit_zero", "qwen_math", "chat", "chat_think"] = "r1_zero"
    """``r1_zero``: DeepSeek-R1's Table 1 template, ending in ``<think>``; ``r1kit_zero``: r1kit's
    wording of it (the tiny models'); ``qwen_math``: Qwen's chat format with the boxed-answer
    system prompt; ``chat``: the tokenizer's chat template; ``chat_think``: that, with the
    response opened by ``<think>`` (``rollouts/prompts.py``)."""
    max_model_len: int = 1024
    """Context length the engine reserves (prompt + completion)."""
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory vLLM may take (ignored on CPU)."""
    data_parallel_size: int = 1
    """Engine replicas of the ``vllm_server`` engine (vLLM ``--data-parallel-size``)."""
    tensor_parallel_size: int = 1
    """GPUs each ``vllm_server`` replica shards the model over (vLLM ``--tensor-parallel-size``)."""
    sample_on: Literal["every_rank", "rank0"] = "every_rank"
    """With several trainer ranks and the HF engine: ``every_rank`` samples and scores each
    rank's share of a step's prompts on its own engine (whole groups, seeded per prompt, so the
    rollout is the one-rank rollout) and gathers the pieces; ``rank0`` samples everything on
    rank 0 and broadcasts it. A ``vllm_server`` is one sampler: rank 0 drives it."""
    sleep: Literal["auto", "always", "never"] = "auto"
    """The colocated vLLM engine (``engine: vllm``) between rollouts: ``always`` puts it to sleep
    after each rollout (level 2: its KV cache and weights give their GPU memory back to the
    update) and wakes it around the weight sync (weights, sync, then the KV cache); ``auto``
    does so on a GPU when nothing samples during the update (``train.async_steps: 0``);
    ``never`` keeps the engine resident. vLLM has no sleep mode on CPU."""
    batch_size: int = 16
    """Rows per forward batch in the HF engine: prompts x ``n`` completions are sampled
    ``batch_size`` rows at a time (``r1kit generate`` also hands the engine ``batch_size``
    prompts per call)."""

    def sampling(self, seed: int | None = None) -> Sampling:
        """The ``Sampling`` of this section; ``seed`` (default ``self.seed``) is the draw's.

        >>> s = RolloutConfig(max_tokens=8, min_tokens=2).sampling(seed=5)
        >>> s.max_tokens, s.temperature, s.seed, s.min_tokens, s.first_prompt
        (8, 1.0, 5, 2, 0)
        """
        return Sampling(max_tokens=self.max_tokens, temperature=self.temperature,
                        top_p=self.top_p, top_k=self.top_k, min_tokens=self.min_tokens,
                        seed=self.seed if seed is None else seed)

    def seeds_training(self, on_gpu: bool) -> bool:
        """Whether a training rollout's ``Sampling`` carries a seed (``seeded``).

        >>> [RolloutConfig(engine=e).seeds_training(g) for e in ("hf", "vllm") for g in (0, 1)]
        [True, True, True, False]
        >>> RolloutConfig(engine="vllm_server", seeded="always").seeds_training(True)
        True
        """
        if self.seeded != "auto":
            return self.seeded == "always"
        return not (on_gpu and self.engine in ("vllm", "vllm_server"))

    def sleeps(self, on_gpu: bool, async_steps: int) -> bool:
        """Whether the engine sleeps through each update (``sleep``); ``ValueError`` where
        ``always`` cannot be honoured.

        >>> [RolloutConfig(engine="vllm").sleeps(g, 0) for g in (False, True)]
        [False, True]
        >>> RolloutConfig(engine="vllm").sleeps(True, 1), RolloutConfig().sleeps(True, 0)
        (False, False)
        """
        if self.sleep == "never" or (self.sleep == "auto" and (
                self.engine != "vllm" or not on_gpu or async_steps)):
            return False
        if self.engine != "vllm":
            raise ValueError(f"rollout.sleep=always puts the colocated vLLM engine to sleep; "
                             f"rollout.engine={self.engine} has none: use rollout.sleep=auto")
        if not on_gpu:
            raise ValueError("rollout.sleep=always: vLLM has no sleep mode on CPU; use "
                             "rollout.sleep=auto")
        if async_steps:
            raise ValueError(f"rollout.sleep=always with train.async_steps={async_steps}: the engine "
                             "samples the next steps during the update, so it cannot sleep "
                             "through it; use rollout.sleep=auto")
        return True

    def every_rank_samples(self, world: int) -> bool:
        """Whether each of ``world`` trainer ranks samples its share of a rollout.

        >>> RolloutConfig().every_rank_samples(2), RolloutConfig().every_rank_samples(1)
        (True, False)
        >>> RolloutConfig(engine="vllm_server").every_rank_samples(2)
        False
        """
        return world > 1 and self.sample_on == "every_rank" and self.engine == "hf"

    def start_engine(self, model_path: str | Path, dtype: str, *, kind: str | None = None,
                     max_model_len: int | None = None, seed: int | None = None,
                     model: Any = None, tokenizer: Any = None,
                     record_routing: bool = False, sleep_mode: bool = False) -> Engine:
        """The engine of this section on ``model_path`` (``rollouts.factory.make_engine``).
        ``kind``, ``max_model_len`` and ``seed`` default to this section's; an evaluation
        passes its own. A trainer passes its live ``model`` and ``tokenizer``, and
        ``sleep_mode`` when the engine will sleep through updates (``sleeps``)."""
        return make_engine(kind or self.engine, model_path, dtype=dtype,
                           max_model_len=max_model_len or self.max_model_len,
                           seed=self.seed if seed is None else seed,
                           gpu_memory_utilization=self.gpu_memory_utilization,
                           batch_size=self.batch_size, model=model, tokenizer=tokenizer,
                           record_routing=record_routing,
                           data_parallel_size=self.data_parallel_size,
                           tensor_parallel_size=self.tensor_parallel_size,
                           sleep_mode=sleep_mode)
