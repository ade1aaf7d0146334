"""Training problems: the ``Problem`` type and the one JSONL reader of problem files.

A problem file is JSON lines; ``read_problems`` is the only parser of it: the recipe check
(``r1kit.config.validate``) calls it before any work starts and the jobs call it to load, so the
two can never disagree on what a valid line is.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str
    columns: dict = dataclasses.field(default_factory=dict)
    """``data.columns`` fields of the row, passed to rewards as columns of the same name."""


class ProblemFileError(ValueError):
    """A problem file that cannot be read; ``key`` names the setting at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def read_problems(path: str | Path, question_key: str, answer_key: str,
                  columns: Sequence[str] = (), limit: int | None = None) -> list[Problem]:
    """The first ``limit`` problems of the JSONL file at ``path`` (blank lines skipped); a
    ``ProblemFileError`` naming the line and the setting (``data.source``,
    ``data.question_key``, ``data.answer_key``, ``data.columns``) on the first bad one.

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "p.jsonl"
    >>> _ = f.write_text('{"q": "1+1", "a": 2, "t": "x"}\\n\\n{"q": "2+2", "a": 4, "t": "y"}\\n')
    >>> read_problems(f, "q", "a", ["t"], limit=1)
    [Problem(question='1+1', answer='2', columns={'t': 'x'})]
    """
    problems: list[Problem] = []
    with open(Path(path).expanduser(), encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if len(problems) == limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ProblemFileError("data.source",
                                       f"{path}:{lineno}: not a JSON line ({e.msg})") from None
            wanted = [("data.question_key", question_key)]
            wanted += [("data.answer_key", answer_key)] if answer_key else []
            wanted += [("data.columns", c) for c in columns]
            for key, name in wanted:
                if not isinstance(row, dict) or name not in row:
                    have = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                    raise ProblemFileError(key, f"{path}:{lineno} has no field {name!r} "
                                                f"(has: {have})")
            problems.append(Problem(str(row[question_key]),
                                    str(row[answer_key]) if answer_key else "",
                                    {c: row[c] for c in columns}))
    if not problems:
        raise ProblemFileError("data.source", f"{path} holds no problems")
    return problems
