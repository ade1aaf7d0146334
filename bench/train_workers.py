"""What runs inside ``r1kit bench train``'s worker subprocesses: the contenders and what they need.

The settings every contender shares, the ``--grid`` rows (``Row``), the trivial reward
(``digit_reward``, given to r1kit as ``bench.train_workers:digit_reward``), the memory
measurements, and one function per contender in ``WORKERS``. ``bench.train`` runs each in a fresh
``python -m bench.train --worker NAME`` process and tabulates the results; its docstring
describes the method.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from bench.harness import Stopwatch, timed

PROMPTS, GROUP, MAX_TOKENS = 4, 8, 64
LR, CLIP_LOW, CLIP_HIGH = 1e-6, 0.2, 0.28
VOCAB = 151_936
MEMORY_SHAPE = {"full": (8, 512, 512), "quick": (2, 128, 128)}  # sequences, prompt, completion
STEP_CONTENDERS = ("trl_hf", "r1kit_hf", "r1kit_vllm", "r1kit_hf_v4")
MEMORY_CONTENDERS = ("trl_memory", "r1kit_memory")
ASYNC_CONTENDERS = ("r1kit_server_sync", "r1kit_server_async")
ASYNC_TARGET = 1.3
"""``--async``: one-step-off training at least this many times faster than synchronous."""
TARGETS = {"r1kit_hf": 0.5, "r1kit_vllm": 0.33, "r1kit_memory": 0.25}
"""r1kit's goal as a ratio to TRL (step time for the step contenders, peak memory increase)."""


NO_HF_AUX_LOSS = ("deepseek_v3",)
"""Families whose transformers model returns no router aux loss (``outputs.aux_loss`` is None)."""
COMMON_DIFFERENCES = (
    ("reward: r1kit scores in its reward worker processes (reward.workers=2, started with the "
     "trainer), TRL calls the function in its own process"),
    "prompt order: each trainer's own seeded shuffle of the same 64 problems")
"""``--grid``: where r1kit's and TRL's runs of every row differ, besides the trainers' code."""


@dataclass(frozen=True)
class Row:
    """One configuration that r1kit and TRL both train: ``--grid`` runs several, each in
    interleaved pairs; the default bench runs ``DEFAULT_ROW``."""

    family: str = "qwen3_moe"
    """Tiny model family (``r1kit.tiny``): the same checkpoint for both trainers."""
    beta: float = 0.0
    """KL coefficient to the reference model; k3 estimator, a per-token loss term, in both."""
    aux_loss_coef: float = 0.0
    """MoE router load-balancing loss coefficient: r1kit's ``algo.aux_loss_coef``, TRL's
    ``router_aux_loss_coef`` (the model's own ``load_balancing_loss_func``)."""
    prompt_style: str = "r1_zero"
    """r1kit's ``rollout.prompt_style``. TRL is given the R1-Zero text, so ``r1_zero`` feeds both
    the same prompt token ids."""

    @property
    def name(self) -> str:
        return f"{self.family} beta={self.beta:g} aux={self.aux_loss_coef:g}"

    @property
    def arg(self) -> str:
        """The row as ``--row`` takes it.

        >>> Row.parse(Row("deepseek_v3", 0.04, 0.001).arg)
        Row(family='deepseek_v3', beta=0.04, aux_loss_coef=0.001, prompt_style='r1_zero')
        """
        return f"{self.family},{self.beta:g},{self.aux_loss_coef:g},{self.prompt_style}"

    @classmethod
    def parse(cls, text: str) -> Row:
        """``FAMILY,BETA,AUX[,PROMPT_STYLE]``."""
        family, beta, aux, *style = text.split(",")
        return cls(family, float(beta), float(aux), *style)

    @property
    def trl_aux_loss_coef(self) -> float:
        """TRL's coefficient: 0 where transformers' model has no aux loss to weight (TRL would
        fail on the missing ``aux_loss``); r1kit computes DeepSeek-V3's sequence-wise one."""
        return 0.0 if self.family in NO_HF_AUX_LOSS else self.aux_loss_coef

    def differences(self) -> list[str]:
        """Where the two trainers' runs of this row differ, besides the trainers' own code.

        >>> Row().differences() == list(COMMON_DIFFERENCES)
        True
        >>> for line in Row("deepseek_v3", 0.04, 0.001, "chat_think").differences()[2:]:
        ...     print(line)
        prompts: r1kit's chat_think template, TRL the R1-Zero text
        aux loss: TRL none (its deepseek_v3 has no aux_loss), r1kit's sequence-wise one x 0.001
        """
        out = list(COMMON_DIFFERENCES)
        if self.prompt_style != "r1_zero":
            out.append(f"prompts: r1kit's {self.prompt_style} template, TRL the R1-Zero text")
        if self.aux_loss_coef != self.trl_aux_loss_coef:
            out.append(f"aux loss: TRL none (its {self.family} has no aux_loss), r1kit's "
                       f"sequence-wise one x {self.aux_loss_coef:g}")
        return out


