"""``r1kit generate``: sample groups of completions for a recipe's problems and score them.

Steps: resolve the model (building the embedded tiny policy if asked) -> load problems -> build
prompts -> engine.generate -> score with the recipe's rewards -> write
``{out_dir}/completions.jsonl`` (one line per group) and ``{out_dir}/metrics.json``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

from grpo.observe import output_to, route_logs
from grpo.problems import Problem, read_problems
from r1kit.config import Config, ConfigError, DataConfig, ModelConfig
from r1kit.tasks import arithmetic_tasks
from r1kit.tiny import build_tiny
from rewards.scorer import RewardFailure, score_with_progress
from rollouts.engine import sample_with_progress
from rollouts.prompts import build_prompt, encode_prompt

log = logging.getLogger("r1kit.generate")


def resolve_model_path(m: ModelConfig) -> Path:
    """A checkpoint folder; ``tiny:<family>`` builds (or reuses) the embedded tiny policy, and
    ``tiny:<family>/base`` its supervised base (``r1kit.base``)."""
    if not m.path:

        raise ConfigError("model.path: empty; give a checkpoint folder or tiny:<family>")
    if m.path.startswith("tiny:"):

        family, _, variant = m.path[len("tiny:"):].partition("/")
        if variant == "base":

            # here, not at the top: the base's trainer (torch) only when a base is asked for,
            # so `r1kit eval` and `generate` of a checkpoint folder start without it
            from r1kit.base import build_base

            return build_base(family, seed=m.tiny_seed, progress=True)
        return build_tiny(family, seed=m.tiny_seed)
    return Path(m.path).expanduser()


def load_problems(d: DataConfig) -> list[Problem]:
    """The problems of ``data``: drawn from the synthetic arithmetic family, or read from a JSONL
    file (``grpo.problems.read_problems``)."""
    if d.source == "arithmetic":
        return [Problem(t.question, t.answer)
                for t in arithmetic_tasks(d.split, d.num_prompts, seed=d.seed,
                                          max_operand=d.max_operand, max_terms=d.max_terms)]
    return read_problems(d.source, d.question_key, d.answer_key, d.columns, d.num_prompts)


def run_generate(cfg: Config, show_progress: bool = True) -> dict:
    """Run the job; return the metrics it also writes to ``metrics.json``."""
    from transformers import AutoTokenizer

    r = cfg.rollout
    out = Path(cfg.log.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    route_logs(out, cfg.log.level)
    model_path = resolve_model_path(cfg.model)
    problems = load_problems(cfg.data)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = [build_prompt(p.question, r.prompt_style, tokenizer) for p in problems]
    check_prompt_lengths(prompts, tokenizer, r.max_tokens, r.max_model_len)
    sampling = r.sampling()
    log.info("sampling %d x %d completions with the %s engine from %s",
             len(prompts), r.n, r.engine, model_path)
    with output_to(out / "engine.log"):
        engine = r.start_engine(model_path, cfg.model.dtype)
    try:
        groups, stats = sample_with_progress(engine, prompts, r.n, sampling, r.batch_size,
                                             show_progress)
    finally:
        engine.close()
    texts = [c.text for g in groups for c in g.completions]
    answers = [p.answer for p in problems for _ in range(r.n)]
    lengths = [len(c.token_ids) for g in groups for c in g.completions]
    with cfg.reward.scorer(r.max_tokens) as scorer:
        columns = {c: [p.columns[c] for p in problems for _ in range(r.n)]
                   for c in cfg.data.columns}
        scores = score_with_progress(scorer, texts, answers, lengths, show_progress, columns)
    _write_groups(out / "completions.jsonl", problems, groups, scores.total, r.n)
    metrics = {
        "engine": r.engine,
        "model": str(model_path),
        "prompts": stats.prompts,
        "completions": stats.completions,
        "new_tokens": stats.new_tokens,
        "seconds": round(stats.seconds, 3),
        "tokens_per_s": round(stats.tokens_per_s, 1),
        "peak_memory_mb": round(stats.peak_memory_bytes / 2**20, 1),
        "reward_mean": _mean(scores.total),
        **{f"reward/{k}": _mean(v) for k, v in scores.per_reward.items()},
        **{f"reward_failures/{k}": v for k, v in scores.failure_counts().items()},
        "finish_length_fraction": _mean(
            [c.finish_reason == "length" for g in groups for c in g.completions]),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    broken = scores.failed_everywhere()
    if broken:
        raise RewardFailure(f"reward {', '.join(broken)} failed on all {len(texts)} samples "
                            f"(counts in {out / 'metrics.json'}, first error in "
                            f"{out / 'train.log'})")
    return metrics


class PromptTooLong(ValueError):
    """A prompt leaves no room for the completion budget in the context."""


def check_prompt_lengths(prompts: list[str], tokenizer, max_tokens: int, context: int) -> None:
    """Every prompt plus ``max_tokens`` fits ``context``; checked before any engine starts."""

    for i, p in enumerate(prompts):
        n = len(encode_prompt(tokenizer, p))
        if n + max_tokens > context:
            raise PromptTooLong(
                f"problem {i} has a {n}-token prompt: with rollout.max_tokens={max_tokens} it "
                f"exceeds rollout.max_model_len={context}; raise it or shorten the problems")


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else math.nan


def _write_groups(path: Path, problems, groups, totals, n: int) -> None:
    with open(path, "w") as f:
        for i, (p, g) in enumerate(zip(problems, groups)):
            row = {"question": p.question, "answer": p.answer, "prompt": g.prompt,
                   "completions": [dict(asdict(c), reward=totals[i * n + j])
                                   for j, c in enumerate(g.completions)]}
            f.write(json.dumps(row) + "\n")
