r"""The expensive stages: parse LaTeX with sympy and compare values, in a helper process.

This module runs inside the helper process that :mod:`rewards.math.bounded`
starts (``python -m rewards.math.symbolic`` serves requests on stdin/stdout),
so a parse or a simplification that never ends costs a killed process, not a
hung trainer. It may also be imported and called directly (tests do), which
gives no time bound at all.

Stages, for one pair of leaf answers (no tuples or sets: those are split up
in :mod:`rewards.math.equiv` before they get here):

* ``rational``: both sides evaluate to exact rationals; compared exactly
  (``\frac{1}{2^{99}}`` is not ``\frac{1}{2^{98}}``). Decimal literals are read
  as exact rationals (``0.1`` is ``1/10``), never as binary floats.
* ``numeric``: both sides are numbers without free symbols and at least one is
  irrational; equal when ``|a - b| <= REL_TOL * max(|a|, |b|)`` after
  evaluation to 40 significant digits (real and imaginary parts alike). The
  tolerance is relative, so tiny values are not all equal to each other or
  to zero, and zero equals only zero.
* ``symbolic``: otherwise; unequal when the two differ numerically (as in
  ``numeric``) at one of :data:`SAMPLE_POINTS` random rational points (a
  proof of inequality that spares ``simplify``); else equal when
  ``expand(a - b)`` or ``simplify(a - b)`` is 0. Relations (``=``, ``<``,
  ``\leq``, ``\neq``) compare ``lhs - rhs`` up to a
  nonzero constant factor (positive for inequalities), so ``y = 2x+1`` matches
  ``2x - y + 1 = 0``.

Does not: prove equalities that ``simplify`` cannot reduce to 0 (such pairs
come back unequal), nor read plain-code syntax such as ``sqrt(2)`` (parsed as
LaTeX, where it is a product of letters). It never calls ``eval``.
"""

from __future__ import annotations

import json
import random
import resource
import sys

import sympy
from latex2sympy2_extended import latex2sympy

REL_TOL = sympy.Rational(1, 10**10)  # relative tolerance of the numeric stage
DIGITS = 40  # significant digits of numeric evaluation
SAMPLE_POINTS = 3  # random points tried to refute a symbolic identity before simplify
HELPER_MEMORY_BYTES = 2 << 30  # address-space cap of the helper process
PARSE_CACHE = 1024  # parsed texts kept: a gold recurs across the leaf pairs of one answer


def parse(text: str) -> sympy.Basic:
    r"""Parse LaTeX into sympy, with decimal literals made exact rationals.

    >>> parse(r"\frac{1}{2^{3}}") == sympy.Rational(1, 8)
    True
    >>> parse("0.1") == sympy.Rational(1, 10)
    True

    Sympy results are kept, oldest dropped first past :data:`PARSE_CACHE` (they are immutable,
    and the parse depends on the text alone); a matrix (mutable) or a failed parse is redone.
    """
    cached = _PARSED.get(text)
    if cached is not None:
        return cached
    expr = latex2sympy(text)
    if isinstance(expr, sympy.Basic):
        floats = expr.atoms(sympy.Float)
        if floats:
            expr = expr.xreplace({f: sympy.Rational(str(f)) for f in floats})
        expr = expr.doit() if isinstance(expr, sympy.Expr) else expr
        if len(_PARSED) >= PARSE_CACHE:
            _PARSED.pop(next(iter(_PARSED)), None)
        _PARSED[text] = expr
    return expr


_PARSED: dict[str, sympy.Basic] = {}


def _numeric_equal(a: sympy.Expr, b: sympy.Expr, point: dict | None = None) -> bool | None:
    va, vb = a.evalf(DIGITS, subs=point), b.evalf(DIGITS, subs=point)
    if not (va.is_number and vb.is_number) or va.has(sympy.zoo, sympy.nan):
        return None
    if va.has(sympy.oo, -sympy.oo) or vb.has(sympy.oo, -sympy.oo):
        return va == vb
    scale = max(abs(va), abs(vb))
    if scale == 0:
        return True
    return bool(abs(va - vb) <= REL_TOL * scale)


def _refuted(a: sympy.Expr, b: sympy.Expr) -> bool:
    """True when ``a`` and ``b`` differ in value at a sample point (a cheap proof of inequality)."""
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    rng = random.Random(0)
    for _ in range(SAMPLE_POINTS):
        point = {s: sympy.Rational(rng.randint(1, 97), rng.randint(2, 13)) for s in symbols}
        if _numeric_equal(a, b, point) is False:
            return True
    return False