DEFAULT_ROW = Row(prompt_style="chat_think")
"""The default bench's configuration: r1kit in its default prompt style (chat_think), TRL on the
R1-Zero text, as the bench has always run them."""
V4_ROW = Row("deepseek_v4", prompt_style="chat_think")
"""``r1kit_hf_v4``: the default bench on the tiny DeepSeek-V4."""
GRID = tuple(Row(family, beta, aux) for family in ("qwen3_moe", "deepseek_v3")
             for beta in (0.0, 0.04) for aux in (0.0, 0.001))
GRID_TARGET = 0.6
"""``--grid``: r1kit's step time at most this many times TRL's, on the 6-step mean (first step
included) and on steps 2-N, median of the interleaved pairs."""


def digit_reward(completions: list[str], **_: Any) -> list[float]:
    """Share of a completion's characters that are digits: a trivial reward with some variance.

    >>> digit_reward(["a1", "22", ""])
    [0.5, 1.0, 0.0]
    """
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]


# ---------------------------------------------------------------------------------------------
# Measurements


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class PeakSampler:
    """The highest RSS seen by a thread polling every ``interval`` seconds."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.peak = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> Self:
        self.peak = _rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _step_summary(seconds: list[float], extra: dict[str, Any]) -> dict[str, Any]:
    timed = seconds[1:]  # the first step is the warm-up
    return {"s_per_step": statistics.median(timed), "step_seconds": seconds,
            "peak_rss_mb": _maxrss_mb(), **extra}


def _problems() -> list[str]:
    """TRL's prompts: the R1-Zero text of the problems r1kit draws (``data.num_prompts=64``)."""
    from r1kit.config import DataConfig
    from r1kit.generate import load_problems
    from rollouts.prompts import r1_zero_prompt

    return [r1_zero_prompt(p.question) for p in load_problems(DataConfig(num_prompts=64))]


# ---------------------------------------------------------------------------------------------
# Step-time workers


def worker_trl_hf(steps: int, row: Row = DEFAULT_ROW) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1kit.tiny import build_tiny

    path = build_tiny(row.family)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.watch = Stopwatch()
            self.lengths: list[float] = []

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.watch.restart()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.watch.lap()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
                   **k: Any) -> None:
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    out = tempfile.mkdtemp(prefix="bench-trl-")
    args = GRPOConfig(
        output_dir=out, report_to="none", use_vllm=False, use_cpu=True, bf16=False,
        temperature=1.0, num_generations=GROUP, per_device_train_batch_size=PROMPTS * GROUP,
        generation_batch_size=PROMPTS * GROUP, max_completion_length=MAX_TOKENS,
        generation_kwargs={"min_new_tokens": MAX_TOKENS}, beta=row.beta, loss_type="dapo",
        epsilon=CLIP_LOW, epsilon_high=CLIP_HIGH, learning_rate=LR, max_grad_norm=1.0,
        router_aux_loss_coef=row.trl_aux_loss_coef, max_steps=1 + steps, save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=0)
    clock = Clock()
    trainer = GRPOTrainer(
        model=model, reward_funcs=lambda completions, **kw: digit_reward(completions),
        args=args, train_dataset=Dataset.from_dict({"prompt": _problems()}),
        processing_class=tok, callbacks=[clock])
    trainer.train()
    return _step_summary(clock.watch.laps, {"completion_len": statistics.mean(clock.lengths)})


