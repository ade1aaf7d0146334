"""``r1kit demo`` (``make demo``): R1-Zero that visibly learns on a laptop, told as a story.

Phases, each with its own progress bar, all writing into the recipe's ``log.out_dir``:

1. **base**: the supervised base (``r1kit.base``), built once and cached;
2. **before**: ``r1kit eval`` of the base on held-out arithmetic (``heldout.jsonl``, problems the
   training split never contains) -> ``eval_before/``;
3. **train**: GRPO with the recipe (``recipes/tiny_r1_zero.yaml``) -> ``metrics.jsonl``, ``tb/``,
   ``checkpoints/``;
4. **after**: the same evaluation of the final checkpoint -> ``eval_after/``;
5. **report**: the paired comparison (``r1kit eval compare``), ``curves.png`` (reward, accuracy,
   format, response length, entropy and KL against step) and ``report.md``, printed at the end.

Re-running continues where a run stopped: the base is cached, training resumes from its last
checkpoint (``train.resume: auto``) and evaluations skip finished problems. ``demo.json``
records what the run was made from (the recipe, the base, the evaluation's size); when that
changed, the old run folder is moved aside to ``<log.out_dir>.old-<time>`` and the demo starts
afresh.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eval.report import compare_runs
from r1kit.base import SFT_STEPS, build_base
from r1kit.config import Config, load_config
from r1kit.evaluate import run_eval
from r1kit.tasks import arithmetic_tasks
from r1kit.train import run_train

CURVES = (("reward", "reward (total)"), ("reward/accuracy", "accuracy (train samples)"),
          ("reward/format", "format compliance (train samples)"),
          ("response_len", "response length (tokens)"), ("entropy", "entropy (nats/token)"),
          ("kl", "KL to the base (k3)"))


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def write_heldout(cfg: Config, path: Path, count: int) -> None:
    """Held-out problems of the recipe's task family as a user suite (``PATH.jsonl:math``)."""

    d = cfg.data
    tasks = arithmetic_tasks("heldout", count, seed=d.seed, max_operand=d.max_operand,
                             max_terms=d.max_terms)
    path.write_text("".join(json.dumps({"id": f"heldout-{i}", "question": t.question,
                                        "answer": t.answer}) + "\n" for i, t in enumerate(tasks)))


def evaluate(cfg: Config, model: str, suite: Path, out: Path, n: int, progress: bool) -> dict:

    ecfg = load_config(None, [f"model.path={model}", f"log.out_dir={out}",
                              f"log.level={cfg.log.level}", "eval.engine=hf",
                              f"eval.suites=[{json.dumps(str(suite) + ':math')}]", f"eval.n={n}",
                              f"eval.max_tokens={cfg.rollout.max_tokens}",
                              f"eval.prompt_style={cfg.rollout.prompt_style}"])
    return run_eval(ecfg, show_progress=progress)


def plot_curves(metrics_path: Path, png: Path) -> None:
    """Reward, accuracy, response length, entropy and KL against step, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.4))
    for ax, (key, title) in zip(axes.flat, CURVES):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        ax.plot([s for s, _ in pts], [v for _, v in pts], lw=1.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def graded(run: Path, suite: str) -> dict[str, tuple[list[bool], list[bool]]]:
    """Per problem id, each completion's correctness and format flag (``samples/``)."""
    out = {}
    for line in (run / "samples" / f"{suite}.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            cs = row["completions"]
            out[row["id"]] = ([bool(c["correct"]) for c in cs], [bool(c["format"]) for c in cs])
    return out


def pass_curve(rows: dict[str, tuple[list[bool], list[bool]]], n: int) -> list[float]:
    """pass@k for k = 1..n (unbiased, mean over problems)."""
    from eval.metrics import pass_at_k

    return [sum(pass_at_k(n, sum(c), k) for c, _ in rows.values()) / len(rows)
            for k in range(1, n + 1)]


def formatted_accuracy(before: dict, after: dict, samples: int = 2000,
                       seed: int = 0) -> dict[str, float]:
    """Accuracy among completions in the R1 format, before and after, over the problems both
    runs scored, and the paired 95% interval of the difference: problems resampled with
    replacement (the same draw for both runs), each run's ratio pooled over its formatted
    completions; a draw where either run has none is dropped.

    >>> b = {"p": ([True, False], [True, True]), "q": ([False, False], [False, True])}
    >>> a = {"p": ([True, True], [True, True]), "q": ([True, False], [True, True])}
    >>> r = formatted_accuracy(b, a, samples=200); round(r["before"], 3), round(r["after"], 3)
    (0.333, 0.75)
    """
    import numpy as np

    ids = sorted(set(before) & set(after))

    def counts(rows):  # (problems, 2): correct-and-formatted, formatted
        return np.array([[sum(c and f for c, f in zip(*rows[i])), sum(rows[i][1])] for i in ids],
                        dtype=float)

    cb, ca = counts(before), counts(after)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(samples, len(ids)))
    sb, sa = cb[draws].sum(1), ca[draws].sum(1)  # (samples, 2)
    keep = (sb[:, 1] > 0) & (sa[:, 1] > 0)
    diff = sa[keep, 0] / sa[keep, 1] - sb[keep, 0] / sb[keep, 1]
    b_all, a_all = cb.sum(0), ca.sum(0)
    low, high = (np.percentile(diff, [2.5, 97.5]) if keep.any() else (float("nan"),) * 2)
    return {"before": float(b_all[0] / max(b_all[1], 1)),
            "after": float(a_all[0] / max(a_all[1], 1)),
            "formatted_before": int(b_all[1]), "formatted_after": int(a_all[1]),
            "low": float(low), "high": float(high)}


