"""What a suite is: a loader, a prompt builder, a grader and default sampling, declared once;
and ``SuitePlan``, a suite resolved for one run (``r1kit.eval_plan`` builds it).

Every suite turns dataset rows into ``EvalProblem``s (``to_problems``), states the question for
the prompt styles of ``rollouts.prompts`` (``EvalProblem.question``), optionally its own standard
few-shot prompt (``few_shot``), and grades completions with the same functions training rewards
call (``rewards.math`` for math, ``rewards.code`` in the sandbox for code), so a score and a
reward never disagree.

Rows come from the public hub copy by default (``Source.hub``, read through ``datasets``) or from
a local JSONL file (``Source.local``, relative to a data folder laid out like
``../shared/data``); ``to_problems`` accepts both field layouts.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rewards.math.extract import last_boxed
from rollouts.types import split_think


@dataclass(frozen=True)
class EvalProblem:
    """One problem of a suite, ready to prompt and grade."""

    id: str
    """Stable id within the suite (the dataset's own where it has one); resume keys on it."""
    question: str
    """The problem as posed to the model in every prompt style but ``few_shot``."""
    gold: Any
    """What the grader needs: the gold answer (math) or the tests (code); JSON-serialisable."""
    reference: str | None = None
    """A known-correct completion (the dataset's solution), for checking the grader."""
    meta: dict = field(default_factory=dict)
    """Fields the report or a grader may want (subject, level, difficulty); JSON-serialisable."""


@dataclass(frozen=True)
class Grade:
    """The verdict on one completion."""

    correct: bool
    answer: str | None
    """The extracted final answer (math; what maj@k votes on), None when none was found or the
    suite has no answers to vote on (code)."""
    detail: str
    """Why: the math grader's deciding stage, or ``"3/5 tests"`` for code."""


@dataclass(frozen=True)
class Source:
    """Where a suite's rows come from."""

    hub: str
    """Hub dataset id read through ``datasets.load_dataset``."""
    split: str
    hub_config: str | None = None
    local: str = ""
    """The file inside a data folder (``--data-dir``), e.g. ``math500/test.jsonl``."""


Grader = Callable[[Sequence[EvalProblem], Sequence[str]], list[Grade]]
"""``grade(problems, completions)``: ``completions[i]`` answers ``problems[i]``."""


@dataclass(frozen=True)
class Suite:
    """A declarative evaluation suite."""

    name: str
    kind: Literal["math", "code"]
    source: Source
    to_problems: Callable[[list[dict]], list[EvalProblem]]
    """Dataset rows (hub or local layout) -> problems, in dataset order."""
    grade: Grader
    few_shot: Callable[[EvalProblem], str] | None = None
    """The suite's standard few-shot prompt (GSM8K, MBPP), None where there is none."""
    few_shot_stop: tuple[str, ...] = ()
    """Stop strings for the few-shot style (where the next exemplar would begin)."""
    instruction: str = ""
    """Appended to the question in the chat style (e.g. R1's "put your final answer within
    \\boxed{}")."""
    ks: tuple[int, ...] = (1,)
    """pass@k values reported by default (those <= n)."""
    n: int = 1
    """Samples per problem by default (the suite's usual reporting, e.g. 16 for AIME)."""
    max_tokens: int = 4096
    """Completion budget by default."""


def answer_part(completion: str) -> str:
    """The part of a completion that holds the answer: after ``</think>`` when the completion
    closed a think block, else the whole text (models without a think block).

    >>> answer_part("let me see</think> <answer>4</answer>")
    ' <answer>4</answer>'
    >>> answer_part("The answer is 4.")
    'The answer is 4.'
    """
    _, answer = split_think(completion)
    return answer if "</think>" in completion else completion


def graded_text(completion: str, mode: str = "after_think", boxed_only: bool = False) -> str:
    r"""The text a grader sees (``eval.graded_text``, ``eval.boxed_only``).

    ``after_think``: the text after ``</think>``; a completion that never closed its think
    block (cut by the budget, or rambling) has no answer, so a ``\boxed{}`` inside unfinished
    reasoning earns nothing. ``whole``: the whole completion (models prompted without think
    tags). ``boxed_only``: then only the last ``\boxed{...}`` of that text, or nothing.

    >>> graded_text("so \\boxed{4} maybe")
    ''
    >>> graded_text("so 4</think> <answer>4</answer>")
    ' <answer>4</answer>'
    >>> graded_text("so \\boxed{4} maybe", "whole", boxed_only=True)
    '\\boxed{4}'
    >>> graded_text("4</think> The answer is 4.", boxed_only=True)
    ''
    """
    if not isinstance(completion, str):
        return ""
    if mode == "after_think":
        text = split_think(completion)[1] if "</think>" in completion else ""
    elif mode == "whole":
        text = completion
    else:
        raise ValueError(f"graded text mode must be 'after_think' or 'whole', got {mode!r}")
    if boxed_only:
        box = last_boxed(text)
        return "" if box is None else f"\\boxed{{{box}}}"
    return text


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a JSONL file (``.gz`` too) or of a JSON array file, with the line in errors."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    if path.suffix == ".json" or text.lstrip().startswith("["):
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON array of rows")
        return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e.msg})") from None
    return rows


def hub_rows(source: Source) -> list[dict]:
    """Rows of the public hub copy (needs network access or the ``datasets`` cache)."""
    import logging

    import datasets

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # each retry of an unreachable hub warns; the error says it
    try:
        ds = datasets.load_dataset(source.hub, source.hub_config, split=source.split)
    finally:
        hub_log.setLevel(level)
    return [dict(row) for row in ds]


@dataclass
class SuitePlan:
    """One suite of a run, fully resolved."""

    suite: Suite
    problems: list[EvalProblem]
    prompts: list[str]
    n: int
    ks: list[int]
    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...]
    prompt_style: str
    total_problems: int
    """Problems in the dataset (``len(problems)`` is fewer under ``eval.max_problems``)."""
    graded_text: str = "after_think"
    """What the grader sees: ``after_think`` or ``whole`` (``graded_text``)."""
    boxed_only: bool = False
    """Math: only the last ``\\boxed{}`` of the graded text counts."""
    budget_from: str = "suite default"
    """Where ``max_tokens`` came from: ``eval.max_tokens``, ``preset r1``, ``suite default``."""
    budget_capped: str = ""
    """Set when a preset's budget was lowered to fit the context: from what, and why."""
    lcb_window: str = ""
    """LiveCodeBench contest-date window the problems were filtered to (empty: none)."""

    def settings(self, model: str, seed: int) -> dict[str, Any]:
        """What must match for a resumed run to continue this suite's outputs."""
        return {"model": model, "n": self.n, "temperature": self.temperature,
                "top_p": self.top_p, "max_tokens": self.max_tokens, "stop": list(self.stop),
                "prompt_style": self.prompt_style, "graded_text": self.graded_text,
                "boxed_only": self.boxed_only, "seed": seed}
