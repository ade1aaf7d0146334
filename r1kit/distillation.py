"""``r1kit distill RECIPE``: a teacher teaches the student (``model.path``) by one of two methods.

- ``distill.method: sft``, rejection-sampled SFT: the teacher samples ``rollout.n`` traces per
  problem (``distill.traces``), the rewards verify them, the kept traces become a JSONL dataset
  (reused when it exists with the same settings), and the student is fine-tuned on it with
  ``distill.sft`` (packed rows, loss on completion tokens only). The dataset holds text: the
  student builds its own prompt from each row's question and tokenises the completion itself,
  so its tokenizer may differ from the teacher's.
- ``distill.method: on_policy``: the GRPO trainer (``r1kit.train.run_train``: checkpoints, exact
  resume, logging, NaN guard) with a ``distill.on_policy.Teacher`` in its parts, whose per-token
  reverse-KL advantages replace the reward-based ones. The vocabularies are compared from the
  tokenizers before any model is loaded.

Teacher forward tokens, the cost both methods are compared by, are every token that went
through the teacher's forward passes: for ``sft`` the prompt and completion of every sampled
trace, the rejected ones included; for ``on_policy`` the prompt and completion of every student
sample it scored. Both land in ``log.out_dir/distill.json``.

Order of work, so that errors come before cost: recipe checks (``validate_distill``) -> teacher
and student resolved -> vocabularies (``on_policy``) -> prompts checked against the context ->
teacher sampling or loading -> student training. An ``sft`` run whose final checkpoint exists
is not redone; one killed during fine-tuning starts the fine-tuning again (the dataset, and so
the teacher's cost, is reused). ``on_policy`` resumes exactly, as ``r1kit train`` does.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distill.on_policy import Teacher, check_vocabularies
from distill.sft import SFTConfig, SFTExample, train_sft
from distill.traces import read_dataset, sample_traces, select_verified, write_dataset
from grpo.checkpoint import latest_checkpoint, save_checkpoint
from grpo.observe import RunLog, output_to, route_logs
from grpo.update import NonFiniteError
from r1kit.config import Config, ModelConfig, resolve_teacher
from r1kit.generate import check_prompt_lengths, load_problems, resolve_model_path
from r1kit.train import compute_dtype, device_of, load_policy, run_train
from rollouts.prompts import build_prompt, encode_prompt

log = logging.getLogger("r1kit.distill")


def teacher_path(cfg: Config) -> Path:
    """The teacher's checkpoint folder (a tiny policy is built, a run folder resolved)."""

    return resolve_model_path(ModelConfig(path=resolve_teacher(cfg)))


