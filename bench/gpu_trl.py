"""``make gpu-check``'s ``trl_step``: the ``grpo_step`` of ``bench.gpu_step`` through TRL's
``GRPOTrainer``, for the time ratio.

The same saved random-init policy, prompts, group size, completion length and reward
(``bench.gpu_step.seeded_noise``); transformers generation (``use_vllm=False``); float32 weights
under bf16 autocast on a GPU (``bf16=True``), as r1kit's mixed precision; no gradient
checkpointing (r1kit's recipe has none); one optimiser step (``max_steps=1``), one generation
batch of all prompts x completions. The time is ``Trainer.train``'s wall clock, which includes
what TRL does around the step (dataloader, logging): it is best-effort, not a kernel comparison.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

from bench.gpu_step import REPO, Context, seeded_noise


def trl_step(ctx: Context) -> dict[str, Any]:
    """One TRL GRPO step on ``ctx``'s model, after r1kit's trainer has freed its memory;
    skipped where TRL or the ``datasets`` it needs is not installed (the GPU machine's image
    has neither unless they travel with the tree)."""
    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
        return {"skipped": f"{' and '.join(missing)} not installed"}
    ctx.close()
    return trl_grpo_step(ctx)


def trl_grpo_step(ctx: Context) -> dict[str, Any]:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from r1kit.generate import load_problems
    from rollouts.prompts import build_prompt

    s = ctx.sizes
    tok = AutoTokenizer.from_pretrained(ctx.folder)
    problems = load_problems(_data_config())[:s.prompts]
    prompts = [build_prompt(p.question, "r1kit_zero", tok) for p in problems]
    args = GRPOConfig(
        output_dir=str(ctx.out_dir / "trl"), per_device_train_batch_size=s.prompts * s.n,
        num_generations=s.n, steps_per_generation=1, gradient_accumulation_steps=1,
        max_completion_length=s.max_tokens, max_steps=1, learning_rate=1e-5,
        temperature=1.0, beta=0.0, gradient_checkpointing=False, bf16=ctx.cuda,
        use_cpu=not ctx.cuda, use_vllm=False, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=0,
        model_init_kwargs={"dtype": torch.float32})
    trainer = GRPOTrainer(model=str(ctx.folder), reward_funcs=seeded_noise, args=args,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          processing_class=tok)
    ctx.reset_peak()
    t0 = time.perf_counter()
    out = trainer.train()
    ctx.sync()
    seconds = time.perf_counter() - t0
    logged = next((h for h in reversed(trainer.state.log_history) if "loss" in h), {})
    return {"trl": trl.__version__, "seconds": seconds, "peak_bytes": ctx.peak(),
            "loss": logged.get("loss", out.training_loss),
            "trl_step_time": logged.get("step_time"),
            "completion_length": logged.get("completions/mean_length")}


def _data_config():
    """The problems of ``recipes/tiny_grpo_hf.yaml`` (the trainer's ``data`` section)."""
    from r1kit.config import load_config

    return load_config(REPO / "recipes/tiny_grpo_hf.yaml").data
