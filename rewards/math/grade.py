r"""Grade completions against reference answers: the public entry points.

Guarantees: :func:`grade` and :func:`grade_batch` never raise on string
input, never use signals (safe from threads and from daemonic worker
processes), and return within ``timeout_s`` per pair, plus the one-time
start-up of the symbolic helper (see :mod:`rewards.math.bounded`). Every
:class:`Verdict` says which stage decided, so a surprising reward can be
traced.

The prediction goes through :func:`~rewards.math.extract.extract_answer`
(``\boxed``, ``<answer>``, "final answer is", ``####``, or a bare short
answer; the last-number fallback is off). The gold goes through it too, and
is used whole when it has no marker, so both a bare MATH answer and a GSM8K
solution ending in ``#### 72`` work as gold.

The last-number fallback (``last_number``): when the prediction marks no
answer at all, its last number (``2/3``, ``12,000`` included) is taken only
when the gold is a single number (``last_number=None``, the default;
``True`` always, ``False`` never); a one-line prose answer ("it came to
2,500.5 km") gives the last number of its last sentence the same way. Why it
cannot hedge: one number is read, the last; why only a numeric gold: against
a tuple, set or expression the last number is a fragment, and a fragment that
happens to match (the ``3`` of ``x^3``) would be a false accept. How it errs:
an unmarked completion whose last number equals the gold by accident (an
intermediate result written last) earns the reward; ``last_number=False``
rewards marked answers only.

A gold written as several boxes close together (``\boxed{12}`` and
``\boxed{7}``) is the list of their contents in the order written, so a
tuple answer compares with it in that order. How it errs: a tuple in the
other order is a miss (the boxes may follow the order a solution found
them in), never an accept; a list or set answer compares order-free.

Several boxes as several answers: when the last box does not match and the
gold is a list or set of k > 1 answers, the last k distinct boxes (each a
single answer) are compared as that list, so ``\boxed{5}`` and
``\boxed{-1}`` match ``-1, 5``. A box repeated (``\boxed{3}`` twice) counts
once, so it does not stand for two answers.

Does not: score format or length, or give partial credit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rewards.math.equiv import DEFAULT_OPTIONS, Options, answers_equal
from rewards.math.extract import box_run, boxed_answers, extract_answer, last_boxed
from rewards.math.normalize import normalize, parse_rational
from rewards.math.structure import MAX_ITEMS, Seq, parse_structure


@dataclass(frozen=True)
class Verdict:
    """The grade of one prediction."""

    correct: bool  # the extracted answer equals the gold answer
    extracted: str | None  # the answer found in the prediction, None if none was
    reason: str  # the stage that decided ("string", "rational", ...) or why it failed


def grade_one(
    pred: str, gold: str, *, timeout_s: float = 5.0, last_number: bool | None = None,
    options: Options = DEFAULT_OPTIONS,
) -> Verdict:
    r"""Grade one prediction and say why; ``options``: :class:`rewards.math.equiv.Options`.

    >>> grade_one(r"so the answer is $\boxed{0.5}$", r"\frac{1}{2}")
    Verdict(correct=True, extracted='0.5', reason='rational')
    >>> grade_one(r"$\boxed{5}$ or $\boxed{-1}$", "-1, 5")
    Verdict(correct=True, extracted='5, -1', reason='several boxes')
    >>> grade_one("I give up.\nNo idea at all.", "3")
    Verdict(correct=False, extracted=None, reason='no answer found')
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        return Verdict(False, None, "not a string")
    gold_boxes = box_run(gold)
    gold_answer = (
        ", ".join(gold_boxes) if len(gold_boxes) > 1 else extract_answer(gold)
    ) or gold.strip()
    numbers = bool(last_number or last_number is None and _numeric(gold_answer))
    extracted = extract_answer(pred, last_number=numbers)
    if extracted is None:
        return Verdict(False, None, "no answer found")
    start = time.monotonic()
    correct, reason = answers_equal(extracted, gold_answer, timeout_s=timeout_s, options=options)
    left = timeout_s - (time.monotonic() - start)  # both comparisons share the bound
    if not correct and left > 0 and extracted == last_boxed(pred):
        several = _several_boxes(pred, gold_answer)
        if several is not None and answers_equal(several, gold_answer, timeout_s=left,
                                                 options=options)[0]:
            return Verdict(True, several, "several boxes")
    return Verdict(correct, extracted, reason)


def _numeric(gold: str) -> bool:
    """The gold is one number (integer, decimal, fraction): the last-number fallback's domain."""
    return parse_rational(normalize(gold)) is not None


def _several(node: object) -> bool:
    """A box that holds several answers (a list, set or union), not one (a tuple is one)."""
    return isinstance(node, Seq) and node.kind in ("list", "set", "union")


def _several_boxes(pred: str, gold: str) -> str | None:
    """The last k distinct single-answer boxes of ``pred`` joined, k the gold's answer count."""
    g = parse_structure(normalize(gold))
    if not (isinstance(g, Seq) and g.kind in ("list", "set") and 1 < len(g.items) <= MAX_ITEMS):
        return None
    boxes = boxed_answers(pred, most=len(g.items))
    if len(boxes) < len(g.items) or any(_several(parse_structure(normalize(b))) for b in boxes):
        return None
    return ", ".join(reversed(boxes))


def grade(completion_or_answer: str, gold: str, *, timeout_s: float = 5.0,
          options: Options = DEFAULT_OPTIONS) -> bool:
    r"""True when the answer in ``completion_or_answer`` equals ``gold`` (``options``:
    :class:`rewards.math.equiv.Options`).

    >>> grade("0.5", r"\frac{1}{2}")
    True
    >>> grade(r"\boxed{\frac{1}{2^{99}}}", r"\frac{1}{2^{98}}", timeout_s=30)
    False
    >>> grade("The final answer is $(3, 2)$.", "(2, 3)")
    False
    """
    return grade_one(completion_or_answer, gold, timeout_s=timeout_s, options=options).correct


def grade_batch(preds: list[str], golds: list[str], *, timeout_s: float = 5.0,
                last_number: bool | None = None,
                options: Options = DEFAULT_OPTIONS) -> list[Verdict]:
    r"""Grade ``preds[i]`` against ``golds[i]`` for every i; ``timeout_s`` bounds each pair,
    ``last_number`` and ``options`` are ``grade_one``'s.

    >>> [v.reason for v in grade_batch(["#### 1,000", "7"], ["1000", "8"])]
    ['string', 'rational']
    """
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} golds")
    return [grade_one(p, g, timeout_s=timeout_s, last_number=last_number, options=options)
            for p, g in zip(preds, golds)]