def plot_pass_curve(before: list[float], after: list[float], png: Path) -> None:
    """pass@k against k, base and RL policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = range(1, len(before) + 1)
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    ax.plot(ks, [100 * v for v in before], "o-", label="base")
    ax.plot(ks, [100 * v for v in after], "s-", label="after RL")
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (%)")
    ax.set_xticks(list(ks))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _first_sample(run: Path, suite: str) -> tuple[str, str, bool]:
    row = json.loads((run / "samples" / f"{suite}.jsonl").read_text().splitlines()[0])
    c = row["completions"][0]
    return row["prompt"].rsplit("User: ", 1)[-1].split("\n")[0], c["text"], c["correct"]


def report(out: Path, before: dict, after: dict, cmp: dict, timings: dict, suite: str) -> str:
    b, a = before["suites"][suite], after["suites"][suite]
    n = b["n"]
    m = cmp["suites"][suite]["metrics"]["avg@n"]

    def row(name: str, x: dict, y: dict) -> str:
        return (f"| {name} | {100 * x['value']:.1f} ({100 * x['low']:.1f} to "
                f"{100 * x['high']:.1f}) | {100 * y['value']:.1f} ({100 * y['low']:.1f} to "
                f"{100 * y['high']:.1f}) |")

    q, before_text, ok_b = _first_sample(out / "eval_before", suite)
    _, after_text, ok_a = _first_sample(out / "eval_after", suite)
    rows_b, rows_a = graded(out / "eval_before", suite), graded(out / "eval_after", suite)
    curve_b, curve_a = pass_curve(rows_b, n), pass_curve(rows_a, n)
    plot_pass_curve(curve_b, curve_a, out / "pass_at_k.png")
    fa = formatted_accuracy(rows_b, rows_a)
    maj = f"maj@{n}"
    sharpen = [
        "RL and the answers the model already gives (DeepSeekMath, section 5.2.2): pass@k for "
        f"k = 1..{n} and maj@{n}, in % (`pass_at_k.png`):", "",
        "| metric (%) | base | after RL |", "|---|---|---|",
        *[f"| pass@{k} | {100 * x:.1f} | {100 * y:.1f} |"
          for k, x, y in zip(range(1, n + 1), curve_b, curve_a)],
        *([f"| {maj} | {100 * b['metrics'][maj]['value']:.1f} | "
           f"{100 * a['metrics'][maj]['value']:.1f} |"] if maj in b["metrics"] else []), "",
        f"Accuracy among answers in the R1 format: {100 * fa['before']:.1f}% of "
        f"{fa['formatted_before']} formatted completions before, {100 * fa['after']:.1f}% of "
        f"{fa['formatted_after']} after; difference {100 * (fa['after'] - fa['before']):+.1f} "
        f"points, paired 95% interval {100 * fa['low']:+.1f} to {100 * fa['high']:+.1f} "
        "(problems resampled).", ""]
    lines = [
        "# r1kit demo: R1-Zero on the tiny Qwen3-MoE", "",
        f"Held-out arithmetic, {b['problems']} problems x {n} samples (temperature "
        f"{b['sampling']['temperature']}), before and after GRPO; 95% intervals.", "",
        "| metric (%) | base | after RL |", "|---|---|---|",
        row(f"accuracy (avg@{n})", b["metrics"][f"avg@{n}"], a["metrics"][f"avg@{n}"]),
        row("format compliance", b["format"], a["format"]),
        f"| mean length (tokens) | {b['length']:.1f} | {a['length']:.1f} |", "",
        f"Paired comparison over the same problems: {m['verdict']}", "",
        *sharpen,
        f"Example, \"{q}\":", "",
        f"- base ({'right' if ok_b else 'wrong'}): `{' '.join(before_text.split())}`",
        f"- after RL ({'right' if ok_a else 'wrong'}): `{' '.join(after_text.split())}`", "",
        "| phase | seconds |", "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in timings.items()], "",
        "Files: `curves.png`, `pass_at_k.png`, `metrics.jsonl`, `tb/` (TensorBoard), `checkpoints/` (the final "
        "model opens with `AutoModelForCausalLM.from_pretrained`), `eval_before/` and "
        "`eval_after/` (report.md, summary.json, samples/), `compare.json`.",
    ]
    return "\n".join(lines) + "\n"


def check_finite(metrics_path: Path) -> None:
    """Every number the trainer logged is finite (the demo fails loudly otherwise)."""
    for line in metrics_path.read_text().splitlines():
        row = json.loads(line)
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise RuntimeError(f"step {row['step']}: non-finite {', '.join(bad)}")


def demo_inputs(cfg: Config, base: Path, heldout: int, n: int) -> dict[str, Any]:
    """Everything the demo's phases depend on, flat (``section.key``): the recipe but its
    ``log`` section, the base (its folder and how it was built) and the evaluation's size."""
    flat = {f"{section}.{key}": value for section, fields in asdict(cfg).items()
            if isinstance(fields, dict) and section != "log" for key, value in fields.items()}
    meta = base / "r1kit_tiny.json"
    flat["base"] = json.loads(meta.read_text()).get("base") if meta.is_file() else None
    return json.loads(json.dumps({**flat, "heldout": heldout, "n": n}))