def run_distill(cfg: Config, show_progress: bool = True) -> dict[str, Any]:
    """Run the method ``distill.method`` names; return what ``distill.json`` holds."""
    out = Path(cfg.log.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = (run_on_policy if cfg.distill.method == "on_policy" else run_sft)(cfg, show_progress)
    record = out / "distill.json"
    if not trained(result) and record.is_file():  # a finished run: its own record stands
        return json.loads(record.read_text())
    result["seconds"] = round(time.perf_counter() - start, 1)
    record.write_text(json.dumps(result, indent=1) + "\n")
    return result


def trained(result: dict) -> bool:
    """Whether this call trained (a finished run is returned without training)."""
    return "final_loss" in result or any(k.startswith("distill/")
                                         for k in result.get("final", {}))


# -- on-policy ----------------------------------------------------------------------------------
def run_on_policy(cfg: Config, show_progress: bool = True) -> dict[str, Any]:
    from transformers import AutoConfig, AutoTokenizer

    teacher, student = teacher_path(cfg), resolve_model_path(cfg.model)
    student_vocab = AutoConfig.from_pretrained(student).vocab_size
    check_vocabularies(AutoTokenizer.from_pretrained(student),
                       AutoTokenizer.from_pretrained(teacher), student_vocab,
                       AutoConfig.from_pretrained(teacher).vocab_size)
    t = Teacher.load(str(teacher), device_of(cfg), cfg.model.dtype, compute_dtype(cfg),
                     cfg.distill.loss, cfg.distill.top_k, student_vocab,
                     cfg.distill.reward_weight)
    result = run_train(cfg, show_progress, teacher=t)
    cost = OnPolicyCost.of_run(Path(cfg.log.out_dir) / "metrics.jsonl", cfg.rollout.n)
    return {"method": "on_policy", "teacher": str(teacher), "student": str(student),
            "checkpoint": result["checkpoint"], "steps": result["step"],
            "teacher_tokens": cost.teacher_tokens, "problems": cost.problems, "n": cfg.rollout.n,
            # every sample the teacher scored also went through the student's update
            "student_tokens": cost.teacher_tokens,
            "student_generated_tokens": cost.student_generated_tokens,
            "student_seconds": round(cost.student_seconds, 2),
            "final": {k: v for k, v in result.items() if k.startswith(("distill/", "reward"))}}


@dataclass(frozen=True)
class OnPolicyCost:
    """What an on-policy run cost, summed over every step of its ``metrics.jsonl`` (the steps
    of the runs it resumed from included: the file is the run's only record of them)."""

    teacher_tokens: float
    """Prompt and completion tokens of every row the teacher's forward passes took in."""
    problems: int
    """Prompts sampled (refills included)."""
    student_generated_tokens: float
    student_seconds: float

    @classmethod
    def of_run(cls, metrics: Path, n: int) -> OnPolicyCost:
        """Every step line must carry the metrics summed here: a step without them is a
        ``KeyError``, never a silent 0."""
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        return cls(
            teacher_tokens=sum(r["distill/teacher_tokens"] for r in rows),
            problems=sum(int(r["groups_sampled"]) for r in rows),
            student_generated_tokens=sum(r["response_len"] * r["groups_sampled"] * n
                                         for r in rows),
            student_seconds=sum(r["time/step"] for r in rows))


# -- rejection-sampled SFT ----------------------------------------------------------------------
def trace_settings(cfg: Config, teacher: Path) -> dict[str, Any]:
    """Everything that decides which traces a dataset holds; a stored dataset is reused only
    when these are equal."""
    r = cfg.rollout
    return {"teacher": str(teacher), "engine": r.engine, "prompt_style": r.prompt_style,
            "n": r.n, "temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k,
            "max_tokens": r.max_tokens, "seed": r.seed,
            # only when set: a dataset sampled before min_tokens was honoured here had 0
            **({"min_tokens": r.min_tokens} if r.min_tokens else {}),
            "rewards": [[f, w] for f, w in zip(cfg.reward.funcs, cfg.reward.weights)],
            "threshold": cfg.distill.threshold, "keep": cfg.distill.keep,
            "data": asdict(cfg.data)}


def build_traces(cfg: Config, teacher: Path, problems: list[Any], show_progress: bool
                 ) -> tuple[list[dict], dict]:
    """(rows, meta) of the verified-trace dataset: read back if it exists with the same
    settings, else sampled from the teacher, verified and written."""
    from transformers import AutoTokenizer

    r, d = cfg.rollout, cfg.distill
    path = Path(d.dataset) if d.dataset else Path(cfg.log.out_dir) / "traces.jsonl"
    settings = trace_settings(cfg, teacher)
    found = read_dataset(path, settings)
    if found is not None:
        log.info("reusing %s (%d traces, same settings)", path, len(found[0]))
        return found[0], {**found[1], "reused": True}
    tok = AutoTokenizer.from_pretrained(teacher)
    prompts = [build_prompt(p.question, r.prompt_style, tok) for p in problems]
    check_prompt_lengths(prompts, tok, r.max_tokens, r.max_model_len)
    sampling = r.sampling()
    with output_to(Path(cfg.log.out_dir) / "engine.log"):
        engine = r.start_engine(teacher, cfg.model.dtype)
    scorer = None
    try:
        scorer = cfg.reward.scorer(r.max_tokens)
        start = time.perf_counter()
        traces, cost = sample_traces(engine, scorer, problems, prompts, r.n, sampling,
                                     show=show_progress)
        cost["sample_seconds"] = round(time.perf_counter() - start, 1)
    finally:
        engine.close()
        if scorer is not None:
            scorer.close()
    kept = select_verified(traces, d.threshold, d.keep)
    samp = {"temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k,
            "max_tokens": r.max_tokens, "seed": r.seed, "n": r.n,
            **({"min_tokens": r.min_tokens} if r.min_tokens else {})}
    rows = [{"question": problems[t.problem].question, "answer": problems[t.problem].answer,
             "prompt": prompts[t.problem], "completion": t.completion, "reward": t.reward,
             "finish_reason": t.finish_reason, "teacher": str(teacher), "sampling": samp}
            for t in kept]
    meta = {"settings": settings, "problems": len(problems), "kept": len(rows),
            "verified": sum(t.reward >= d.threshold for t in traces),
            "problems_kept": len({t.problem for t in kept}), **cost}
    write_dataset(path, rows, meta)
    log.info("wrote %s: %d of %d traces verified", path, len(rows), len(traces))
    return rows, {**meta, "reused": False}


def sft_examples(rows: list[dict], tokenizer: Any, prompt_style: str) -> list[Any]:
    """Dataset rows -> ``SFTExample`` s in the student's own tokens: its prompt for the row's
    question, the completion text, and its EOS when the teacher stopped on its own."""

    out = []
    for row in rows:
        ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        if row.get("finish_reason", "stop") == "stop":
            ids = ids + [tokenizer.eos_token_id]
        prompt = encode_prompt(tokenizer, build_prompt(row["question"], prompt_style, tokenizer))
        out.append(SFTExample(prompt, ids))
    return out


def run_sft(cfg: Config, show_progress: bool = True) -> dict[str, Any]:
    from transformers import AutoTokenizer

    out, t = Path(cfg.log.out_dir), cfg.train
    route_logs(out, cfg.log.level)
    problems = load_problems(cfg.data)  # a bad data file fails before any model is loaded
    teacher, student = teacher_path(cfg), resolve_model_path(cfg.model)
    AutoTokenizer.from_pretrained(student)  # an unreadable student fails before sampling
    rows, meta = build_traces(cfg, teacher, problems, show_progress)
    done = latest_checkpoint(out)
    summary = {"method": "sft", "teacher": str(teacher), "student": str(student),
               "dataset": str(Path(cfg.distill.dataset) if cfg.distill.dataset
                              else out / "traces.jsonl"),
               "teacher_tokens": meta["teacher_tokens"], "traces_sampled": meta["sampled"],
               "traces_verified": meta["verified"], "traces_kept": meta["kept"],
               "problems": meta["problems"],
               "problems_kept": meta["problems_kept"], "dataset_reused": meta["reused"]}
    if done is not None and cfg.train.resume == "auto" and done.name.endswith(f"{t.steps:06d}"):
        log.info("%s already holds the final checkpoint; nothing to train", out)
        return {**summary, "checkpoint": str(done / "model"), "steps": t.steps}
    if not rows:
        raise ValueError(f"no teacher trace passed distill.threshold={cfg.distill.threshold} "
                         f"({int(meta['sampled'])} sampled); lower it or sample more")
    start = time.perf_counter()
    ckpt, losses, tokens = fine_tune(cfg, student, rows, show_progress)
    return {**summary, "checkpoint": str(ckpt / "model"), "steps": t.steps,
            "final_loss": losses[-1], "examples": len(rows), "student_tokens": sum(tokens),
            "student_seconds": round(time.perf_counter() - start, 2)}


def fine_tune(cfg: Config, student: Path, rows: list[dict], show_progress: bool):
    """The student fine-tuned on ``rows`` with ``distill.sft``; metrics and the final
    checkpoint as ``r1kit train`` writes them. Returns (checkpoint, losses, tokens of each
    step)."""
    import torch
    from transformers import AutoTokenizer

    t, d, out = cfg.train, cfg.distill, Path(cfg.log.out_dir)
    torch.manual_seed(t.seed)
    tok = AutoTokenizer.from_pretrained(student)
    examples = sft_examples(rows, tok, cfg.rollout.prompt_style)
    policy = load_policy(cfg, student, None, device_of(cfg))
    (out / "metrics.jsonl").unlink(missing_ok=True)  # the fine-tuning starts again
    runlog = RunLog(out, t.steps, 0, tensorboard=t.tensorboard, wandb=t.wandb,
                    config=asdict(cfg), show_progress=show_progress)

    def on_step(step: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise NonFiniteError(f"step {step + 1}: loss is not finite ({loss}); the optimiser "
                                 "step was applied in memory but nothing was saved after it")
        runlog.log(step + 1, {"loss": loss})

    tokens: list[int] = []
    try:
        losses = train_sft(policy, examples, SFTConfig(
            steps=t.steps, lr=t.lr, row_tokens=d.row_tokens, rows_per_step=d.rows_per_step,
            warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
            grad_clip=t.max_grad_norm or math.inf, seed=t.seed), tok.pad_token_id, on_step,
            tokens)
    finally:
        runlog.close()
    ckpt = save_checkpoint(out, t.steps, policy, tok, {"step": t.steps, "method": "sft"},
                           t.keep_last)
    return ckpt, losses, tokens
