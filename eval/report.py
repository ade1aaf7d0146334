"""From per-problem samples to numbers a person can trust: summary.json, report.md, and the paired
comparison of two runs (``r1kit eval compare``).

Every metric comes with a 95% percentile-bootstrap interval (``eval.metrics``). For avg@n (and
format compliance) it is two-stage: problems are resampled, then the samples within each problem,
so both problem and sample variance are in it (slightly conservative: the spread across problems
already carries some sample noise). pass@k for k > 1 and maj@n resample problems only: resampling
samples with replacement duplicates them, which biases both downwards (an interval could miss its
own estimate), while each problem's unbiased per-problem estimate already carries its sample
variance into the spread across problems (law of total variance).

Metric names: ``avg@n`` is pass@1 averaged over the n samples (what papers call pass@1),
``pass@k`` the unbiased Codex estimator, ``maj@n`` the majority vote over all n extracted answers
(math only; DeepSeek-R1's cons@64 is maj@64, and the report says so only when n is 64).
``format`` is format compliance (``r1kit.evaluate.format_ok``), ``length`` the mean completion
length (tokens, or characters for a replay without a tokenizer), ``truncated`` the fraction that
hit the token budget (``truncated_count`` the number). Each suite also records the prompt
template, what was graded, the budget and where it came from, and for LiveCodeBench which tests
were run (a public-tests-only score is not LiveCodeBench's) and the date window.

maj@n clusters answers this way: every correct answer is one cluster (all equal the gold); wrong
answers cluster by normalised text, numbers by value. Two wrong answers that are equal only
symbolically (``x(x+1)`` and ``x^2+x``) count as different answers, which can only help a correct
answer win a vote it would have tied or lost.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from eval import metrics as M
from eval.types import SuitePlan
from rewards.math.normalize import normalize, parse_rational

LEVEL = 0.95
TEMPLATES = {
    "r1_zero": "DeepSeek-R1 Table 1 template, verbatim, `<think>` opened",
    "r1kit_zero": "r1kit's wording of the R1-Zero template (the tiny models')",
    "qwen_math": "Qwen2.5-Math CoT template (ChatML, system prompt: reason step by step, "
                 "answer in \\boxed{})",
    "chat": "the model's chat template",
    "chat_think": "the model's chat template, R1's boxed-answer instruction in the user turn, "
                  "response opened with `<think>`",
    "few_shot": "the suite's standard few-shot prompt",
}
"""How the report names each prompt style (``rollouts/prompts.py``)."""


def metric_title(name: str) -> str:
    """A metric's name as the report prints it: maj@n says whether it is R1's cons@64.

    >>> metric_title("maj@64"), metric_title("maj@16"), metric_title("pass@8")
    ('maj@64 (= cons@64)', 'maj@16 (not cons@64)', 'pass@8')
    """
    if name.startswith("maj@"):
        return f"{name} (= cons@64)" if name == "maj@64" else f"{name} (not cons@64)"
    return name


def which_tests(plan: SuitePlan) -> str | None:
    """Which tests a suite whose problems say (``meta["private_tests"]``) was scored on."""
    counts = [p.meta["private_tests"] for p in plan.problems if "private_tests" in p.meta]
    if not counts:
        return None
    with_private = sum(c > 0 for c in counts)
    if with_private == len(counts):
        return "public and private tests"
    if with_private == 0:
        return "public tests only"
    return f"public tests; private tests for {with_private} of {len(counts)} problems"


def vote_key(answer: str | None, correct: bool) -> str | None:
    """The cluster an extracted answer votes for (see the module docstring).

    >>> vote_key("\\\\frac{1}{2}", False) == vote_key("0.5", False)
    True
    >>> vote_key("7", True), vote_key(None, False)
    ('<correct>', None)
    """
    if answer is None:
        return None
    if correct:
        return "<correct>"
    text = normalize(answer)
    value = parse_rational(text)
    return f"={value}" if value is not None else text


def matrices(rows: list[dict], n: int) -> dict[str, np.ndarray]:
    """Per-problem rows -> ``(P, n)`` arrays: correct, votes (cluster ids, -1 = no answer),
    format, tokens, chars, truncated."""
    P = len(rows)
    out = {"correct": np.zeros((P, n), bool), "votes": np.full((P, n), -1, np.int64),
           "format": np.zeros((P, n)), "tokens": np.zeros((P, n)), "chars": np.zeros((P, n)),
           "truncated": np.zeros((P, n))}
    for i, row in enumerate(rows):
        comps = row["completions"]
        if len(comps) != n:
            raise ValueError(f"problem {row['id']} has {len(comps)} completions, expected {n}")
        clusters: dict[str, int] = {}
        for j, c in enumerate(comps):
            out["correct"][i, j] = c["correct"]
            key = vote_key(c.get("answer"), c["correct"])
            if key is not None:
                out["votes"][i, j] = clusters.setdefault(key, len(clusters))
            out["format"][i, j] = c["format"]
            out["tokens"][i, j] = c["tokens"]
            out["chars"][i, j] = c["chars"]
            out["truncated"][i, j] = c["finish_reason"] == "length"
    return out


def samples_path(out: Path, suite: str) -> Path:
    """Where an evaluation run keeps a suite's samples, one JSON line per problem."""
    return out / "samples" / f"{suite}.jsonl"


