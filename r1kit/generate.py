"""``r1kit generate``: sample groups of completions for a recipe's problems and score them.

Steps: resolve the model (building the embedded tiny policy if asked) -> load problems -> build
prompts -> engine.generate -> score with the recipe's rewards -> write
``{out_dir}/completions.jsonl`` (one line per group) and ``{out_dir}/metrics.json``.
"""

from __future__ import annotations

import json
import logging
import math
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

from r1kit.config import Config, DataConfig, ModelConfig, reward_specs

log = logging.getLogger("r1kit.generate")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str
    columns: dict = dataclasses.field(default_factory=dict)
    """``data.columns`` fields of the row, passed to rewards as columns of the same name."""


def resolve_model_path(m: ModelConfig) -> Path:
    """A checkpoint folder; ``tiny:<family>`` builds (or reuses) the embedded tiny policy, and
    ``tiny:<family>/base`` its supervised base (``r1kit.base``)."""
    if not m.path:
        from r1kit.config import ConfigError

        raise ConfigError("model.path: empty; give a checkpoint folder or tiny:<family>")
    if m.path.startswith("tiny:"):
        from r1kit.tiny import build_tiny

        family, _, variant = m.path[len("tiny:"):].partition("/")
        if variant == "base":
            from r1kit.base import build_base

            return build_base(family, seed=m.tiny_seed, progress=True)
        return build_tiny(family, seed=m.tiny_seed)
    return Path(m.path).expanduser()


def load_problems(d: DataConfig) -> list[Problem]:
    if d.source == "arithmetic":
        from r1kit.tasks import arithmetic_tasks

        return [Problem(t.question, t.answer)
                for t in arithmetic_tasks(d.split, d.num_prompts, seed=d.seed,
                                          max_operand=d.max_operand, max_terms=d.max_terms)]
    problems = []
    with open(d.source) as f:
        for lineno, line in enumerate(f, 1):
            if len(problems) == d.num_prompts:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                answer = str(row[d.answer_key]) if d.answer_key else ""
                problems.append(Problem(str(row[d.question_key]), answer,
                                        {c: row[c] for c in d.columns}))
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{d.source}:{lineno}: bad problem line ({e!r})") from None
    return problems


def sample_with_progress(engine, prompts: list[str], n: int, sampling, chunk: int,
                         show: bool):
    """``engine.generate`` over ``chunk`` prompts at a time under a progress bar; chunk ``i``
    samples with seed ``sampling.seed + i`` (distinct draws for repeated prompts). Returns the
    groups and the summed ``GenerationStats``."""
    import dataclasses

    from tqdm import tqdm

    from rollouts.types import GenerationStats

    groups, total = [], GenerationStats(0, 0, 0, 0.0, 0)
    with tqdm(total=len(prompts), desc="sampling", unit="prompt", disable=not show,
              dynamic_ncols=True) as bar:
        for i, start in enumerate(range(0, len(prompts), chunk)):
            seed = None if sampling.seed is None else sampling.seed + i
            groups += engine.generate(prompts[start:start + chunk], n,
                                      dataclasses.replace(sampling, seed=seed))
            st = engine.last_stats
            total = GenerationStats(total.prompts + st.prompts, total.completions + st.completions,
                                    total.new_tokens + st.new_tokens, total.seconds + st.seconds,
                                    max(total.peak_memory_bytes, st.peak_memory_bytes))
            bar.update(st.prompts)
    return groups, total


def score_with_progress(scorer, texts: list[str], answers: list[str], lengths: list[int],
                        show: bool, columns: dict | None = None, chunk: int = 64):
    """``scorer.score`` over ``chunk`` completions at a time under a progress bar; the results
    are merged into one ``ScoreResult``. ``columns``: further columns, aligned with ``texts``."""
    from tqdm import tqdm

    columns = {"answer": answers, "completion_lengths": lengths, **(columns or {})}
    parts = []
    with tqdm(total=len(texts), desc="scoring", unit="completion", disable=not show,
              dynamic_ncols=True) as bar:
        for s in range(0, len(texts), chunk):
            parts.append(scorer.score(texts[s:s + chunk],
                                      **{k: v[s:s + chunk] for k, v in columns.items()}))
            bar.update(len(parts[-1].total))
    return merge_scores(parts)


def merge_scores(parts: list):
    """One ``ScoreResult`` from the results of consecutive chunks."""
    from rewards.scorer import FailureCounts, ScoreResult

    labels = parts[0].per_reward
    per = {k: [x for p in parts for x in p.per_reward[k]] for k in labels}
    failures = {k: FailureCounts(*(sum(getattr(p.failures.get(k, FailureCounts()), f)
                                       for p in parts)
                                   for f in ("errors", "timeouts", "crashes"))) for k in labels}
    failed: dict[str, list[int]] = {k: [] for k in labels}
    offset = 0
    for p in parts:
        for k, idx in p.failed.items():
            failed[k] += [offset + i for i in idx]
        offset += len(p.total)
    return ScoreResult([x for p in parts for x in p.total], per, failures, failed,
                       sum(p.seconds for p in parts))


def run_generate(cfg: Config, show_progress: bool = True) -> dict:
    """Run the job; return the metrics it also writes to ``metrics.json``."""
    from transformers import AutoTokenizer

    from grpo.observe import output_to, route_logs
    from rewards.scorer import RewardFailure, Scorer
    from rollouts.factory import make_engine
    from rollouts.prompts import build_prompt
    from rollouts.types import Sampling

    r = cfg.rollout
    out = Path(cfg.log.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    route_logs(out, cfg.log.level)
    model_path = resolve_model_path(cfg.model)
    problems = load_problems(cfg.data)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = [build_prompt(p.question, r.prompt_style, tokenizer) for p in problems]
    check_prompt_lengths(prompts, tokenizer, r.max_tokens, r.max_model_len)
    sampling = Sampling(max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p,
                        top_k=r.top_k, min_tokens=r.min_tokens, seed=r.seed)
    log.info("sampling %d x %d completions with the %s engine from %s",
             len(prompts), r.n, r.engine, model_path)
    with output_to(out / "engine.log"):
        engine = make_engine(r.engine, model_path, dtype=cfg.model.dtype,
                             max_model_len=r.max_model_len, seed=r.seed,
                             gpu_memory_utilization=r.gpu_memory_utilization,
                             batch_size=r.batch_size)
    try:
        groups, stats = sample_with_progress(engine, prompts, r.n, sampling, r.batch_size,
                                             show_progress)
    finally:
        engine.close()
    texts = [c.text for g in groups for c in g.completions]
    answers = [p.answer for p in problems for _ in range(r.n)]
    lengths = [len(c.token_ids) for g in groups for c in g.completions]
    with Scorer(reward_specs(cfg), workers=cfg.reward.workers,
                timeout_s=cfg.reward.timeout_s) as scorer:
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
    from rollouts.prompts import encode_prompt

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
