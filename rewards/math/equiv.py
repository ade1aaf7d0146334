r"""Decide whether two extracted answers are equal, cheapest stage first.

Stages, in order; the first that can decide does:

1. ``string``: the normalised strings are equal (:mod:`rewards.math.normalize`).
2. ``rational``: both are integer, decimal or ``a/b``/``\frac{a}{b}`` literals;
   compared exactly with :class:`fractions.Fraction` (no floats): ``0.5`` is
   ``\frac{1}{2}``, ``0.333`` is not ``\frac{1}{3}``.
3. structure (:mod:`rewards.math.structure`): tuples and intervals compare
   element-wise in order (interval ends must match), sets, bare lists of
   several answers and unions compare order-free as multisets (same count, each
   element matched once), matrices row by row. ``x = 5`` against ``5`` drops the
   ``x =`` (a single, possibly subscripted, letter), on either side.
4. for each pair of leaves still undecided: the string and rational stages
   again, then the guards of :func:`~rewards.math.normalize.refuse_reason`,
   then the ``rational``/``numeric``/``symbolic`` stages of
   :mod:`rewards.math.symbolic`, all leaves of one answer in one bounded
   helper call (:mod:`rewards.math.bounded`).

Guarantees: :func:`answers_equal` never raises and returns within
``timeout_s`` (plus helper start-up, see :mod:`rewards.math.bounded`); stages
1-3 run in-process in linear time and never reach sympy.

Does not: give partial credit, read units, or treat a decimal approximation of
an irrational as equal to it (the numeric tolerance is 1e-10 relative).
"""

from __future__ import annotations

import re

from rewards.math.bounded import run_bounded
from rewards.math.normalize import normalize, parse_rational, refuse_reason
from rewards.math.structure import Leaf, Node, Rel, Seq, parse_structure

ORDERED = {"tuple", "interval", "matrix", "row"}
UNORDERED = {"set", "list", "union"}
_RANK = {"string": 0, "rational": 1, "numeric": 2, "symbolic": 3}
_VARIABLE = re.compile(r"[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?|\\[a-z]+")

Verdict = tuple[bool, str]  # (equal, deciding stage or reason)


def _drop_assignment(node: Node, other: Node) -> Node:
    if (
        isinstance(node, Rel)
        and node.op == "="
        and not isinstance(other, Rel)
        and _VARIABLE.fullmatch(node.lhs)
    ):
        return Leaf(node.rhs)
    if isinstance(node, Seq) and node.kind == "list" and isinstance(other, Seq):
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
    if len(p.items) != len(g.items):
        return "mismatch", f"{g.kind}: {len(p.items)} items, expected {len(g.items)}"
    kinds = {p.kind, g.kind}
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


def _quick(a: str, b: str) -> Verdict | None:
    """The in-process stages for two leaf strings, or None when they cannot decide."""
    if a == b:
        return True, "string"
    fa, fb = parse_rational(a), parse_rational(b)
    if fa is not None and fb is not None:
        return fa == fb, "rational"
    return None


def _leaf_request(p: Leaf | Rel, g: Leaf | Rel) -> Verdict | list:
    """In-process verdict for a leaf pair, or the helper request that decides it."""
    if isinstance(p, Leaf):
        texts = (p.text, g.text)
        quick = _quick(*texts)
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
    return request


def answers_equal(pred: str, gold: str, *, timeout_s: float = 5.0) -> Verdict:
    r"""Compare two extracted answers; return (equal, stage or reason).

    >>> answers_equal("0.5", r"\frac{1}{2}")
    (True, 'rational')
    >>> answers_equal(r"\frac{1}{2^{99}}", r"\frac{1}{2^{98}}", timeout_s=30)
    (False, 'rational')
    >>> answers_equal("3, 2", "2, 3")
    (True, 'string')
    >>> answers_equal("[1, 2)", "[1, 2]")
    (False, 'interval: ends differ')
    """
    np_, ng = normalize(pred), normalize(gold)
    quick = _quick(np_, ng)
    if quick is not None:
        return quick
    sp, sg = parse_structure(np_), parse_structure(ng)
    table: dict = {}
    _collect(sp, sg, table)
    pending = {}
    for pair in table:
        verdict = _leaf_request(*pair)
        if isinstance(verdict, list):
            pending[pair] = verdict
        else:
            table[pair] = verdict
    if pending:
        results = run_bounded(list(pending.values()), timeout_s)
        if results is None:
            return False, "timeout"
        table.update(zip(pending, results))
    return _decide(sp, sg, table)
