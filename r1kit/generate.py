"""``r1kit generate``: sample groups of completions for a recipe's problems and score them.

Steps: resolve the model (building the embedded tiny policy if asked) -> load problems -> build
prompts -> resume point -> for each chunk of ``rollout.batch_size`` prompts: engine.generate ->
score with the recipe's rewards -> append one line per group to ``{out_dir}/completions.jsonl``
-> ``{out_dir}/metrics.json`` over every line.

Resume: ``settings.json`` holds what the lines were sampled with. Started again with the same
out_dir and settings, a run stopped partway (Ctrl-C, a kill) keeps its lines (a torn last line
is dropped) and samples only the prompts after them, chunk ``i`` with seed ``rollout.seed + i``
as an uninterrupted run would; with other settings it starts afresh.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

from grpo.observe import output_to, route_logs
from grpo.problems import Problem, read_problems
from r1kit.config import Config, ConfigError, DataConfig, Interrupted, ModelConfig
from r1kit.tasks import arithmetic_tasks
from r1kit.tiny import build_tiny
from rewards.scorer import RewardFailure
from rollouts.engine import generate_chunk
from rollouts.prompts import build_prompt, encode_prompt
from rollouts.types import GenerationStats

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
    """Run (or finish) the job; return the metrics it also writes to ``metrics.json``."""
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
    path = out / "completions.jsonl"
    done = resume_point(out, generate_settings(cfg, model_path), problems)
    stats = GenerationStats(0, 0, 0, 0.0, 0)
    if done < len(prompts):
        log.info("sampling %d x %d completions with the %s engine from %s (%d prompts done "
                 "before)", len(prompts) - done, r.n, r.engine, model_path, done)
        stats = _sample_and_append(cfg, model_path, problems, prompts, done, path,
                                   show_progress)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    metrics = _metrics(cfg, model_path, rows, stats)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    comps = [c for row in rows for c in row["completions"]]
    broken = [k for k in (comps[0]["rewards"] if comps else {})
              if all(k in c["failed"] for c in comps)]
    if broken:
        raise RewardFailure(f"reward {', '.join(broken)} failed on all {len(comps)} samples "
                            f"(counts in {out / 'metrics.json'}, first error in "
                            f"{out / 'train.log'})")
    return metrics


def generate_settings(cfg: Config, model_path: Path) -> dict:
    """What the lines of ``completions.jsonl`` depend on: a resume needs all of it unchanged."""
    return {"model": str(model_path), "data": asdict(cfg.data),
            "rollout": {k: v for k, v in asdict(cfg.rollout).items()
                        if k not in ("gpu_memory_utilization", "max_model_len")},
            "reward": asdict(cfg.reward)}


def resume_point(out: Path, settings: dict, problems: list[Problem]) -> int:
    """How many problems ``completions.jsonl`` already holds, sampled with ``settings`` (a torn
    last line is dropped); 0, with the file emptied, when there is none or it was written with
    other settings."""
    path, saved = out / "completions.jsonl", out / "settings.json"
    before = json.loads(saved.read_text()) if saved.is_file() else None
    data = path.read_bytes() if path.is_file() else b""
    keep = data.rfind(b"\n") + 1
    rows = [json.loads(line) for line in data[:keep].decode().splitlines() if line]
    same = before == json.loads(json.dumps(settings)) and len(rows) <= len(problems) and all(
        row["question"] == p.question for row, p in zip(rows, problems))
    if not same:
        if rows:
            log.info("%s was sampled with other settings: starting afresh", path)
        rows, keep = [], 0
    with open(path, "r+b" if path.is_file() else "wb") as f:
        f.truncate(keep)
    saved.write_text(json.dumps(settings, indent=1))
    if rows:
        log.info("resuming: %d of %d prompts already done in %s", len(rows), len(problems), path)
    return len(rows)


def _sample_and_append(cfg: Config, model_path: Path, problems: list[Problem],
                       prompts: list[str], done: int, path: Path, show: bool) -> GenerationStats:
    """Sample, score and append the prompts from ``done`` on, ``rollout.batch_size`` at a time;
    the summed ``GenerationStats``. The scorer's workers start before the engine (no fork after
    the engine's threads exist)."""
    from tqdm import tqdm

    r, n, chunk = cfg.rollout, cfg.rollout.n, cfg.rollout.batch_size
    sampling = r.sampling()
    total = GenerationStats(0, 0, 0, 0.0, 0)
    with cfg.reward.scorer(r.max_tokens) as scorer:
        announce_engine(r.engine, path.parent / "engine.log")
        with output_to(path.parent / "engine.log"):
            engine = r.start_engine(model_path, cfg.model.dtype)
        try:
            with tqdm(total=len(prompts), initial=done, desc="sampling", unit="prompt",
                      disable=not show, dynamic_ncols=True, position=0) as bar, \
                    tqdm(total=len(prompts) * n, initial=done * n, desc="scoring",
                         unit="completion", disable=not show, dynamic_ncols=True,
                         position=1) as scored:
                for start in range(done, len(prompts), chunk):
                    groups = generate_chunk(engine, prompts[start:start + chunk], n, sampling,
                                            start // chunk)
                    total = total.plus(engine.last_stats)
                    bar.update(len(groups))
                    part = problems[start:start + chunk]
                    texts = [c.text for g in groups for c in g.completions]
                    columns = {c: [p.columns[c] for p in part for _ in range(n)]
                               for c in cfg.data.columns}
                    scores = scorer.score(
                        texts, answer=[p.answer for p in part for _ in range(n)],
                        completion_lengths=[len(c.token_ids) for g in groups
                                            for c in g.completions], **columns)
                    _append_groups(path, part, groups, scores, n)
                    scored.update(len(texts))
        except KeyboardInterrupt:
            done = path.read_bytes().count(b"\n")  # whole lines; a torn one goes on resume
            raise Interrupted(f"generate interrupted after {done} of {len(prompts)} prompts "
                              f"(kept in {path}); re-run the same command to resume") from None
        finally:
            engine.close()
    return total


def announce_engine(kind: str, log_path: Path) -> None:
    """A phase line on stderr while a vLLM engine starts (a minute or more, its own output
    going to ``log_path``)."""
    if kind.startswith("vllm"):
        print(f"r1kit: starting vLLM engine (log: {log_path})", file=sys.stderr, flush=True)


def _metrics(cfg: Config, model_path: Path, rows: list[dict], now: GenerationStats) -> dict:
    """Metrics over every line; the engine's speed and memory over what this call sampled."""
    comps = [c for row in rows for c in row["completions"]]
    labels = list(comps[0].get("rewards", {})) if comps else []
    return {
        "engine": cfg.rollout.engine,
        "model": str(model_path),
        "prompts": len(rows),
        "completions": len(comps),
        "new_tokens": sum(len(c["token_ids"]) for c in comps),
        "sampled_now": now.prompts,
        "seconds": round(now.seconds, 3),
        "tokens_per_s": round(now.tokens_per_s, 1) if now.seconds > 0 else None,
        "peak_memory_mb": round(now.peak_memory_bytes / 2**20, 1),
        "reward_mean": _mean([c["reward"] for c in comps]),
        **{f"reward/{k}": _mean([c["rewards"][k] for c in comps]) for k in labels},
        **{f"reward_failures/{k}": sum(k in c["failed"] for c in comps) for k in labels},
        "finish_length_fraction": _mean([c["finish_reason"] == "length" for c in comps]),
    }


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


def _append_groups(path: Path, problems, groups, scores, n: int) -> None:
    """One line per group, each completion with its total reward, its per-reward scores and the
    rewards that failed on it; flushed to disk before the next chunk is sampled."""
    with open(path, "a", encoding="utf-8") as f:
        for i, (p, g) in enumerate(zip(problems, groups)):
            comps = []
            for j, c in enumerate(g.completions):
                k = i * n + j
                comps.append(dict(asdict(c), reward=scores.total[k],
                                  rewards={label: v[k] for label, v in scores.per_reward.items()},
                                  failed=[label for label, idx in scores.failed.items()
                                          if k in idx]))
            row = {"question": p.question, "answer": p.answer, "prompt": g.prompt,
                   "completions": comps}
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