def start_afresh_if_changed(out: Path, inputs: dict[str, Any]) -> str | None:
    """Resume when ``out`` was made from the same ``inputs`` (``demo.json``); otherwise move what
    it holds aside to ``<out>.old-<time>`` and start afresh. Returns the line saying so, or None.
    A folder from a demo that wrote no ``demo.json`` counts as made from other inputs."""
    record = out / "demo.json"
    before = json.loads(record.read_text()) if record.is_file() else None
    held = list(out.iterdir()) if out.is_dir() else []
    line = None
    if held and before != inputs:
        changed = ([k for k in inputs if before.get(k) != inputs[k]] if before is not None
                   else ["no demo.json"])
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = next(a for a in (out.with_name(f"{out.name}.old-{stamp}{s}")
                                 for s in ("", *(f"-{i}" for i in range(2, 1000))))
                     if not a.exists())
        out.rename(aside)
        out.mkdir(parents=True)
        line = (f"r1kit demo: {out} was made from other inputs ({', '.join(changed)}); moved it "
                f"to {aside} and starting afresh")
    record.write_text(json.dumps(inputs, indent=1))
    return line


def run_demo(cfg: Config, *, heldout: int = 200, n: int = 4, base_steps: int | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run every phase; return the paths and figures the report shows."""

    out = Path(cfg.log.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    family = cfg.model.path.removeprefix("tiny:").removesuffix("/base")

    say("[1/5] base: the tiny Qwen3-MoE pre-trained on worked arithmetic (cached after the "
        "first build)")
    t = time.perf_counter()
    base = build_base(family, seed=cfg.model.tiny_seed, progress=progress,
                      steps=base_steps or SFT_STEPS)
    cfg.model.path = str(base)
    timings["base"] = time.perf_counter() - t
    aside = start_afresh_if_changed(out, demo_inputs(cfg, base, heldout, n))
    if aside:
        say(aside)

    suite = out / "heldout.jsonl"
    write_heldout(cfg, suite, heldout)
    say(f"[2/5] before: evaluating the base on {heldout} held-out problems x {n} samples")
    t = time.perf_counter()
    before = evaluate(cfg, str(base), suite, out / "eval_before", n, progress)
    timings["eval before"] = time.perf_counter() - t

    say(f"[3/5] train: GRPO, {cfg.train.steps} steps of {cfg.train.prompts_per_step} prompts x "
        f"{cfg.rollout.n} completions")
    t = time.perf_counter()
    result = run_train(cfg, show_progress=progress)
    timings["train"] = time.perf_counter() - t
    check_finite(out / "metrics.jsonl")

    say("[4/5] after: evaluating the trained policy on the same problems")
    t = time.perf_counter()
    after = evaluate(cfg, result["checkpoint"], suite, out / "eval_after", n, progress)
    timings["eval after"] = time.perf_counter() - t

    say("[5/5] report: paired comparison, curves, report.md")
    cmp = compare_runs(out / "eval_before", out / "eval_after", labels=("the base", "the RL policy"))
    (out / "compare.json").write_text(json.dumps(cmp, indent=1))
    plot_curves(out / "metrics.jsonl", out / "curves.png")
    text = report(out, before, after, cmp, timings, suite.stem)
    (out / "report.md").write_text(text)
    name = suite.stem
    return {"out_dir": str(out), "report": str(out / "report.md"), "text": text,
            "before": before["suites"][name], "after": after["suites"][name],
            "comparison": cmp["suites"][name]["metrics"]["avg@n"],
            "checkpoint": result["checkpoint"], "timings": timings}