def read_samples(path: Path, ids: list[str] | None = None) -> list[dict]:
    """A suite's sample rows, in the order of ``ids`` when given (each must be present)."""
    rows = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[row["id"]] = row
    if ids is None:
        return list(rows.values())
    missing = [i for i in ids if i not in rows]
    if missing:
        raise ValueError(f"{path}: {len(missing)} problems have no samples (first: {missing[0]})")
    return [rows[i] for i in ids]


def metric_names(kind: str, n: int, ks: list[int]) -> list[str]:
    names = [f"avg@{n}"] + [f"pass@{k}" for k in ks if 1 < k <= n]
    return names + ([f"maj@{n}"] if kind == "math" and n > 1 else [])


def _fn(name: str):
    base, _, k = name.partition("@")
    return M.metric("pass@" + k if base == "pass" else base)


def two_stage(name: str) -> bool:
    """Whether ``name``'s interval resamples samples within problems too (see the docstring)."""
    return name.split("@")[0] == "avg"


def _estimate(mats: dict, name: str, matrix: str, cfg_boot: int, seed: int) -> dict:
    fn = M.metric("avg") if matrix != "correct" else _fn(name)
    est = M.bootstrap_ci(mats[matrix], mats["votes"], fn, samples=cfg_boot, level=LEVEL,
                         seed=seed, within=two_stage(name))
    return {"value": est.value, "low": est.low, "high": est.high}


def suite_summary(plan: SuitePlan, rows: list[dict], boot: int, seed: int) -> dict:
    mats = matrices(rows, plan.n)
    names = metric_names(plan.suite.kind, plan.n, plan.ks)
    return {
        "kind": plan.suite.kind, "problems": len(rows), "of": plan.total_problems,
        "n": plan.n, "ks": plan.ks, "prompt_style": plan.prompt_style,
        "template": TEMPLATES.get(plan.prompt_style, plan.prompt_style),
        "graded": {"text": plan.graded_text, "boxed_only": plan.boxed_only},
        "sampling": {"temperature": plan.temperature, "top_p": plan.top_p,
                     "max_tokens": plan.max_tokens, "budget_from": plan.budget_from,
                     "budget_capped": plan.budget_capped},
        **({"tests": which_tests(plan)} if which_tests(plan) else {}),
        **({"lcb_window": plan.lcb_window} if plan.lcb_window else {}),
        "metrics": {name: _estimate(mats, name, "correct", boot, seed) for name in names},
        "format": _estimate(mats, "avg", "format", boot, seed),
        # A replay engine without a tokenizer counts no tokens: lengths are then in characters.
        "length": float(mats["tokens"].mean() if mats["tokens"].any() else mats["chars"].mean()),
        "length_unit": "tokens" if mats["tokens"].any() else "chars",
        "truncated": float(mats["truncated"].mean()),
        "truncated_count": int(mats["truncated"].sum()),
        "completions": int(mats["truncated"].size),
    }


def summarise(out: Path, plans: list[SuitePlan], *, model: str, engine: str, bootstrap: int,
              seed: int) -> dict:
    """The summary of a finished run: every suite's estimates from its sample rows."""
    suites = {}
    for plan in plans:
        rows = read_samples(samples_path(out, plan.suite.name), [p.id for p in plan.problems])
        suites[plan.suite.name] = suite_summary(plan, rows, bootstrap, seed)
    return {"model": model, "engine": engine, "level": LEVEL, "bootstrap": bootstrap,
            "suites": suites}


