"""``r1kit eval``: plan -> (resume) -> sample in batches -> grade -> append -> summarise.

Outputs in ``log.out_dir``:

- ``samples/<suite>.jsonl``: one line per problem (prompt, gold, completions with extracted
  answers, grades, format flags and lengths), appended and flushed batch by batch;
- ``settings.json``: per suite, the settings its samples were drawn with;
- ``summary.json`` and ``report.md``: metrics with confidence intervals (``eval.report``).

Grading sees ``eval.types.graded_text`` of each completion, not the completion itself: by default
the text after ``</think>`` (no ``</think>``, no answer), the whole text for prompt styles without
think tags, and with ``eval.boxed_only`` only the last ``\\boxed{}`` (math).

Resume: a run killed at any point and started again with the same out_dir and settings skips
every problem already in ``samples/<suite>.jsonl`` (a torn last line is dropped) and samples only
the rest. Different settings for a suite already there is an error (exit 2), not a silent mix.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from eval.replay import ReplayEngine
from eval.report import samples_path, summarise, write_outputs
from eval.types import EvalProblem, Grade, SuitePlan, graded_text
from grpo.observe import output_to, route_logs
from r1kit.config import Config, ConfigError, Interrupted
from r1kit.eval_plan import context_length, plan_suites
from r1kit.generate import announce_engine, resolve_model_path
from rewards.format import format_reward
from rollouts.engine import Engine
from rollouts.types import Sampling

log = logging.getLogger("r1kit.eval")


def finished_ids(path: Path) -> set[str]:
    """Ids of the problems a file holds; drops a torn last line left by a kill mid-write."""
    if not path.is_file():
        return set()
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):  # the last line never got its newline: it was being written
        with open(path, "r+b") as f:
            f.truncate(keep)
    return {json.loads(line)["id"] for line in data[:keep].decode().splitlines() if line}


def check_resume(out: Path, plans: list[SuitePlan], model: str, seed: int) -> dict:
    """The settings file for this run; ``ConfigError`` if a suite already there differs."""
    path = out / "settings.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    for plan in plans:
        now = plan.settings(model, seed)
        before = saved.get(plan.suite.name)
        has_samples = samples_path(out, plan.suite.name).is_file()
        if before is not None and before != now and has_samples:
            diff = ", ".join(f"{k} {before.get(k)!r} -> {v!r}" for k, v in now.items()
                             if before.get(k) != v)
            raise ConfigError(f"log.out_dir: {out} holds {plan.suite.name} samples drawn with "
                              f"other settings ({diff}); use another out_dir or the same settings")
        saved[plan.suite.name] = now
    return saved


def format_ok(plan: SuitePlan, text: str, grade: Grade) -> bool:
    """Format compliance: the strict R1 format (``rewards.format``) for the R1-Zero prompts; in
    other styles, that the grader found an answer (math) or a fenced or delimited program
    (code)."""
    if plan.prompt_style in ("r1_zero", "r1kit_zero"):

        return format_reward([text])[0] == 1.0
    if plan.suite.kind == "math":
        return grade.answer is not None
    return "```" in text or "[DONE]" in text


def run_batch(engine: Any, plan: SuitePlan, idx: list[int], seed: int,
              cost: dict | None = None) -> list[dict]:
    """Sample and grade the problems at ``idx``; one output row per problem. Adds the engine's
    seconds and new tokens to ``cost``."""

    sampling = Sampling(max_tokens=plan.max_tokens, temperature=plan.temperature,
                        top_p=plan.top_p, seed=seed, stop=plan.stop)
    groups = engine.generate([plan.prompts[i] for i in idx], plan.n, sampling)
    if cost is not None and engine.last_stats is not None:
        cost["seconds"] += engine.last_stats.seconds
        cost["new_tokens"] += engine.last_stats.new_tokens
    flat: list[EvalProblem] = [plan.problems[i] for i in idx for _ in range(plan.n)]
    texts = [c.text for g in groups for c in g.completions]
    boxed = plan.boxed_only and plan.suite.kind == "math"
    grades = plan.suite.grade(flat, [graded_text(t, plan.graded_text, boxed) for t in texts])
    rows, pos = [], 0
    for i, group in zip(idx, groups):
        p = plan.problems[i]
        comps = []
        for c in group.completions:
            g = grades[pos]
            pos += 1
            comps.append({"text": c.text, "answer": g.answer, "correct": bool(g.correct),
                          "detail": g.detail, "format": format_ok(plan, c.text, g),
                          "tokens": len(c.token_ids), "chars": len(c.text),
                          "finish_reason": c.finish_reason})
        rows.append({"id": p.id, "prompt": group.prompt,
                     "gold": p.gold if isinstance(p.gold, str) else None, "meta": p.meta,
                     "completions": comps})
    return rows


def _append(path: Path, rows: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _make_engine(cfg: Config, model_path: Path | None, tokenizer: Any, context: int, out: Path):
    e = cfg.eval
    if e.engine == "replay":

        return ReplayEngine.from_jsonl(e.replay, tokenizer)

    announce_engine(e.engine, out / "engine.log")
    with output_to(out / "engine.log"):
        return cfg.rollout.start_engine(model_path, cfg.model.dtype, kind=e.engine,
                                        max_model_len=context, seed=e.seed)


def prepare(cfg: Config) -> tuple[Path | None, Any, list[SuitePlan], int]:
    """Model, tokenizer, plans and context, all checked before an engine starts."""

    model_path = None
    tokenizer = None
    limit = None
    if cfg.eval.engine != "replay" or cfg.model.path != "":
        from transformers import AutoConfig, AutoTokenizer

        model_path = resolve_model_path(cfg.model)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        limit = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    plans = plan_suites(cfg, tokenizer)
    context = context_length(cfg, plans, tokenizer, limit) if tokenizer is not None else 0
    return model_path, tokenizer, plans, context


def run_eval(cfg: Config, *, show_progress: bool = True, engine: Engine | None = None) -> dict:
    """Run (or finish) the evaluation ``cfg`` describes; return the summary it writes.

    ``engine``: an engine already started (benchmarks warm one up first); the caller closes it.
    Otherwise one is started from ``cfg`` when there is work left, and closed here."""
    from tqdm import tqdm

    model_path, tokenizer, plans, context = prepare(cfg)
    out = Path(cfg.log.out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    route_logs(out, cfg.log.level, "eval.log")
    settings = check_resume(out, plans, str(model_path or cfg.eval.replay), cfg.eval.seed)
    (out / "settings.json").write_text(json.dumps(settings, indent=1))
    todo = {p.suite.name: [i for i, prob in enumerate(p.problems)
                           if prob.id not in finished_ids(samples_path(out, p.suite.name))]
            for p in plans}
    total = sum(len(p.problems) for p in plans)
    left = sum(len(v) for v in todo.values())
    if left < total:
        log.info("resuming: %d of %d problems already done in %s", total - left, total, out)
    cost = {"seconds": 0.0, "new_tokens": 0}
    if left:
        own = engine is None
        engine = engine or _make_engine(cfg, model_path, tokenizer, context, out)
        try:
            with tqdm(total=total, initial=total - left, unit="problem", dynamic_ncols=True,
                      disable=not show_progress) as bar:
                for plan in plans:
                    bar.set_description(plan.suite.name)
                    idx = todo[plan.suite.name]
                    step = cfg.eval.batch_problems
                    for start in range(0, len(idx), step):
                        chunk = idx[start:start + step]
                        seed = cfg.eval.seed + chunk[0]  # a resumed batch draws as it would have
                        rows = run_batch(engine, plan, chunk, seed, cost)
                        _append(samples_path(out, plan.suite.name), rows)
                        bar.update(len(chunk))
        except KeyboardInterrupt:
            done = sum(len(finished_ids(samples_path(out, p.suite.name))) for p in plans)
            raise Interrupted(f"eval interrupted after {done} of {total} problems (kept in "
                              f"{out}/samples); re-run the same command to resume") from None
        finally:
            if own:
                engine.close()
    e = cfg.eval
    summary = summarise(out, plans, model=cfg.model.path if e.engine != "replay" else e.replay,
                        engine=e.engine, bootstrap=e.bootstrap, seed=e.seed)
    summary["generation"] = {**cost, "tokens_per_s": cost["new_tokens"] / cost["seconds"]
                             if cost["seconds"] else None, "problems_sampled": left}
    write_outputs(out, summary)
    return summary
