"""``r1kit distill-demo`` (``make distill-demo``): the RL-trained tiny MoE of ``make demo`` teaches a
tiny dense Qwen3 by each distillation method, and the report sets the results side by side.

Phases, all writing into ``--out-dir`` (default ``runs/tiny_distill``):

1. **teacher**: the newest checkpoint of the GRPO demo's run folder (``runs/tiny_r1_zero``); if
   it holds none, the demo's own code trains it first (``r1kit.base`` then ``r1kit.train``, with
   ``recipes/tiny_r1_zero.yaml``), and the result is reused next time.
2. **student**: the dense Qwen3's supervised base (``r1kit.base.build_base("qwen3_dense")``),
   built by the same code and data as the teacher's base but without its slips
   (``STUDENT_SLIP``), cached. Why not the random-init
   checkpoint: a real student is a pretrained model, and on-policy distillation needs a student
   whose samples are already in the right neighbourhood (a random student's samples are noise
   the teacher can only call unlikely); both methods start from this same checkpoint.
3. **before**: ``r1kit eval`` of teacher and student on the held-out problems of ``make demo``
   (``heldout.jsonl``: the same generator and settings, so the same problems).
4. **sft**: ``r1kit distill recipes/tiny_distill_sft.yaml`` -> ``sft/``, then evaluation.
5. **on_policy**: ``r1kit distill recipes/tiny_distill_on_policy.yaml`` -> ``on_policy/``, then
   evaluation.
6. **after_sft**: on-policy distillation again, started from the SFT student
   (``recipes/tiny_distill_after_sft.yaml`` -> ``after_sft/``), then evaluation and a paired
   comparison with the SFT student over the same problems: the two methods combined, in the
   order of Qwen3's strong-to-weak distillation (off-policy first, then on-policy; Qwen3
   technical report, 2025).
7. **report**: accuracy of each model with its 95% interval, the share of the teacher's accuracy
   each student reaches, the teacher forward tokens each method spent (``distill.json``; the
   SFT-then-on-policy student is charged both), the paired verdict of SFT + on-policy against
   SFT alone; ``report.md`` and ``report.json``.

Re-running continues: the teacher, the student base and the SFT dataset are reused, finished
runs are not redone, and evaluations skip finished problems.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from eval.report import compare_runs
from grpo.checkpoint import latest_checkpoint
from r1kit.base import build_base
from r1kit.config import load_config, resolve_teacher, validate_distill, validate_training
from r1kit.demo import evaluate, say, write_heldout
from r1kit.distillation import run_distill
from r1kit.train import run_train

REPO = Path(__file__).resolve().parent.parent
TEACHER_RECIPE = REPO / "recipes" / "tiny_r1_zero.yaml"
RECIPES = {"sft": REPO / "recipes" / "tiny_distill_sft.yaml",
           "on_policy": REPO / "recipes" / "tiny_distill_on_policy.yaml",
           "after_sft": REPO / "recipes" / "tiny_distill_after_sft.yaml"}
LABELS = {"sft": "rejection-sampled SFT", "on_policy": "on-policy distillation",
          "after_sft": "on-policy distillation of the SFT student"}
STUDENT_FAMILY = "qwen3_dense"
STUDENT_SLIP = 0.0
"""The student's base has no slips (``r1kit.base``): they are there to give the RL demo answers
to sharpen, and a student that must first unlearn careless mistakes measures its pretraining
more than the distillation methods. With slips (2026-12-08): student base 38.0%, SFT 52.8% (75%
of the teacher's 70.0%), SFT then on-policy 54.2% (+1.5 points, paired 95% interval -2.5 to
+5.5)."""
TARGET = 0.8  # a student should reach this share of the teacher's held-out accuracy


def ensure_teacher(run: Path, progress: bool) -> Path:
    """The teacher's run folder, trained with the GRPO demo's recipe if it holds no checkpoint."""

    if latest_checkpoint(run) is not None:
        return run

    say(f"      no checkpoint in {run}: training the teacher as `make demo` does (minutes)")
    cfg = load_config(TEACHER_RECIPE, [f"log.out_dir={run}"])
    validate_training(cfg)
    family = cfg.model.path.removeprefix("tiny:").removesuffix("/base")
    cfg.model.path = str(build_base(family, seed=cfg.model.tiny_seed, progress=progress))
    run_train(cfg, show_progress=progress)
    return run


def accuracy(summary: dict, suite: str, n: int) -> dict[str, float]:
    m = summary["suites"][suite]["metrics"][f"avg@{n}"]
    return {"value": m["value"], "low": m["low"], "high": m["high"]}


def run_distill_demo(out_dir: str | Path, teacher_run: str | Path, *, heldout: int = 200,
                     n: int = 2, progress: bool = True) -> dict[str, Any]:
    """Every phase; returns the figures ``report.json`` holds and the report text."""

    out, timings = Path(out_dir), {}
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    say(f"[1/7] teacher: the RL-trained tiny MoE of `make demo` ({teacher_run})")
    t = time.perf_counter()
    teacher_run = ensure_teacher(Path(teacher_run), progress)
    timings["teacher"] = time.perf_counter() - t

    say("[2/7] student: the tiny dense Qwen3's supervised base (cached after the first build)")
    t = time.perf_counter()
    student = build_base(STUDENT_FAMILY, progress=progress, slip=STUDENT_SLIP)
    timings["student base"] = time.perf_counter() - t

    cfgs = {m: load_config(p, [f"distill.teacher={teacher_run}", f"model.path={student}",
                               f"log.out_dir={out / m}"]) for m, p in RECIPES.items()}
    for cfg in cfgs.values():
        validate_distill(cfg)
    teacher_ckpt = Path(cfgs["sft"].distill.teacher)

    teacher_model = resolve_teacher(cfgs["sft"])
    suite = out / "heldout.jsonl"
    write_heldout(cfgs["sft"], suite, heldout)
    name = suite.stem

    say(f"[3/7] before: teacher and student on {heldout} held-out problems x {n} samples")
    t = time.perf_counter()
    evals = {"teacher": evaluate(cfgs["sft"], teacher_model, suite, out / "eval_teacher", n,
                                 progress),
             "student": evaluate(cfgs["sft"], str(student), suite, out / "eval_student", n,
                                 progress)}
    timings["eval before"] = time.perf_counter() - t

    runs: dict[str, dict] = {}
    retrained: set[str] = set()
    for i, (method, cfg) in enumerate(cfgs.items(), start=4):
        say(f"[{i}/7] {method}: {LABELS[method]}, then evaluation")
        t = time.perf_counter()
        if method == "after_sft":  # starts from the SFT student just trained
            cfg.model.path = runs["sft"]["checkpoint"]
            if "sft" in retrained:  # a run from an earlier SFT student is of another model
                shutil.rmtree(cfg.log.out_dir, ignore_errors=True)
        record = Path(cfg.log.out_dir) / "distill.json"
        before = record.read_text() if record.is_file() else None
        runs[method] = run_distill(cfg, show_progress=progress)
        timings[method] = time.perf_counter() - t
        if record.read_text() != before:  # trained anew: earlier evaluation samples are stale
            retrained.add(method)
            shutil.rmtree(out / f"eval_{method}", ignore_errors=True)
        t = time.perf_counter()
        evals[method] = evaluate(cfg, runs[method]["checkpoint"], suite, out / f"eval_{method}",
                                 n, progress)
        timings[f"eval {method}"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start

    say("[7/7] report")
    paired = compare_runs(out / "eval_sft", out / "eval_after_sft",
                          labels=("the SFT student", "SFT + on-policy"))
    (out / "compare_after_sft.json").write_text(json.dumps(paired, indent=1) + "\n")
    figures = summarise(evals, runs, name, n, heldout, paired_verdict(paired, name))
    figures.update({"teacher": teacher_model, "teacher_run": str(teacher_ckpt),
                    "student": str(student), "timings_s": {k: round(v, 1)
                                                           for k, v in timings.items()}})
    text = report(figures)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(figures, indent=1) + "\n")
    return {"out_dir": str(out), "text": text, **figures}


def paired_verdict(cmp: dict, suite: str) -> dict[str, Any]:
    """SFT + on-policy against SFT alone (``compare_runs``' avg@n row, after minus before):
    the difference, its 95% interval, the p-value, the verdict, and the demo's target: not
    significantly lower (the interval's upper end at or above 0)."""
    m = cmp["suites"][suite]["metrics"]["avg@n"]
    return {"difference": m["diff"], "low": m["low"], "high": m["high"], "p": m["p_value"],
            "verdict": m["verdict"], "not_lower": m["high"] is not None and bool(m["high"] >= 0)}


def summarise(evals: dict, runs: dict, suite: str, n: int, heldout: int,
              after_sft_vs_sft: dict[str, Any]) -> dict[str, Any]:
    """Accuracies, shares of the teacher's, teacher tokens, and the verdicts on the targets."""
    acc = {k: accuracy(v, suite, n) for k, v in evals.items()}
    teacher = acc["teacher"]["value"]
    share = {k: (a["value"] / teacher if teacher > 0 else 0.0) for k, a in acc.items()}
    tokens = {m: r["teacher_tokens"] for m, r in runs.items()}
    if "after_sft" in tokens:  # its student is the SFT student: it paid for SFT's traces too
        tokens["after_sft"] += tokens["sft"]
    problems = {m: r["problems"] for m, r in runs.items()}
    return {
        "heldout_problems": heldout, "samples_per_problem": n, "accuracy": acc,
        "share_of_teacher": share, "teacher_tokens": tokens,
        "teacher_tokens_per_problem": {m: tokens[m] / max(problems[m], 1) for m in tokens},
        "training_problems": problems,
        "runs": runs, "after_sft_vs_sft": after_sft_vs_sft,
        "targets": {
            "after_sft_not_lower_than_sft": after_sft_vs_sft["not_lower"],
            "sft_reaches_80pct": share["sft"] >= TARGET,
            "on_policy_reaches_80pct": share["on_policy"] >= TARGET,
            "on_policy_fewer_teacher_tokens": tokens["on_policy"] < tokens["sft"],
            "on_policy_same_level_in_fewer_tokens": (share["on_policy"] >= TARGET
                                                     and tokens["on_policy"] < tokens["sft"]),
        },
    }


def report(f: dict) -> str:
    acc, share, tok = f["accuracy"], f["share_of_teacher"], f["teacher_tokens"]
    n, sft, op = f["samples_per_problem"], f["runs"]["sft"], f["runs"]["on_policy"]
    both, vs = f["runs"]["after_sft"], f["after_sft_vs_sft"]

    def pct(a: dict) -> str:
        return f"{100 * a['value']:.1f} ({100 * a['low']:.1f} to {100 * a['high']:.1f})"

    rows = [
        ("teacher (tiny Qwen3-MoE after GRPO)", "teacher", "-", "-"),
        ("student before (tiny dense Qwen3, supervised base)", "student", "-", "-"),
        ("student after rejection-sampled SFT", "sft", f"{tok['sft']:,.0f}",
         f"{sft['seconds']:.0f}"),
        ("student after on-policy distillation", "on_policy", f"{tok['on_policy']:,.0f}",
         f"{op['seconds']:.0f}"),
        ("student after SFT, then on-policy distillation", "after_sft",
         f"{tok['after_sft']:,.0f}", f"{sft['seconds'] + both['seconds']:.0f}"),
    ]
    ok = {k: "yes" if v else "NO" for k, v in f["targets"].items()}
    intro = (f"Held-out arithmetic, {f['heldout_problems']} problems x {n} samples, accuracy "
             f"avg@{n} (%) with 95% intervals. Teacher forward tokens: every token through the "
             "teacher's forward passes (SFT: prompt + completion of every sampled trace, "
             "rejected ones included; on-policy: prompt + completion of every student sample "
             "it scored).")
    runs = (f"SFT: {sft['traces_verified']} of {int(sft['traces_sampled'])} teacher traces "
            f"verified, {sft['traces_kept']} kept ({sft['problems_kept']} of {sft['problems']} "
            f"problems), {sft['steps']} steps. On-policy: {op['steps']} steps, "
            f"{op['problems']} prompts x {op['n']} samples. On-policy after SFT: "
            f"{both['steps']} steps, {both['problems']} prompts x {both['n']} samples, "
            f"{both['teacher_tokens']:,.0f} teacher tokens on top of SFT's (the row charges "
            "both).")
    low, high = (("n/a", "n/a") if vs["low"] is None
                 else (f"{100 * vs['low']:+.1f}", f"{100 * vs['high']:+.1f}"))
    paired = (f"- SFT, then on-policy, is not lower than SFT alone (paired over the same "
              f"problems): {ok['after_sft_not_lower_than_sft']} ({100 * vs['difference']:+.1f} "
              f"points, 95% interval {low} to {high}, p = {vs['p']:.2g}; {vs['verdict']})")
    ratio = tok["on_policy"] / max(tok["sft"], 1)
    lines = [
        "# r1kit distill demo: the RL-trained tiny MoE teaches a tiny dense Qwen3", "", intro, "",
        "| model | accuracy (%) | share of teacher | teacher forward tokens | run s |",
        "|---|---|---|---|---|",
        *[f"| {label} | {pct(acc[k])} | {100 * share[k]:.0f}% | {t} | {s} |"
          for label, k, t, s in rows], "", runs, "",
        (f"- SFT reaches {int(100 * TARGET)}% of the teacher: {ok['sft_reaches_80pct']} "
         f"({100 * share['sft']:.0f}%)"),
        (f"- on-policy reaches {int(100 * TARGET)}% of the teacher: "
         f"{ok['on_policy_reaches_80pct']} ({100 * share['on_policy']:.0f}%)"),
        (f"- on-policy reaches that level in fewer teacher forward tokens: "
         f"{ok['on_policy_same_level_in_fewer_tokens']} ({100 * share['on_policy']:.0f}% of the "
         f"teacher with {tok['on_policy']:,.0f} tokens against SFT's {tok['sft']:,.0f}, "
         f"{ratio:.2f}x)"), paired, "",
        "| phase | seconds |", "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in f["timings_s"].items()], "",
        ("Files: `sft/` (traces.jsonl, checkpoints/, metrics.jsonl, distill.json), `on_policy/` "
         "and `after_sft/` (checkpoints/, metrics.jsonl, tb/, distill.json), `eval_*/` "
         "(report.md, summary.json, samples/), `compare_after_sft.json`, `report.json`."),
    ]
    return "\n".join(lines) + "\n"
