r"""Split a normalised answer into its structure: tuples, intervals, sets, matrices, relations.

Guarantees: :func:`parse_structure` never raises, runs in time linear in the
input per nesting level, and only splits at top level (commas inside
``\frac{a,b}`` or ``f(x, y)`` stay put). It is bracket matching, not a LaTeX
grammar: the pieces (leaves) are parsed by sympy later.

Rules (how :mod:`rewards.math.equiv` reads the kinds):

* ``(a, b)`` is an ordered ``tuple`` (also an open interval: both compare the
  same way); ``[a, b]``, ``[a, b)``, ``(a, b]`` are ``interval``s whose ends
  (open or closed) must match.
* ``\{a, b\}`` is a ``set``: order-free. ``{a, b}`` (LaTeX group braces, as
  models write sets) is a ``list``: order-free against a set or a list, but in
  order against a tuple, so ``{3, 1}`` does not pass for ``(1, 3)`` (writing
  braces gains no freedom of order).
* ``;`` at top level separates answers like ``,`` (``-12;-11``; ``p=5,q=2;p=7,q=2``
  is two answers of two parts each); inside brackets with no comma it separates
  coordinates (``(0;-2;6)``, ``[0;1]``).
* a bare ``a, b`` is a ``list`` of several answers (e.g. the solutions of an
  equation): order-free, and the count must match (see
  :mod:`rewards.math.equiv` for repeated items).
* ``A \cup B`` is a ``union``: order-free.
* ``\begin{pmatrix}...\end{pmatrix}`` (and ``bmatrix``, ``matrix``) is a
  ``matrix`` of ``row``s, ordered.
* ``a \pm b`` is the ``list`` ``a+b, a-b``.
* one top-level ``=``, ``<``, ``>``, ``\leq``, ``\geq``, ``\neq`` makes a
  :class:`Rel`; ``>`` and ``\geq`` are turned around into ``<`` and ``<=``.
* ``x \in S`` (one letter before ``\in``) is ``S``: ``x \in [-2, 7]`` is the
  interval ``[-2, 7]``.
* an equation chain ``x = 2+3 = 5`` is the :class:`Rel` ``x = 5`` (first
  left-hand side, last right-hand side: the last one is the result).
* a chained inequality ``2 \leq t < 9`` (same direction, a single letter,
  maybe ``f(x)``, in the middle) is the ``interval`` ``[2, 9)``.

Does not: read other chains (``1 < x > 0``, ``a = b < c``): they stay one
leaf. ``x > 2`` against the interval ``(2, \infty)`` is
:mod:`rewards.math.equiv`'s business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ITEMS = 32  # a longer list is kept as one leaf (bounds the pairwise work)


@dataclass(frozen=True)
class Leaf:
    """One expression, compared by value."""

    text: str


@dataclass(frozen=True)
class Rel:
    """``lhs op rhs`` with ``op`` one of ``=``, ``<``, ``<=``, ``!=``."""

    op: str
    lhs: str
    rhs: str


@dataclass(frozen=True)
class Seq:
    """A compound answer; ``closed`` gives the (left, right) ends of an interval."""

    kind: str  # tuple | interval | set | list | union | matrix | row
    items: tuple
    closed: tuple[bool, bool] = (False, False)


Node = Leaf | Rel | Seq

_OPEN, _CLOSE = "([{", ")]}"
_REL = re.compile(r"\\leq|\\geq|\\lt(?![a-z])|\\gt(?![a-z])|<=|>=|\\neq|\\ne(?![a-z])|=|<|>")
_REL_OP = {
    "=": "=",
    "<": "<",
    "\\lt": "<",
    "<=": "<=",
    "\\leq": "<=",
    ">": ">",
    "\\gt": ">",
    ">=": ">=",
    "\\geq": ">=",
    "\\neq": "!=",
    "\\ne": "!=",
}
_MIDDLE = re.compile(r"[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?(?:\([a-z]\))?")  # x, a_1, f(x)
_MEMBER = re.compile(r"[a-zA-Z]\\in(?![a-zA-Z])(.+)", re.DOTALL)
_MATRIX = re.compile(r"\\begin\{([pbBvV]?matrix)\}(.*)\\end\{\1\}", re.DOTALL)


def split_top(s: str, sep: str) -> list[str]:
    r"""Split ``s`` at ``sep`` where no bracket is open.

    >>> split_top(r"\frac{1,2}{3},(4,5),6", ",")
    ['\\frac{1,2}{3}', '(4,5)', '6']
    """
    parts, depth, last, i = [], 0, 0, 0
    n = len(sep)
    while i < len(s):
        c = s[i]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[last:i])
            last = i + n
            i += n
            continue
        i += 1
    parts.append(s[last:])
    return parts


def _wraps(s: str) -> bool:
    """True when the bracket opening ``s`` closes at its last character."""
    depth = 0
    for i, c in enumerate(s):
        depth += (c in _OPEN) - (c in _CLOSE)
        if depth == 0:
            return i == len(s) - 1
    return False


def _chain_interval(parts: list[str], ops: list[str]) -> Seq | None:
    """``a < x <= b`` (or ``b >= x > a``) as the interval ``(a, b]``."""
    if _MIDDLE.fullmatch(parts[1]) is None:
        return None
    if set(ops) <= {">", ">="}:
        parts, ops = parts[::-1], [op.replace(">", "<") for op in ops[::-1]]
    if not set(ops) <= {"<", "<="}:
        return None
    return Seq("interval", (Leaf(parts[0]), Leaf(parts[2])), (ops[0] == "<=", ops[1] == "<="))


def _relation(s: str) -> Rel | Seq | None:
    ops, depth = [], 0
    for m in _REL.finditer(s):
        prefix = s[: m.start()]
        depth = sum(prefix.count(c) for c in _OPEN) - sum(prefix.count(c) for c in _CLOSE)
        if depth == 0:
            ops.append(m)
        if len(ops) > MAX_ITEMS:
            return None
    if not ops:
        return None
    cuts = [0] + [i for m in ops for i in (m.start(), m.end())] + [len(s)]
    parts = [s[cuts[i] : cuts[i + 1]].strip() for i in range(0, len(cuts), 2)]
    names = [_REL_OP[m.group(0)] for m in ops]
    if not all(parts):
        return None
    if len(ops) == 2 and "=" not in names and "!=" not in names:
        return _chain_interval(parts, names)
    if len(ops) > 1 and set(names) != {"="}:
        return None
    lhs, rhs, op = parts[0], parts[-1], names[0]
    if op in (">", ">="):
        return Rel(op.replace(">", "<"), rhs, lhs)
    return Rel(op, lhs, rhs)


def _brackets(s: str) -> Node | None:
    if s.startswith("\\{") and s.endswith("\\}") and _wraps(s[1:]):
        return Seq("set", tuple(parse_structure(p) for p in split_top(s[2:-2], ",")))
    if s[:1] == "{" and s[-1:] == "}" and _wraps(s) and len(split_top(s[1:-1], ",")) > 1:
        return Seq("list", tuple(parse_structure(p) for p in split_top(s[1:-1], ",")))
    if s[:1] in "([" and s[-1:] in ")]" and _wraps(s):
        parts = split_top(s[1:-1], ",")
        if len(parts) == 1:
            parts = split_top(s[1:-1], ";")  # (0;-2;6): a semicolon between coordinates
        if len(parts) == 1:
            return parse_structure(parts[0])
        items = tuple(parse_structure(p) for p in parts)
        if len(parts) == 2 and (s[0] == "[" or s[-1] == "]"):
            return Seq("interval", items, (s[0] == "[", s[-1] == "]"))
        return Seq("tuple", items)
    return None


def parse_structure(s: str) -> Node:
    r"""Structure of a normalised answer.

    >>> parse_structure("(1,2]")
    Seq(kind='interval', items=(Leaf(text='1'), Leaf(text='2')), closed=(False, True))
    >>> parse_structure("y=2x+1")
    Rel(op='=', lhs='y', rhs='2x+1')
    >>> parse_structure("x=2+3=5")
    Rel(op='=', lhs='x', rhs='5')
    >>> parse_structure(r"2\leqt<9")
    Seq(kind='interval', items=(Leaf(text='2'), Leaf(text='9')), closed=(True, False))
    >>> parse_structure(r"t\in(1,4]") == parse_structure("(1,4]")
    True
    >>> parse_structure(r"1\pm\sqrt{2}").kind
    'list'
    """
    s = s.strip()
    if len(s) > 2000 or not s:
        return Leaf(s)
    for sep, kind in (("\\cup", "union"), (";", "list"), (",", "list")):
        parts = split_top(s, sep)
        if 1 < len(parts) <= MAX_ITEMS:
            return Seq(kind, tuple(parse_structure(p) for p in parts))
    matrix = _MATRIX.fullmatch(s)
    if matrix:
        rows = [r for r in matrix.group(2).split("\\\\") if r.strip()]
        return Seq(
            "matrix", tuple(Seq("row", tuple(Leaf(c.strip()) for c in r.split("&"))) for r in rows)
        )
    member = _MEMBER.fullmatch(s)
    if member:
        return parse_structure(member.group(1))
    rel = _relation(s)
    if rel is not None:
        return rel
    bracketed = _brackets(s)
    if bracketed is not None:
        return bracketed
    pm = split_top(s, "\\pm")
    if len(pm) == 2 and pm[1]:  # "a \pm b", or "\pm b" alone
        return Seq("list", (Leaf(f"{pm[0]}+{pm[1]}"), Leaf(f"{pm[0]}-({pm[1]})")))
    return Leaf(s)
