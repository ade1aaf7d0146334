"""Rejection sampling: teacher traces that the rewards verify, written as a JSONL dataset.

The teacher samples ``rollout.n`` traces per problem with any engine (``rollouts.factory``),
the recipe's rewards score them through the ``Scorer`` (math grader, code sandbox, format...),
and a trace is verified when its total reward is at least ``distill.threshold``. Per problem,
``select_verified`` keeps the shortest verified trace or all of them (``distill.keep``).

The dataset holds text, not token ids, so a student with another tokenizer reads it as well:
one line per kept trace with ``question``, ``answer``, ``prompt`` (the teacher's prompt text),
``completion``, ``reward``, ``teacher`` and ``sampling`` (temperature, top-p, max tokens, seed).
Beside it, ``<dataset>.meta.json`` holds the settings that produced it and what sampling cost
(traces sampled and kept, teacher forward tokens); a run with the same settings reuses the
file instead of sampling again. Both are written to a temporary file and renamed, so a killed
run leaves either a complete dataset or none.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewards.scorer import score_with_progress
from rollouts.engine import sample_with_progress


@dataclass(frozen=True)
class Trace:
    """One teacher completion of a problem, scored."""

    problem: int
    """Index of the problem it answers."""
    completion: str
    tokens: int
    """Completion length in the teacher's tokens."""
    reward: float
    """Total (weighted) reward."""
    finish_reason: str = "stop"
    """``stop`` (the teacher ended it) or ``length`` (cut at rollout.max_tokens)."""


def select_verified(traces: list[Trace], threshold: float, keep: str) -> list[Trace]:
    """Traces with reward >= ``threshold``; ``keep="shortest"``: one per problem, the shortest
    (ties: the earlier sampled), ``"all"``: every verified one. Order: by problem, then sample.

    >>> ts = [Trace(0, "a", 5, 1.5), Trace(0, "b", 3, 1.5), Trace(0, "c", 1, 0.5),
    ...       Trace(1, "d", 4, 0.0)]
    >>> [t.completion for t in select_verified(ts, 1.0, "shortest")]
    ['b']
    >>> [t.completion for t in select_verified(ts, 1.0, "all")]
    ['a', 'b']
    """
    if keep not in ("shortest", "all"):
        raise ValueError(f"keep must be 'shortest' or 'all', got {keep!r}")
    ok = [t for t in traces if t.reward >= threshold]
    if keep == "all":
        return sorted(ok, key=lambda t: t.problem)
    best: dict[int, Trace] = {}
    for t in ok:
        if t.problem not in best or t.tokens < best[t.problem].tokens:
            best[t.problem] = t
    return [best[p] for p in sorted(best)]


def sample_traces(engine: Any, scorer: Any, problems: list[Any], prompts: list[str], n: int,
                  sampling: Any, batch: int = 64, show: bool = False
                  ) -> tuple[list[Trace], dict[str, float]]:
    """Sample ``n`` traces per problem and score them. Returns the traces and the cost:
    ``sampled``, ``teacher_tokens`` (prompt + completion tokens of every sampled trace, the
    rejected ones included: every one went through the teacher), ``generated_tokens``."""

    groups, _ = sample_with_progress(engine, prompts, n, sampling, batch, show)
    comps = [(i, c) for i, g in enumerate(groups) for c in g.completions]
    res = score_with_progress(scorer, [c.text for _, c in comps],
                              [problems[i].answer for i, _ in comps],
                              [len(c.token_ids) for _, c in comps], show,
                              {k: [problems[i].columns[k] for i, _ in comps]
                               for k in (problems[0].columns if problems else {})})
    traces = [Trace(i, c.text, len(c.token_ids), total, c.finish_reason)
              for (i, c), total in zip(comps, res.total)]
    generated = sum(t.tokens for t in traces)
    forward = generated + sum(len(g.prompt_token_ids) * len(g.completions) for g in groups)
    return traces, {"sampled": float(len(traces)), "teacher_tokens": float(forward),
                    "generated_tokens": float(generated)}


def write_dataset(path: Path, rows: list[dict], meta: dict) -> None:
    """The JSONL and its ``.meta.json``, each written whole and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
    _atomic_write(meta_path(path), json.dumps(meta, indent=1) + "\n")


def read_dataset(path: Path, settings: dict) -> tuple[list[dict], dict] | None:
    """(rows, meta) of a dataset made with exactly ``settings``, else None (sample again)."""
    if not path.is_file() or not meta_path(path).is_file():
        return None
    meta = json.loads(meta_path(path).read_text())
    if meta.get("settings") != settings:
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()], meta


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.rename(path)
