"""The synthetic task family the demo trains on: arithmetic with exact, verifiable answers.

Each problem is a short expression over small integers (``+``, ``-``, ``*``), so the answer is an
integer the math grader checks exactly. The split of a problem is a pure function of its text
(a hash), so ``train`` and ``heldout`` never share a problem, whatever seed or count is asked for.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 20  # one problem in five belongs to the held-out split
_OPS = ("+", "-", "*")


@dataclass(frozen=True)
class ArithmeticTask:
    question: str
    """The problem as a user would ask it, e.g. ``"What is 12 + 7 * 3?"``."""
    expression: str
    answer: str
    """The exact integer result, as text (the ``answer`` column rewards grade against)."""


def split_of(expression: str) -> str:
    """Which split an expression belongs to; stable across runs and machines.

    >>> split_of("1 + 1") in SPLITS
    True
    """
    bucket = int.from_bytes(hashlib.sha256(expression.encode()).digest()[:4], "big") % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def _expression(rng: random.Random, max_operand: int, max_terms: int) -> str:
    terms = rng.randint(2, max_terms)
    parts = [str(rng.randint(0, max_operand))]
    for _ in range(terms - 1):
        parts += [rng.choice(_OPS), str(rng.randint(0, max_operand))]
    return " ".join(parts)


def arithmetic_tasks(
    split: str, count: int, seed: int = 0, max_operand: int = 20, max_terms: int = 3
) -> list[ArithmeticTask]:
    """``count`` distinct problems of ``split``, deterministic in ``seed``.

    >>> [t.answer == str(eval(t.expression)) for t in arithmetic_tasks("train", 3)]
    [True, True, True]
    >>> a = {t.expression for t in arithmetic_tasks("train", 50)}
    >>> b = {t.expression for t in arithmetic_tasks("heldout", 50)}
    >>> a & b
    set()
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = random.Random(f"{split}:{seed}")
    seen: set[str] = set()
    tasks: list[ArithmeticTask] = []
    attempts = 0
    while len(tasks) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise ValueError(
                f"cannot draw {count} distinct {split} problems with max_operand={max_operand}, "
                f"max_terms={max_terms}: the space is too small"
            )
        expr = _expression(rng, max_operand, max_terms)
        if expr in seen or split_of(expr) != split:
            continue
        seen.add(expr)
        # eval on our own generated digits-and-operators string only.
        tasks.append(ArithmeticTask(f"What is {expr}?", expr, str(eval(expr))))
    return tasks


def arithmetic_steps(expression: str) -> list[str]:
    """The worked steps of an expression: products first, then sums left to right.

    >>> arithmetic_steps("12 + 7 * 3")
    ['7 * 3 = 21', '12 + 21 = 33']
    >>> arithmetic_steps("5 - 9 - 2")
    ['5 - 9 = -4', '-4 - 2 = -6']
    """
    t = expression.split()
    steps = []
    i = 1
    while i < len(t):
        if t[i] == "*":
            value = int(t[i - 1]) * int(t[i + 1])
            steps.append(f"{t[i - 1]} * {t[i + 1]} = {value}")
            t[i - 1:i + 2] = [str(value)]
        else:
            i += 2
    while len(t) > 1:
        a, op, b = int(t[0]), t[1], int(t[2])
        value = a + b if op == "+" else a - b
        steps.append(f"{a} {op} {b} = {value}")
        t[:3] = [str(value)]
    return steps