def _r1kit_steps(engine: str, steps: int, row: Row = DEFAULT_ROW,
                 async_steps: int = 0) -> dict[str, Any]:
    from r1kit.config import load_config, validate_training
    from r1kit.train import build_trainer

    out = tempfile.mkdtemp(prefix=f"bench-r1kit-{engine}-")
    cfg = load_config(None, [
        f"rollout.engine={engine}", f"rollout.n={GROUP}", f"rollout.max_tokens={MAX_TOKENS}",
        f"rollout.min_tokens={MAX_TOKENS}",
        f"rollout.batch_size={GROUP if row.family == 'deepseek_v4' else PROMPTS * GROUP}",
        f"rollout.prompt_style={row.prompt_style}", f"model.path=tiny:{row.family}",
        "data.num_prompts=64",
        "reward.funcs=[bench.train_workers:digit_reward]", "reward.weights=[1.0]",
        "algo.filter_zero_variance=false", "algo.mask_truncated=false", f"algo.beta={row.beta}",
        "algo.kl_estimator=k3", f"algo.aux_loss_coef={row.aux_loss_coef}",
        "algo.aggregation=token_mean", "algo.policy_loss=ppo_clip",
        f"algo.clip_low={CLIP_LOW}", f"algo.clip_high={CLIP_HIGH}",
        f"train.prompts_per_step={PROMPTS}", f"train.steps={1 + steps}", f"train.lr={LR}",
        "train.device=cpu", "train.sample_every=0", "train.save_every=0",
        "train.tensorboard=false", "train.resume=never", f"log.out_dir={out}",
        f"train.async_steps={async_steps}", "log.level=WARNING"])
    validate_training(cfg)
    if engine in ("vllm", "vllm_server"):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU
    split = engine == "vllm_server" and (os.cpu_count() or 1) > 1
    if split:
        # Trainer and sampler on their own cores, as they would be on their own GPUs: the
        # server's processes (API server, engine core, worker) start pinned to the last core,
        # which vLLM's CPU worker also binds its OpenMP threads to; the trainer then moves to
        # the others. (vLLM's default binds to every core, and a trainer thread on one of them
        # stalls its parallel regions.) Both server contenders get the same placement.
        last = os.cpu_count() - 1
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(last)
        os.sched_setaffinity(0, {last})  # children started now inherit it
    trainer = build_trainer(cfg, show_progress=False)
    if split:
        os.sched_setaffinity(0, set(range(last)))
    watch, metrics = Stopwatch(), []
    try:
        for _ in range(1 + steps):
            metrics.append(trainer.run_step())
            watch.lap()
    finally:
        trainer.close()
        trainer.p.close()
    seconds = watch.laps
    parts = {f"median_{k.replace('/', '_')}": statistics.median(m.get(k, 0.0) for m in metrics[1:])
             for k in ("time/generate", "time/rollout", "time/update", "time/sync",
                       "time/wait_rollout", "staleness")}
    tokens = statistics.mean(m["response_len"] for m in metrics) * PROMPTS * GROUP
    return _step_summary(seconds, {"completion_len": statistics.mean(
        m["response_len"] for m in metrics), **parts,
        "tokens_per_s": tokens / statistics.median(seconds[1:] or seconds),
        "step_parts": [{k: v for k, v in m.items() if k.startswith("time/")} for m in metrics]})


# ---------------------------------------------------------------------------------------------
# Memory workers: one log-prob + loss + backward at a 151,936-token vocabulary


def _big_vocab_model():
    import torch
    from transformers import AutoModelForCausalLM

    from r1kit.tiny import tiny_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("qwen3_moe", VOCAB, eos_id=0),
                                             dtype=torch.float32)
    return model.train()