def _pct(x: float) -> str:
    return "nan" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def report_markdown(summary: dict) -> str:
    """The Markdown report: an overview table, then one table per suite."""
    lines = [f"# Evaluation of `{summary['model']}`", "",
             f"Engine `{summary['engine']}`; intervals are {int(100 * summary['level'])}% "
             f"two-stage bootstrap intervals ({summary['bootstrap']} replicates) over problems "
             "and samples. avg@n is pass@1 averaged over n samples.", "",
             "| suite | problems | n | avg@n | 95% CI | format | length | truncated | budget |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary["suites"].items():
        m = s["metrics"][f"avg@{s['n']}"]
        probs = f"{s['problems']}" + (f" of {s['of']}" if s["of"] != s["problems"] else "")
        lines.append(f"| {name} | {probs} | {s['n']} | {_pct(m['value'])} | "
                     f"{_pct(m['low'])} to {_pct(m['high'])} | {_pct(s['format']['value'])} | "
                     f"{s['length']:.0f} {s['length_unit']} | {_truncated(s)} | "
                     f"{s['sampling']['max_tokens']} |")
    for name, s in summary["suites"].items():
        lines += ["", f"## {name}", "", *_suite_header(s), "",
                  "| metric | value (%) | 95% CI |", "|---|---|---|"]
        for metric, m in [*s["metrics"].items(), ("format", s["format"])]:
            lines.append(f"| {metric_title(metric)} | {_pct(m['value'])} | {_pct(m['low'])} to "
                         f"{_pct(m['high'])} |")
        if s["of"] != s["problems"]:
            lines += ["", f"Only the first {s['problems']} of {s['of']} problems were evaluated: "
                      "not comparable with full-suite figures."]
    return "\n".join(lines) + "\n"


def _truncated(s: dict) -> str:
    if "truncated_count" not in s:  # a summary written before counts were kept
        return _pct(s["truncated"])
    return f"{s['truncated_count']} of {s['completions']} ({_pct(s['truncated'])}%)"


def _graded(graded: dict) -> str:
    text = "the text after </think>" if graded.get("text") == "after_think" else \
        "the whole completion"
    return text + (", its last \\boxed{} only" if graded.get("boxed_only") else "")


def _suite_header(s: dict) -> list[str]:
    """The lines under a suite's heading: what was sampled, how, and what was graded."""
    smp, graded = s["sampling"], s.get("graded", {})
    budget = f"{smp['max_tokens']} new tokens ({smp.get('budget_from', 'suite default')})"
    if smp.get("budget_capped"):
        budget = f"{smp['max_tokens']} new tokens (from {smp['budget_capped']})"
    lines = [f"{s['problems']} problems x {s['n']} samples, temperature {smp['temperature']}, "
             f"top-p {smp['top_p']}, budget {budget}; {_truncated(s)} completions truncated.",
             "", f"Prompt: `{s['prompt_style']}`, {s.get('template', s['prompt_style'])}. "
             f"Graded: {_graded(graded)}."]
    if "tests" in s:
        lines += ["", f"Tests: {s['tests']}" + (
            " (not comparable with LiveCodeBench's published scores, which use private tests "
            "too)." if s["tests"] != "public and private tests" else ".")]
    if "lcb_window" in s:
        lines += ["", f"Contest dates: {s['lcb_window']}."]
    return lines


def write_outputs(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(report_markdown(summary))


class CompareError(ValueError):
    """Two runs that cannot be compared; the message is one line."""


def _load_run(run: Path) -> tuple[dict, dict]:
    summary_path, settings_path = run / "summary.json", run / "settings.json"
    for p in (summary_path, settings_path):
        if not p.is_file():
            raise CompareError(f"{run} is not a finished r1kit eval run (no {p.name})")
    return json.loads(summary_path.read_text()), json.loads(settings_path.read_text())


def setting_notes(sum_a: dict, set_a: dict, sum_b: dict, set_b: dict) -> list[str]:
    """What differs between two runs besides the model: engine, suites only one run has, and per
    suite the sampling settings and prompt style (``settings.json``), one sentence each."""
    notes = []
    if sum_a.get("engine") != sum_b.get("engine"):
        notes.append(f"the runs used different engines: A {sum_a.get('engine')!r}, "
                     f"B {sum_b.get('engine')!r}")
    for mine, other, label in ((sum_a, sum_b, "A"), (sum_b, sum_a, "B")):
        only = [s for s in mine["suites"] if s not in other["suites"]]
        if only:
            notes.append(f"only {label} has suite(s) {', '.join(only)}: not compared")
    for suite in (s for s in sum_a["suites"] if s in sum_b["suites"]):
        a, b = set_a.get(suite, {}), set_b.get(suite, {})
        diff = [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
                if k not in ("model", "seed") and a.get(k) != b.get(k)]
        if diff:
            notes.append(f"{suite}: drawn with different settings (A vs B: {', '.join(diff)})")
    return notes


def compare_runs(run_a: Path, run_b: Path, *, samples: int = 2000, seed: int = 0,
                 labels: tuple[str, str] = ("A", "B")) -> dict:
    """Paired comparison of every metric two runs share, over the problems both have;
    ``labels`` are what the verdicts call the two runs. The p-value is the exact (or seeded
    Monte Carlo) paired sign-flip test over problems, the interval from the paired bootstrap's
    standard error, given from ``MIN_INTERVAL_PROBLEMS`` shared problems (``eval.metrics``).
    ``notes`` lists what differs besides the model (``setting_notes``)."""
    sum_a, set_a = _load_run(run_a)
    sum_b, set_b = _load_run(run_b)
    common = [s for s in sum_a["suites"] if s in sum_b["suites"]]
    if not common:
        raise CompareError(f"{run_a} and {run_b} share no suite")
    result: dict[str, Any] = {"a": str(run_a), "b": str(run_b), "level": LEVEL,
                              "min_interval_problems": M.MIN_INTERVAL_PROBLEMS,
                              "min_verdict_problems": M.MIN_VERDICT_PROBLEMS,
                              "notes": setting_notes(sum_a, set_a, sum_b, set_b), "suites": {}}
    for suite in common:
        sa, sb = sum_a["suites"][suite], sum_b["suites"][suite]
        rows_a = {r["id"]: r for r in read_samples(run_a / "samples" / f"{suite}.jsonl")}
        rows_b = {r["id"]: r for r in read_samples(run_b / "samples" / f"{suite}.jsonl")}
        ids = [i for i in rows_a if i in rows_b]
        if not ids:
            raise CompareError(f"suite {suite}: the runs share no problem")
        ma = matrices([rows_a[i] for i in ids], sa["n"])
        mb = matrices([rows_b[i] for i in ids], sb["n"])
        n = min(sa["n"], sb["n"])
        names = ["avg"] + [f"pass@{k}" for k in sorted(set(sa["ks"]) & set(sb["ks"]))
                           if 1 < k <= n]
        names += ["maj"] if sa["kind"] == "math" and sa["n"] > 1 and sb["n"] > 1 else []
        rows = {}
        for name in names:
            # B first: the comparison's diff is B - A, the change from run A to run B.
            c = M.paired_test(mb["correct"], mb["votes"], ma["correct"], ma["votes"],
                              M.metric(name), samples=samples, level=LEVEL, seed=seed,
                              within=two_stage(name))
            label = {"avg": "avg@n", "maj": "maj@n"}.get(name, name)
            c = replace(c, metric=label.replace("@n", f"@{n}"))
            rows[label] = {**{k: None if isinstance(v, float) and math.isnan(v) else v
                              for k, v in asdict(c).items()}, "metric": label,
                           "a": float(_fn_value(ma, name)), "b": float(_fn_value(mb, name)),
                           "verdict": M.describe(c, labels[1], labels[0])}
        result["suites"][suite] = {"problems": len(ids), "only_a": len(rows_a) - len(ids),
                                   "only_b": len(rows_b) - len(ids), "metrics": rows}
    return result


def _fn_value(mats: dict, name: str) -> float:
    return float(M.metric(name)(mats["correct"], mats["votes"]).mean())


def compare_markdown(result: dict) -> str:
    head = (f"A = `{result['a']}`, B = `{result['b']}`; differences are B - A in points. p: "
            "paired sign-flip test over problems; intervals: "
            f"{int(100 * result['level'])}% t intervals with a paired-bootstrap standard "
            f"error, given from {result['min_interval_problems']} shared problems; no verdict "
            f"under {result['min_verdict_problems']}.")
    lines = [head, ""]
    lines += [f"- **Not like for like:** {note}." for note in result.get("notes", [])]
    lines += [""] if result.get("notes") else []
    for suite, s in result["suites"].items():
        extra = ""
        if s["only_a"] or s["only_b"]:
            extra = f" ({s['only_a']} only in A and {s['only_b']} only in B are left out)"
        lines += [f"## {suite}: {s['problems']} shared problems{extra}", "",
                  "| metric | A | B | B - A | 95% CI | p |", "|---|---|---|---|---|---|"]
        for name, m in s["metrics"].items():
            ci = ("n/a" if m["low"] is None else f"{_pct(m['low'])} to {_pct(m['high'])}")
            lines.append(f"| {name} | {_pct(m['a'])} | {_pct(m['b'])} | {_pct(m['diff'])} | "
                         f"{ci} | {m['p_value']:.3g} |")
        lines.append("")
        lines += [f"- {m['verdict']}" for m in s["metrics"].values()]
        lines.append("")
    return "\n".join(lines)
