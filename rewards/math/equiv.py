r"""Decide whether two extracted answers are equal, cheapest stage first.

Stages, in order; the first that can decide does:

1. ``string``: the normalised strings are equal (:mod:`rewards.math.normalize`).
2. ``rational``: both are integer, decimal or ``a/b``/``\frac{a}{b}`` literals;
   compared exactly with :class:`fractions.Fraction` (no floats): ``0.5`` is
   ``\frac{1}{2}``, ``0.51`` is not. One exception, for rounded decimals
   (:func:`rounded_equal`): a predicted decimal with at least
   :data:`ROUNDED_MIN_DIGITS` significant digits equals a gold fraction whose
   decimal expansion never ends (``\frac{1}{12}``, ``\frac{2}{3}``) when it is
   that fraction correctly rounded to the places it states: ``0.0833`` and
   ``0.083`` are ``\frac{1}{12}``; ``0.0834``, ``0.08`` and the truncated
   ``0.6666`` (for ``\frac{2}{3}``) are not. Why: such a fraction has no exact
   decimal form, so the correctly rounded one is the best a decimal answer
   can state and is right to the precision it states; a minimum of three
   digits keeps ``0.3`` from earning ``\frac{1}{3}``; it is one-sided (the
   gold is the exact reference: gold ``0.333`` is not ``\frac{1}{3}``) and
   exact (Fraction arithmetic). A decimal for an irrational gold (``1.414``
   for ``\sqrt{2}``) stays wrong: the exact form was asked for.
   The other way round only for a gold written as a computed float, a decimal
   of at least :data:`LONG_DECIMAL_DIGITS` significant digits
   (``4.123105625617661``): an exact prediction equals it when the gold is
   that value correctly rounded (a fraction, as above) or, for an irrational
   or any other expression, when the two agree to the symbolic stage's
   relative tolerance of 1e-10 (``\sqrt{17}``). Why: so many digits are a
   rendering of a value, not an exact decimal answer, and the exact form is
   the better answer. How it errs: a wrong expression that agrees with the
   gold to ten significant digits is accepted, which no answer short of the
   right value does by accident; a gold of fewer digits (``3.14`` against
   ``\pi``) stays exact, a miss.
3. structure (:mod:`rewards.math.structure`): tuples and intervals compare
   element-wise in order (interval ends must match), sets, bare lists of
   several answers and unions compare order-free as multisets (same count, each
   element matched once), matrices row by row. When the counts of two sets or
   lists differ, an item the prediction repeats (same normalised text) counts
   once: ``(3,7), (1,2), (3,7)`` is the two-pair gold (a repeat adds no
   answer). The gold is never shortened: a gold ``2, 2, 3`` (a double root)
   still needs three items, so the error is a miss, never an accept. A left-hand side on one side
   only is dropped (on either side) when it names the answer: ``x = 5``,
   ``BC = 9``, ``g(t) = 3t-4``, ``(m,n) = (2,7)``, ``\angle A = 30``, labels
   such as ``S_{MBCN}:S = 7:32``, ``|AB| = 1``, ``\frac{NO}{BO} = ...``, and
   ``2\cdot 21 = 42`` (no letters on either side: a computation and its value).
   A left-hand side with content is never dropped: ``7 = 11a+c`` is not
   ``11a+c`` (nor ``7``); when in doubt the equation is kept whole, so the
   error is a miss, never an accept,
   and a chain ``x = 2+3 = 5`` keeps its last right-hand side. In a list, the
   left-hand sides go only when the other list has none, so ``a=2, b=9`` is
   not ``a=9, b=2``. ``x > 3`` against an interval is ``(3, \infty)``.
4. for each pair of leaves still undecided: the string and rational stages
   again, then the guards of :func:`~rewards.math.normalize.refuse_reason`,
   then exact arithmetic in-process (:mod:`rewards.math.exact`: radicals,
   ``\pi``, polynomials, ``n!``, ``\binom``, ``\log_b``; decided exactly, no
   tolerance), and only for leaves outside its subset the
   ``rational``/``numeric``/``symbolic`` stages of :mod:`rewards.math.symbolic`,
   all such leaves of one answer in one bounded helper call
   (:mod:`rewards.math.bounded`), made only when the leaves decided in-process
   leave the verdict open (:func:`_forced`).

:class:`Options` changes three rules where math-verify has an option of the
same kind (float rounding precision, strict variables, set against
inequality); each field says its default, why, and how it errs.

Guarantees: :func:`answers_equal` never raises and returns within
``timeout_s`` (plus helper start-up, see :mod:`rewards.math.bounded`); stages
1-3 run in-process in linear time and never reach sympy; the exact stage is
bounded by its own limits (about 10 ms at worst).

Does not: give partial credit, read units, or treat a decimal approximation of
an irrational as equal to it (exact for the subset of :mod:`rewards.math.exact`;
beyond it, the helper's numeric tolerance is 1e-10 relative).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from dataclasses import dataclass, replace
from fractions import Fraction

from rewards.math.bounded import run_bounded
from rewards.math.exact import exact_equal, exact_relation
from rewards.math.normalize import normalize, parse_rational, refuse_reason
from rewards.math.structure import Leaf, Node, Rel, Seq, parse_structure

ORDERED = {"tuple", "interval", "matrix", "row"}
UNORDERED = {"set", "list", "union"}
_RANK = {"string": 0, "rational": 1, "numeric": 2, "symbolic": 3}
_VARIABLE = re.compile(r"[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?|\\[a-z]+")
_NAME = re.compile(
    r"[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?|\\[a-z]+"  # x, a_1, \theta
    r"|[A-Z]{2,3}|(?:m)?\\angle ?[A-Z]{1,3}"  # BC, \angle ABC
    r"|[a-zA-Z](?:\^\{-1\})?\([a-z0-9.-]+(?:,[a-z0-9.-]+)*\)"  # g(t), f^{-1}(x), h(2)
    r"|\([a-z](?:_\{?[0-9a-z]\}?)?(?:,[a-z](?:_\{?[0-9a-z]\}?)?)+\)"  # (m,n)
)
_COMMAND = re.compile(r"\\[a-zA-Z]+")
_ATOM = r"[a-zA-Z]{1,4}(?:_\{?[a-zA-Z0-9]+\}?)?"  # S, AB, V_{1}, S_{MBCN}
_LABEL = re.compile(  # names of the quantity asked for: a ratio, a length, a quotient
    rf"{_ATOM}(?::{_ATOM})+|\|{_ATOM}\||\\frac\{{{_ATOM}\}}\{{{_ATOM}\}}"
)
ROUNDED_MIN_DIGITS = 3  # significant digits a rounded decimal must state (see stage 2)
LONG_DECIMAL_DIGITS = 12  # significant digits that make a gold decimal a computed float (stage 2)
_DECIMAL = re.compile(r"-?(\d*)\.(\d+)")
_COMMA_NUMBER = re.compile(r"(-?\d+),(\d+)")

Verdict = tuple[bool, str]  # (equal, deciding stage or reason)


@dataclass(frozen=True)
class Options:
    r"""How :func:`answers_equal` compares, where math-verify has an option of the same kind.
    The defaults are this grader's rules; the alternatives reproduce math-verify's options for
    side-by-side runs (``bench.math_grader``) and for graders that want them."""

    precision: int | None = None
    r"""Decimal places at which two numbers compare when either is written as a decimal: both
    are rounded half-up to that many places, exactly (Fraction arithmetic), then compared; so
    at 2, ``0.33`` is ``\frac{1}{3}`` (math-verify's ``float_rounding``, 6 by default there).
    Numbers only: a decimal against an irrational or an expression is not rounded. None (the
    default): exact rationals, plus the rounded-decimal rule of stage 2. Why None: a fixed
    number of places accepts a wrong answer that agrees to those places (``0.33`` for a gold
    ``0.334`` at 2), which a policy can learn to aim for; the stage-2 rule accepts only a
    decimal correctly rounded at the places it states, for a gold with no finite decimal."""
    strict: bool = True
    r"""False: when two answers differ and both use the same number of distinct one-letter
    variables, the prediction's are renamed to the gold's in order of first appearance and
    the two compared again, so ``f(y)`` matches ``f(x)`` (math-verify's ``strict=False``).
    True (the default, math-verify's too): variables compare by name. Why True: renaming
    also matches ``y + 2x`` to a gold ``x + 2y``, a different answer unless the variables
    are dummies, which the grader cannot tell."""
    set_relation: bool = True
    r"""False: a gold written without an inequality (a set or interval, ``x \in [-2, 7]``) is
    not matched by a prediction that has one (``-2 \le x \le 7``); a gold inequality is
    still matched by an interval (math-verify's ``allow_set_relation_comp``, False by default
    there). True (the default): both ways match. Why True: the inequality and the interval
    state the same set of values, so no wrong answer is accepted; False suits a benchmark
    that also grades the form asked for."""


DEFAULT_OPTIONS = Options()
_INEQUALITY = re.compile(r"[<>\u2264\u2265]|\\(?:leq?|geq?|lt|gt|leqslant|geqslant)(?![a-zA-Z])")
_COMMAND_OR_LETTER = re.compile(r"\\[a-zA-Z]+|[a-zA-Z]")


def _rounded(x: Fraction, places: int) -> Fraction:
    """``x`` rounded half-up (away from zero) to ``places`` decimal places, exactly."""
    scale = 10**places
    r = Fraction(math.floor(abs(x) * scale + Fraction(1, 2)), scale)
    return -r if x < 0 else r


def _renamed(pred: str, gold: str) -> str | None:
    r"""``pred`` with its one-letter variables (letters outside ``\commands``) renamed to the
    gold's in order of first appearance; None when the counts differ or nothing changes.

    >>> _renamed("f(y) + \\alpha", "f(x)"), _renamed("x + y", "x")
    ('f(x) + \\alpha', None)
    """
    def letters(text: str) -> list[str]:
        found = (m.group(0) for m in _COMMAND_OR_LETTER.finditer(text))
        return list(dict.fromkeys(t for t in found if len(t) == 1))

    mine, theirs = letters(pred), letters(gold)
    if len(mine) != len(theirs) or mine == theirs:
        return None
    to = dict(zip(mine, theirs))
    return _COMMAND_OR_LETTER.sub(lambda m: to.get(m.group(0), m.group(0)), pred)


def _letters(text: str) -> bool:
    return bool(re.search(r"[a-zA-Z]", _COMMAND.sub("", text)))


def _is_lhs(lhs: str, rhs: str) -> bool:
    """A left-hand side that names the answer (``x``, ``BC``, ``S_{ABC}:S``) rather than being
    part of it, or a computation whose value is the right-hand side (``2\\cdot 21 = 42``: no
    letters on either side). ``7 = 11a+c`` is an equation with content on both sides: kept."""
    if _NAME.fullmatch(lhs) or _LABEL.fullmatch(lhs):
        return True
    return not (_letters(lhs) or _letters(rhs))


def _as_interval(rel: Rel) -> Seq | None:
    """``x < 3`` as ``(-\\infty, 3)``, ``3 <= x`` as ``[3, \\infty)``; None if no side is a letter."""
    closed = rel.op == "<="
    if _VARIABLE.fullmatch(rel.lhs):
        return Seq("interval", (Leaf("-\\infty"), Leaf(rel.rhs)), (False, closed))
    if _VARIABLE.fullmatch(rel.rhs):
        return Seq("interval", (Leaf(rel.lhs), Leaf("\\infty")), (closed, False))
    return None


def _drop_assignment(node: Node, other: Node) -> Node:
    if isinstance(node, Rel) and not isinstance(other, Rel):
        if node.op == "=" and _is_lhs(node.lhs, node.rhs):
            return parse_structure(node.rhs)
        if node.op in ("<", "<=") and isinstance(other, Seq) and len(other.items) == 2:
            return _as_interval(node) or node
    if isinstance(node, Seq) and node.kind == "list" and isinstance(other, Seq):
        if any(isinstance(i, Rel) for i in other.items):
            return node
        return Seq(node.kind, tuple(_drop_assignment(i, Leaf("")) for i in node.items))
    return node


def _plan(p: Node, g: Node) -> tuple[str, object]:
    """How to compare two nodes: leaf, ordered pairs, unordered item lists, or mismatch."""
    if isinstance(p, Seq) and not isinstance(g, Seq) and p.kind in UNORDERED and len(p.items) == 1:
        p = p.items[0]
    if isinstance(g, Seq) and not isinstance(p, Seq) and g.kind in UNORDERED and len(g.items) == 1:
        g = g.items[0]
    if type(p) is not type(g):
        return "mismatch", "structure mismatch"
    if not isinstance(p, Seq):
        return "leaf", (p, g)
    kinds = {p.kind, g.kind}
    if len(p.items) > len(g.items) and kinds <= {"set", "list"}:  # a repeat adds no answer
        p = Seq(p.kind, tuple(dict.fromkeys(p.items)))
    if len(p.items) != len(g.items):
        return "mismatch", f"{g.kind}: {len(p.items)} items, expected {len(g.items)}"
    if kinds <= UNORDERED and ("union" not in kinds or kinds == {"union"}):
        return "unordered", (p.items, g.items)
    if kinds == {"interval"} and p.closed != g.closed:
        return "mismatch", "interval: ends differ"
    if kinds == {"interval", "tuple"} and (p.closed + g.closed) != (False,) * 4:
        return "mismatch", "interval: ends differ"
    if kinds <= ORDERED and len(kinds) == 1 or kinds in ({"tuple", "list"}, {"interval", "tuple"}):
        return "ordered", list(zip(p.items, g.items))
    return "mismatch", f"structure mismatch: {p.kind} vs {g.kind}"


def _collect(p: Node, g: Node, out: dict) -> None:
    """Gather every leaf pair the comparison of ``p`` and ``g`` may need."""
    p, g = _drop_assignment(p, g), _drop_assignment(g, p)
    how, what = _plan(p, g)
    if how == "leaf":
        out.setdefault(what, None)
    elif how == "ordered":
        for pi, gi in what:
            _collect(pi, gi, out)
    elif how == "unordered":
        for pi in what[0]:
            for gi in what[1]:
                _collect(pi, gi, out)


def _matching(ps: tuple, gs: tuple, table: dict) -> Verdict:
    """Order-free comparison: a perfect matching of equal items (Kuhn's algorithm)."""
    verdicts = [[_decide(pi, gi, table) for gi in gs] for pi in ps]
    owner: dict[int, int] = {}

    def augment(i: int, seen: set) -> bool:
        for j, (ok, _) in enumerate(verdicts[i]):
            if ok and j not in seen:
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    if all(augment(i, set()) for i in range(len(ps))):
        stages = [verdicts[i][j][1] for j, i in owner.items()]
        return True, max(stages, key=lambda s: _RANK.get(s, 0))
    return False, "unmatched element"


def _decide(p: Node, g: Node, table: dict) -> Verdict:
    p, g = _drop_assignment(p, g), _drop_assignment(g, p)
    how, what = _plan(p, g)
    if how == "mismatch":
        return False, what
    if how == "leaf":
        return table[what]
    if how == "unordered":
        return _matching(*what, table)
    stages = []
    for pi, gi in what:
        ok, stage = _decide(pi, gi, table)
        if not ok:
            return False, stage
        stages.append(stage)
    return True, max(stages, key=lambda s: _RANK.get(s, 0))


def rounded_equal(pred: str, gold: Fraction) -> bool:
    r"""True when the decimal ``pred`` is ``gold`` (a fraction with no finite decimal form)
    correctly rounded to the places ``pred`` states, with enough digits (see stage 2).

    >>> rounded_equal("0.0833", Fraction(1, 12)), rounded_equal("0.6666", Fraction(2, 3))
    (True, False)
    >>> rounded_equal("0.33", Fraction(1, 3)), rounded_equal("0.375", Fraction(3, 8))
    (False, False)
    """
    m = _DECIMAL.fullmatch(pred)
    den = gold.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if m is None or den == 1:  # not a decimal, or the gold has an exact decimal form
        return False
    if len((m.group(1) + m.group(2)).lstrip("0")) < ROUNDED_MIN_DIGITS:
        return False
    scale = 10 ** len(m.group(2))
    rounded = Fraction(math.floor(abs(gold) * scale + Fraction(1, 2)), scale)
    return Fraction(pred.lstrip("-")) == rounded and (pred.startswith("-") == (gold < 0))


def decimal_comma(comma: str, point: str) -> bool:
    r"""True when ``comma`` is the number ``point`` written with a decimal comma, digit for digit.

    Only ``d,d`` with no space and a comma group that cannot be a thousands group (not three
    digits, unless the whole part is 0), against a decimal with the same digits: ``1,22`` is
    ``1.22``, ``0,111`` is ``0.111``; ``1,222`` (thousands), ``1, 22`` (a list: the space) and
    ``1,22`` against ``1.2`` or ``122`` are not. How it errs: a gold list of two integers
    written without a space (``1,22``) accepts the decimal ``1.22``, which repeats the gold's
    digits in order; lists are written ``1, 22`` (MATH, GSM8K, this grader's own output).

    >>> decimal_comma("1,22", "1.22"), decimal_comma("1, 22", "1.22")
    (True, False)
    >>> decimal_comma("1,222", "1.222")
    False
    """
    m = _COMMA_NUMBER.fullmatch(comma.strip().strip("$").strip())
    if m is None or (len(m.group(2)) == 3 and m.group(1).lstrip("-") != "0"):
        return False
    return point.strip().strip("$").strip() == f"{m.group(1)}.{m.group(2)}"


def _quick(a: str, b: str, precision: int | None = None) -> Verdict | None:
    """The in-process stages for two leaf strings (``a`` predicted, ``b`` gold), or None;
    ``precision`` is :attr:`Options.precision`."""
    if a == b:
        return True, "string"
    fa, fb = parse_rational(a), parse_rational(b)
    if fa is not None and fb is not None:
        if precision is not None and "." in a + b:
            return _rounded(fa, precision) == _rounded(fb, precision), "rational"
        equal = fa == fb or rounded_equal(a, fb) or _long_decimal(b) and rounded_equal(b, fa)
        return equal, "rational"
    return None


def _long_decimal(text: str) -> bool:
    """A decimal literal with at least :data:`LONG_DECIMAL_DIGITS` significant digits."""
    m = _DECIMAL.fullmatch(text)
    return m is not None and len((m.group(1) + m.group(2)).lstrip("0")) >= LONG_DECIMAL_DIGITS


def _leaf_request(p: Leaf | Rel, g: Leaf | Rel, precision: int | None = None) -> Verdict | list:
    """In-process verdict for a leaf pair, or the helper request that decides it."""
    if isinstance(p, Leaf):
        texts = (p.text, g.text)
        quick = _quick(*texts, precision)
        request = ["expr", p.text, g.text]
    else:
        if p.op != g.op:
            return False, "relation differs"
        texts = (p.lhs, p.rhs, g.lhs, g.rhs)
        quick = (True, "string") if (p.lhs, p.rhs) == (g.lhs, g.rhs) else None
        request = ["rel", p.op, *texts]
    if quick is not None:
        return quick
    for text in texts:
        reason = refuse_reason(text)
        if reason is not None:
            return False, reason
    if request[0] == "expr" and _long_decimal(g.text) and parse_rational(p.text) is None:
        return request  # against a computed float: the helper's tolerance (stage 2)
    exact = exact_equal(*texts) if request[0] == "expr" else exact_relation(*request[1:])
    return request if exact is None else exact


def answers_equal(pred: str, gold: str, *, timeout_s: float = 5.0,
                  options: Options = DEFAULT_OPTIONS) -> Verdict:
    r"""Compare two extracted answers; return (equal, stage or reason). ``options``: see
    :class:`Options` (the defaults are the rules above).

    >>> answers_equal("0.33", r"\frac{1}{3}", options=Options(precision=2))
    (True, 'rational')
    >>> answers_equal("f(y)", "f(x)", options=Options(strict=False))[0]
    True
    >>> answers_equal(r"-2 \le x \le 7", r"x \in [-2, 7]", options=Options(set_relation=False))
    (False, 'an inequality for a set')

    >>> answers_equal("0.5", r"\frac{1}{2}")
    (True, 'rational')
    >>> answers_equal(r"\frac{1}{2^{99}}", r"\frac{1}{2^{98}}", timeout_s=30)
    (False, 'rational')
    >>> answers_equal("3, 2", "2, 3")
    (True, 'string')
    >>> answers_equal("(m,n)=(2,7)", "(2, 7)")
    (True, 'string')
    >>> answers_equal("[1, 2)", "[1, 2]")
    (False, 'interval: ends differ')
    """
    if not options.set_relation and _INEQUALITY.search(pred) and not _INEQUALITY.search(gold):
        return False, "an inequality for a set"
    start = time.monotonic()
    verdict = _equal(pred, gold, timeout_s, options.precision)
    if verdict[0] or options.strict:
        return verdict
    renamed = _renamed(pred, gold)
    left = timeout_s - (time.monotonic() - start)
    if renamed is None or left <= 0:
        return verdict
    return answers_equal(renamed, gold, timeout_s=left, options=replace(options, strict=True))


def _equal(pred: str, gold: str, timeout_s: float, precision: int | None) -> Verdict:
    """:func:`answers_equal` under the default variable and set rules."""
    np_, ng = normalize(pred), normalize(gold)
    quick = _quick(np_, ng, precision)
    if quick is not None:
        return quick
    if decimal_comma(pred, gold) or decimal_comma(gold, pred):
        return True, "decimal comma"
    sp, sg = parse_structure(np_), parse_structure(ng)
    table: dict = {}
    _collect(sp, sg, table)
    pending = {}
    for pair in table:
        verdict = _leaf_request(*pair, precision)
        if isinstance(verdict, list):
            pending[pair] = verdict
        else:
            table[pair] = verdict
    if pending:
        forced = _forced(sp, sg, table, pending)
        if forced is not None:
            return forced
        keys = {pair: json.dumps(req) for pair, req in pending.items()}
        misses = {pair: req for pair, req in pending.items() if keys[pair] not in _DECIDED}
        if misses:
            results = run_bounded(list(misses.values()), timeout_s)
            if results is None:
                return False, "timeout"  # not remembered: a timeout is not a decision
            _remember({keys[pair]: res for pair, res in zip(misses, results)})
        table.update({pair: _DECIDED[keys[pair]] for pair in pending})
    return _decide(sp, sg, table)


def _forced(sp: Node, sg: Node, table: dict, pending: dict) -> Verdict | None:
    """The verdict when the leaves decided in-process already fix it, whatever the pending
    leaves turn out to be; else None. :func:`_decide` is monotone in the leaf verdicts (a leaf,
    all pairs of an ordered node, a perfect matching of an unordered one): if it says equal with
    every pending leaf unequal, it says equal for any outcome, and if it says unequal with every
    pending leaf equal, unequal for any outcome. Either way the helper is not needed.

    >>> from rewards.math.structure import Leaf, Seq
    >>> p = Seq("set", (Leaf("a"), Leaf("b")))
    >>> g = Seq("set", (Leaf("b"), Leaf("a")))
    >>> table = {(Leaf("a"), Leaf("b")): None, (Leaf("a"), Leaf("a")): (True, "string"),
    ...          (Leaf("b"), Leaf("b")): (True, "string"), (Leaf("b"), Leaf("a")): None}
    >>> _forced(p, g, table, {k: [] for k, v in table.items() if v is None})
    (True, 'string')
    """
    unequal = {pair: (False, "pending") for pair in pending}
    verdict = _decide(sp, sg, {**table, **unequal})
    if verdict[0]:
        return verdict
    equal = {pair: (True, "pending") for pair in pending}
    verdict = _decide(sp, sg, {**table, **equal})
    return None if verdict[0] else verdict


# Symbolic decisions already made in this process (request JSON -> verdict), least recently
# added dropped first. RL grades the same answers over and over (a group's samples often agree,
# and every epoch revisits the golds), and the symbolic stage is the only slow one; its
# decisions are deterministic, so repeating a request is never needed. Timeouts are not kept.
_DECIDED: dict[str, tuple[bool, str]] = {}
_DECIDED_MAX = 100_000
_DECIDED_LOCK = threading.Lock()


def _remember(results: dict[str, tuple[bool, str]]) -> None:
    with _DECIDED_LOCK:
        _DECIDED.update(results)
        while len(_DECIDED) > _DECIDED_MAX:
            del _DECIDED[next(iter(_DECIDED))]