def _measure(fn: Callable[[], Any], setup: dict[str, Any]) -> dict[str, Any]:
    import gc

    gc.collect()
    before, peak_before = _rss_mb(), _maxrss_mb()
    with PeakSampler() as sampler:
        _, seconds = timed(fn)
    peak_after = _maxrss_mb()
    exact = peak_after > peak_before  # the call set the process's peak: ru_maxrss is its peak
    return {"peak_increase_mb": (peak_after if exact else sampler.peak) - before,
            "peak_increase_mb_sampled": sampler.peak - before, "exact": exact,
            "rss_before_mb": before, "seconds": seconds, "peak_rss_mb": peak_after, **setup}


def worker_r1kit_memory(quick: bool) -> dict[str, Any]:
    import torch

    from grpo.batch import TrainBatch, make_micro_batch
    from grpo.losses import ClipParams, Norm
    from grpo.update import Objective, Sums, microbatch_loss
    from r1kit.config import TrainConfig

    b, p, c = MEMORY_SHAPE["quick" if quick else "full"]
    model = _big_vocab_model()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(VOCAB, (b, p + c), generator=g).tolist()
    ones = torch.ones(b, c)
    batch = TrainBatch(
        prompt_ids=[r[:p] for r in ids], completion_ids=[r[p:] for r in ids],
        sampler_logp=torch.zeros(b, c), mask=ones, token_mask=ones.clone(),
        advantages=torch.randn(b, generator=g), rewards=torch.zeros(b),
        truncated=torch.zeros(b, dtype=torch.bool), routed=[None] * b)  # old_logp None: on-policy
    obj = Objective(policy_loss="ppo_clip", aggregation="token_mean",
                    clip=ClipParams(CLIP_LOW, CLIP_HIGH), mismatch="none", max_tokens=c,
                    logprob_chunk=TrainConfig().logprob_chunk)
    mb = make_micro_batch(batch, list(range(b)), 0, "cpu")

    def step() -> None:
        out = microbatch_loss(model, batch, mb, obj, Norm.of(batch.mask, c), Sums())
        out.loss.backward()

    return _measure(step, {"shape": [b, p, c]})


def worker_trl_memory(quick: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from r1kit.tiny import build_tiny

    b, p, c = MEMORY_SHAPE["quick" if quick else "full"]
    model = _big_vocab_model()
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-mem-"), report_to="none", use_vllm=False,
        use_cpu=True, bf16=False, num_generations=2, per_device_train_batch_size=b,
        max_completion_length=c, beta=0.0, loss_type="dapo", epsilon=CLIP_LOW,
        epsilon_high=CLIP_HIGH, router_aux_loss_coef=0.0, save_strategy="no")
    trainer = GRPOTrainer(  # the tokenizer is only needed to construct the trainer
        model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
        train_dataset=Dataset.from_dict({"prompt": ["x"] * 4}),
        processing_class=AutoTokenizer.from_pretrained(build_tiny("qwen3_moe")))
    trainer.current_gradient_accumulation_steps = 1  # set by transformers' training loop
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(VOCAB, (b, p + c), generator=g)
    inputs = {"prompt_ids": ids[:, :p], "prompt_mask": torch.ones(b, p, dtype=torch.long),
              "completion_ids": ids[:, p:], "completion_mask": torch.ones(b, c, dtype=torch.long),
              "advantages": torch.randn(b, generator=g), "num_items_in_batch": torch.tensor(b * c)}
    model.train()

    def step() -> None:
        trainer.compute_loss(model, inputs).backward()

    return _measure(step, {"shape": [b, p, c]})


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "trl_hf": lambda a: worker_trl_hf(a.steps, a.row),
    "r1kit_hf": lambda a: _r1kit_steps("hf", a.steps, a.row),
    "r1kit_vllm": lambda a: _r1kit_steps("vllm", a.steps),
    "r1kit_hf_v4": lambda a: _r1kit_steps("hf", a.steps, V4_ROW),
    "r1kit_server_sync": lambda a: _r1kit_steps("vllm_server", a.steps),
    "r1kit_server_async": lambda a: _r1kit_steps("vllm_server", a.steps, async_steps=1),
    "trl_memory": lambda a: worker_trl_memory(a.quick),
    "r1kit_memory": lambda a: worker_r1kit_memory(a.quick),
}

