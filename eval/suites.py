"""The suite table, user suites (``PATH.jsonl:GRADER``) and loading a suite's problems.

A user suite is a JSONL file plus a grader name from ``USER_GRADERS``:

- ``math``: rows ``{question (or problem), answer, id?}``, graded by ``rewards.math``;
- ``stdio``: rows ``{question, tests: [{input, output}], id?}``, every test run in the sandbox;
- ``function``: HumanEval rows ``{prompt, test, entry_point, task_id?, question?}``.
"""

from __future__ import annotations

from pathlib import Path

from eval.code_suites import CODE_SUITES, grade_function, grade_stdio
from eval.math_suites import CHAT_INSTRUCTION, MATH_SUITES, grade_math
from eval.types import EvalProblem, Source, Suite, hub_rows, read_rows

SUITES: dict[str, Suite] = {**MATH_SUITES, **CODE_SUITES}


class SuiteError(ValueError):
    """A suite name, user suite or dataset that cannot be used; the message is one line."""


def _user_math(rows: list[dict]) -> list[EvalProblem]:
    return [EvalProblem(str(r.get("id", i)), r.get("question") or r["problem"], str(r["answer"]),
                        None) for i, r in enumerate(rows)]


def _user_stdio(rows: list[dict]) -> list[EvalProblem]:
    return [EvalProblem(str(r.get("id", i)), r["question"], {"stdio": r["tests"]}, None)
            for i, r in enumerate(rows)]


def _user_function(rows: list[dict]) -> list[EvalProblem]:
    return [EvalProblem(str(r.get("task_id", r.get("id", i))),
                        r.get("question") or "Complete this Python function and return the whole "
                        f"function in a ```python block:\n```python\n{r['prompt']}```",
                        {"prompt": r["prompt"], "test": r["test"],
                         "entry_point": r["entry_point"]}, None)
            for i, r in enumerate(rows)]


USER_GRADERS = {
    "math": ("math", _user_math, grade_math),
    "stdio": ("code", _user_stdio, grade_stdio),
    "function": ("code", _user_function, grade_function),
}


def get_suite(spec: str) -> Suite:
    """A suite by name, or a user suite from ``PATH.jsonl:GRADER``.

    >>> get_suite("math500").kind
    'math'
    >>> get_suite("mathh500")
    Traceback (most recent call last):
    ...
    eval.suites.SuiteError: unknown suite 'mathh500'; known: aime24, amc23, gsm8k, humaneval, \
livecodebench, math500, mbpp; or PATH.jsonl:GRADER with GRADER in math, stdio, function
    """
    if spec in SUITES:
        return SUITES[spec]
    path, sep, grader = spec.rpartition(":")
    if not sep or not path.endswith((".jsonl", ".json", ".jsonl.gz")):
        raise SuiteError(f"unknown suite {spec!r}; known: {', '.join(sorted(SUITES))}; or "
                         f"PATH.jsonl:GRADER with GRADER in {', '.join(USER_GRADERS)}")
    if grader not in USER_GRADERS:
        raise SuiteError(f"user suite {spec!r}: unknown grader {grader!r} "
                         f"(known: {', '.join(USER_GRADERS)})")
    if not Path(path).expanduser().is_file():
        raise SuiteError(f"user suite {spec!r}: no file {path}")
    kind, to_problems, grade = USER_GRADERS[grader]
    name = Path(path).name.split(".")[0]
    return Suite(name, kind, Source("", "", local=str(Path(path).expanduser().resolve())),
                 to_problems, grade, instruction=CHAT_INSTRUCTION if kind == "math" else "")


def suite_file(suite: Suite, data_dir: str) -> Path | None:
    """The local file a suite reads, or None when it reads the hub."""
    if suite.source.local.startswith("/"):
        return Path(suite.source.local)
    return Path(data_dir).expanduser() / suite.source.local if data_dir else None


def load_problems(suite: Suite, data_dir: str = "") -> list[EvalProblem]:
    """The suite's problems from ``data_dir`` (or the hub); ``SuiteError`` naming what failed."""
    path = suite_file(suite, data_dir)
    try:
        if path is not None:
            if not path.is_file():
                raise SuiteError(f"suite {suite.name}: dataset file {path} not found (eval.data_dir "
                                 f"must be laid out like shared/data: {suite.source.local})")
            rows = read_rows(path)
        else:
            rows = hub_rows(suite.source)
    except SuiteError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds (offline, missing, gated)
        where = path or f"hub dataset {suite.source.hub}"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        hint = "; pass eval.data_dir=DIR for a local copy" if path is None else ""
        raise SuiteError(f"suite {suite.name}: cannot read {where} ({type(e).__name__}: "
                         f"{first[:200]}){hint}") from None
    try:
        problems = suite.to_problems(rows)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise SuiteError(f"suite {suite.name}: rows of {path or suite.source.hub} lack a field "
                         f"({type(e).__name__}: {e})") from None
    if not problems:
        raise SuiteError(f"suite {suite.name}: no problems in {path or suite.source.hub}")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise SuiteError(f"suite {suite.name}: problem ids are not unique")
    return problems