def expr_equal(a: sympy.Basic, b: sympy.Basic) -> tuple[bool, str]:
    r"""Compare two parsed answers; return (equal, deciding stage).

    >>> expr_equal(parse(r"\frac{1}{2^{99}}"), parse(r"\frac{1}{2^{98}}"))
    (False, 'rational')
    >>> expr_equal(parse(r"\sqrt{8}"), parse(r"2\sqrt{2}"))
    (True, 'numeric')
    >>> expr_equal(parse("(x+1)^2"), parse("x^2+2x+1"))
    (True, 'symbolic')
    """
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return bool(a == b), "symbolic"
    if not a.free_symbols and not b.free_symbols:
        if a.is_Rational and b.is_Rational:
            return bool(a == b), "rational"
        verdict = _numeric_equal(a, b)
        if verdict is not None:
            return verdict, "numeric"
    diff = a - b
    if diff == 0 or _refuted(a, b):
        return diff == 0, "symbolic"
    if sympy.expand(diff) == 0:
        return True, "symbolic"
    return bool(sympy.simplify(diff) == 0), "symbolic"


def relation_equal(op: str, l1: str, r1: str, l2: str, r2: str) -> tuple[bool, str]:
    r"""Compare ``l1 op r1`` with ``l2 op r2`` up to a constant factor.

    ``op`` is ``=``, ``!=``, ``<`` or ``<=`` (the caller turns ``>`` around).

    >>> relation_equal("=", "y", "2x+1", "2x-y+1", "0")
    (True, 'symbolic')
    >>> relation_equal("<", "x", "3", "-x", "-3")
    (False, 'symbolic')
    """
    d1 = parse(r1) - parse(l1)
    d2 = parse(r2) - parse(l2)
    if d1 == d2 or sympy.expand(d1 - d2) == 0:
        return True, "symbolic"
    if d2 == 0 or d1 == 0:
        return False, "symbolic"
    ratio = sympy.simplify(d1 / d2)
    if ratio.free_symbols or ratio == 0 or not ratio.is_number:
        return False, "symbolic"
    return bool(op in ("=", "!=") or ratio.is_positive), "symbolic"


def compare(request: list) -> tuple[bool, str]:
    """Decide one request ``["expr", a, b]`` or ``["rel", op, l1, r1, l2, r2]``; never raises.

    >>> compare(["expr", "0.5", r"\\frac{2}{4}"])
    (True, 'rational')
    >>> compare(["expr", "\\\\frac{", "1"])[1].startswith("parse error")
    True
    """
    try:
        if request[0] == "rel":
            return relation_equal(*request[1:])
        try:
            a, b = parse(request[1]), parse(request[2])
        except Exception as exc:  # noqa: BLE001 - latex2sympy raises many types on bad LaTeX
            return False, f"parse error: {type(exc).__name__}"
        return expr_equal(a, b)
    except Exception as exc:  # noqa: BLE001 - sympy failing on odd input: unequal, not a crash
        return False, f"sympy error: {type(exc).__name__}"


# One comparison per path that first use makes slow (lazy imports inside sympy): a helper
# runs them before it says "ready", so no graded pair pays for them against its bound.
_WARM_UP = (
    ["expr", "\\sin^2(x)+\\cos^2(x)", "1"],
    ["expr", "(x+1)^{3}", "x^3+3x^2+3x+1"],
    ["expr", "\\frac{\\sqrt{8}}{2}", "\\sqrt{2}"],
    ["expr", "\\log_3 27", "3"],
)


def serve() -> None:
    """Answer JSON-line requests (lists of comparisons) on stdin until EOF."""
    resource.setrlimit(resource.RLIMIT_AS, (HELPER_MEMORY_BYTES, HELPER_MEMORY_BYTES))
    sys.setrecursionlimit(10_000)
    for request in _WARM_UP:  # sympy imports parts of itself on first use: pay that before "ready"
        compare(request)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            requests = json.loads(line)
            results = [compare(r) for r in requests]
        except (ValueError, TypeError, MemoryError, RecursionError) as exc:
            results = [[False, f"helper error: {type(exc).__name__}"]]
        out.write(json.dumps(results) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()
