r"""Exact in-process values for a small LaTeX subset, so most leaves never reach sympy.

:func:`value` reads a normalised leaf (``2\sqrt{5}``, ``\frac{\pi}{2}``,
``(x+1)^2``, ``6!``, ``\binom{6}{3}``, ``\log_{3}27``, ``10^6``, ``3t-4``)
into a canonical form, or returns None when the text is outside the subset;
:func:`exact_equal` and :func:`exact_relation` compare two leaves with it and
return None when either side is outside it, so the caller falls back to the
sympy helper (:mod:`rewards.math.symbolic`).

The canonical form is a Laurent polynomial in the letters and ``\pi`` whose
coefficients are rationals times square roots of squarefree integers
(``{(r, monomial): Fraction}``, ``r`` squarefree). Square roots of distinct
squarefree integers are linearly independent over the rationals, ``\pi`` (and,
on its own, ``e``) is transcendental and letters are indeterminates, so two values are equal
exactly when their forms are equal: the comparison is a proof, both ways,
with no floating point and no tolerance (``1.4142135623730951`` is not
``\sqrt{2}``, however close).

Read as latex2sympy reads it (the helper's parser), so the verdict is the
helper's; a differential test checks this on every answer in MATH-500 and the
real-output set and on random expressions. Letters fold to lower case (``A``
is ``a``), except ``e`` (Euler's number; ``E`` is the letter e) and ``I``
(the imaginary unit: outside); ``i`` is a plain letter, as there. Outside the
subset, because latex2sympy reads them in its own way: a name before ``(``
(a function call: ``x(3)``, ``x^{2}(3)``), numbers side by side without an
operator other than a mixed number (``2\frac{1}{2}`` is 5/2, there and here;
``2(3)`` is 5 there), ``e`` right after a
digit (``2E+0`` is a float there), subscripts other than a number's base
(``52_8`` reads as 52 there and here), ``/``, brace-less superscripts longer
than one character, chained ``^`` and ``!``. When ``\pi`` and ``e`` both
occur and the forms differ there is no proof (their algebraic independence is
open): sympy decides. Stages reported: ``rational`` (both values rational
numbers), ``numeric`` (both numbers, one irrational), ``symbolic`` (letters).

Guarantees: never raises on ``str`` input, and is bounded by construction:
at most :data:`MAX_CHARS` characters, :data:`MAX_TERMS` terms per value,
:data:`MAX_WORK` term products per call, :data:`MAX_BITS` bits per
coefficient, factorials and binomials of at most :data:`MAX_FACTORIAL`, roots
of integers of at most :data:`MAX_RADICAND` (factored by trial division up to
its cube root). Anything beyond a bound is "outside the subset", not an
error, so ``10^{10^{10}}`` or ``(a+b+c)^{99}`` cost microseconds, not memory.

Does not: divide by a sum (``\frac{1}{1+\sqrt{2}}``), take roots of
non-numbers or irrational roots other than square roots (beyond knowing that a
lone irrational ``\sqrt[n]{m}`` is no rational number), or know any
function (``\sin``, ``\ln``): those go to sympy.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_CHARS = 300  # longer leaves go to sympy
MAX_TERMS = 64  # terms of one value
MAX_WORK = 1000  # term products in one call (about 10 ms at worst)
MAX_BITS = 2048  # bits of a coefficient's numerator or denominator
MAX_EXPONENT = 64  # integer exponent on anything but a single term
MAX_FACTORIAL = 300  # n! and binom(n, k) for n up to this
MAX_RADICAND = 10**12  # square roots of integers up to this (numerator times denominator)

_TOKEN = re.compile(r"\d+\.\d+|\.\d+|\d+|\\[a-zA-Z]+|[a-zA-Z]|\S")
_OUTSIDE_LETTERS = set("I")  # the imaginary unit
_E = "\\e"  # Euler's number (latex2sympy reads the letter e so; E is the symbol e)
_BINOM = {"\\binom", "\\dbinom", "\\tbinom"}
_TIMES = {"\\cdot", "\\times", "*"}
_PI = "\\pi"
_ATOM_COMMANDS = {"(", "{", "\\frac", "\\sqrt", _PI, "\\log", *_BINOM}

Value = dict  # {(radical: int, monomial: tuple[(atom, exponent), ...]): Fraction}


class Outside(Exception):
    """The text is outside the subset (or past a bound): the caller uses sympy."""


def _is_letter(tok: str) -> bool:
    return len(tok) == 1 and tok.isascii() and tok.isalpha()


def _const(q: Fraction) -> Value:
    return {(1, ()): q} if q else {}


def _check(q: Fraction) -> Fraction:
    if q.numerator.bit_length() > MAX_BITS or q.denominator.bit_length() > MAX_BITS:
        raise Outside("coefficient too large")
    return q


def _squarefree(n: int) -> tuple[int, int]:
    """``n = s**2 * r`` with ``r`` squarefree; returns (s, r). ``n`` at most MAX_RADICAND."""
    if n > MAX_RADICAND:
        raise Outside("radicand too large")
    s, r, d = 1, 1, 2
    while d * d * d <= n:
        while n % (d * d) == 0:
            n //= d * d
            s *= d
        if n % d == 0:
            n //= d
            r *= d
        d += 1
    # What is left has no prime factor up to its cube root: a prime, p*q, or p**2.
    root = math.isqrt(n)
    if root * root == n and n > 1:
        return s * root, r
    return s, r * n


class _Reader:
    """Recursive descent over the tokens of one leaf; each method returns a Value."""

    def __init__(self, text: str) -> None:
        self.tokens = _TOKEN.findall(text)
        self.pos = 0
        self.work = 0

    def peek(self, ahead: int = 0) -> str | None:
        i = self.pos + ahead
        return self.tokens[i] if i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise Outside(f"expected {expected}")
        self.pos += 1
        return tok

    # arithmetic ---------------------------------------------------------------------------
    def add(self, a: Value, b: Value, sign: int = 1) -> Value:
        out = dict(a)
        for k, q in b.items():
            s = out.get(k, 0) + sign * q
            if s:
                out[k] = _check(s)
            else:
                out.pop(k, None)
        if len(out) > MAX_TERMS:
            raise Outside("too many terms")
        return out

    def mul(self, a: Value, b: Value) -> Value:
        self.work += len(a) * len(b)
        if self.work > MAX_WORK:
            raise Outside("too much work")
        out: Value = {}
        for (r1, m1), q1 in a.items():
            for (r2, m2), q2 in b.items():
                g = math.gcd(r1, r2)  # sqrt(r1) sqrt(r2) = g sqrt(r1 r2 / g^2), squarefree
                powers = dict(m1)
                for atom, e in m2:
                    powers[atom] = powers.get(atom, 0) + e
                mono = tuple(sorted((k, e) for k, e in powers.items() if e))
                key = ((r1 // g) * (r2 // g), mono)
                s = out.get(key, 0) + q1 * q2 * g
                if s:
                    out[key] = _check(s)
                else:
                    out.pop(key)
        if len(out) > MAX_TERMS:
            raise Outside("too many terms")
        return out

    def inverse(self, a: Value) -> Value:
        if len(a) != 1:
            raise Outside("division by a sum or by zero")
        (((r, mono), q),) = a.items()
        return {(r, tuple((k, -e) for k, e in mono)): _check(1 / (q * r))}

    def power(self, base: Value, exp: Value) -> Value:
        q = rational(exp)
        if q is None:
            raise Outside("exponent not a rational number")
        if q.denominator == 2 and q > 0:
            return self.power(self.sqrt(base), _const(Fraction(q.numerator)))
        if q.denominator != 1:
            raise Outside("fractional exponent")
        n = q.numerator
        if n == 0 and base:
            return _const(Fraction(1))
        if not base:
            if n <= 0:
                raise Outside("0 to a non-positive power")
            return {}
        if n < 0:
            base, n = self.inverse(base), -n
        if len(base) == 1:  # one term: exact power, bounded by the size of the result
            (((r, mono), c),) = base.items()
            bits = max(c.numerator.bit_length(), c.denominator.bit_length(), r.bit_length())
            if bits * n > MAX_BITS:
                raise Outside("power too large")
            rr = r ** (n // 2)
            mono_n = tuple((k, e * n) for k, e in mono)
            return {(r if n % 2 else 1, mono_n): _check(c**n * rr)}
        if n > MAX_EXPONENT:
            raise Outside("exponent too large")
        out = _const(Fraction(1))
        for _ in range(n):
            out = self.mul(out, base)
        return out

    def sqrt(self, a: Value) -> Value:
        q = rational(a)
        if q is None or q < 0:
            raise Outside("square root of a non-rational or negative value")
        s, r = _squarefree(q.numerator * q.denominator)
        return {(r, ()): Fraction(s, q.denominator)} if q else {}

    # grammar ------------------------------------------------------------------------------
    def expr(self) -> Value:
        """Sum of signed products (``2--3`` is ``2+3``, as latex2sympy reads it)."""
        total: Value = {}
        while True:
            sign = 1
            while self.peek() in ("+", "-"):
                sign = -sign if self.take() == "-" else sign
            total = self.add(total, self.product(), sign)
            if self.peek() not in ("+", "-"):
                return total

    def product(self) -> Value:
        """Factors joined by ``\\cdot``, ``\\times``, ``*`` or by juxtaposition. As latex2sympy
        reads it, an integer right before ``\\frac{p}{q}`` (p, q digits, p > 0) that ends the
        juxtaposition is a mixed number: ``2\\frac{1}{2}`` is 5/2. Other numbers side by side
        (``2(3)``, ``(2)(3)``: 5 there) and a name before ``(`` (``x^{2}(3)``: a call there)
        are outside."""
        start = self.pos
        out, named = self.factor()
        previous, previous_span = out, (start, self.pos)
        before = _const(Fraction(1))  # the product without its last factor
        while True:
            tok = self.peek()
            explicit = tok in _TIMES
            if explicit:
                self.take()
            elif tok is None or not self.starts_atom(tok):
                return out
            if tok == "(" and named:
                raise Outside("a name before a parenthesis")
            start = self.pos
            factor, named = self.factor()
            span = (start, self.pos)
            if not explicit and self.mixed(previous_span, span):
                factor = self.add(previous, factor)
                out = self.mul(before, factor)
                previous, previous_span = factor, (previous_span[0], self.pos)
                continue
            if not explicit and rational(previous) is not None and rational(factor) is not None:
                raise Outside("juxtaposed numbers")
            before = out
            out, previous, previous_span = self.mul(out, factor), factor, span

    def mixed(self, left: tuple[int, int], right: tuple[int, int]) -> bool:
        """Whether the tokens ``left`` then ``right`` are a mixed number such as 2\\frac{1}{2}."""
        whole = self.tokens[left[0] : left[1]]
        frac = self.tokens[right[0] : right[1]]
        nxt = self.peek()
        return (
            (
                len(whole) == 1
                and whole[0].isdigit()
                or whole[::2] == ["{", "}"]
                and whole[1].isdigit()
            )
            and len(frac) == 7
            and frac[0] == "\\frac"
            and frac[2].isdigit()
            and frac[5].isdigit()
            and int(frac[2]) > 0
            and int(frac[5]) > 0
            and (nxt is None or not (self.starts_atom(nxt) or nxt in ("^", "!", "_")))
        )

    def starts_atom(self, tok: str) -> bool:
        return tok[0] in "0123456789." or _is_letter(tok) or tok in _ATOM_COMMANDS

    def factor(self) -> tuple[Value, bool]:
        """An atom with its factorial and power; and whether the atom is a name."""
        named = _is_letter(self.peek() or "") or self.peek() == _PI
        base = self.atom()
        if self.peek() == "!":
            self.take()
            base = _const(Fraction(self.factorial(base)))
            if self.peek() in ("!", "^"):
                raise Outside("double factorial, or a power of a factorial")
        if self.peek() == "^":
            self.take()
            base = self.power(base, self.exponent())
            if self.peek() in ("^", "!"):
                raise Outside("chained power")
        return base, named

    def exponent(self) -> Value:
        tok = self.peek()
        if tok == "{":
            return self.group("{", "}")
        if tok is None:
            raise Outside("missing exponent")
        nxt = self.peek(1)
        if tok.isdigit() and len(tok) == 1 and not (nxt and (nxt[0].isdigit() or nxt[0] == ".")):
            self.take()
            return _const(Fraction(int(tok)))
        if _is_letter(tok) and tok not in _OUTSIDE_LETTERS:
            self.take()
            return {(1, ((_E if tok == "e" else tok.lower(), 1),)): Fraction(1)}
        raise Outside("brace-less exponent of more than one character")

    def take_digits(self) -> None:
        if not self.take().isdigit():
            raise Outside("subscript")

    def group(self, open_: str, close: str) -> Value:
        self.take(open_)
        out = self.expr()
        self.take(close)
        return out

    def factorial(self, v: Value) -> int:
        q = rational(v)
        if q is None or q.denominator != 1 or not 0 <= q <= MAX_FACTORIAL:
            raise Outside("factorial of something other than a small integer")
        return math.factorial(int(q))

    def small_int(self) -> int:
        q = rational(self.group("{", "}"))
        if q is None or q.denominator != 1 or not 0 <= q <= MAX_FACTORIAL:
            raise Outside("not a small non-negative integer")
        return int(q)

    def atom(self) -> Value:
        tok = self.peek()
        if tok is None:
            raise Outside("unexpected end")
        if tok[0].isdigit() or tok[0] == ".":
            self.take()
            if self.peek() == "_":  # a base subscript, 52_8: latex2sympy reads 52 and so do we
                self.take()
                if self.peek() == "{":
                    self.take()
                    self.take_digits()
                    self.take("}")
                else:
                    self.take_digits()
            if self.peek() is not None and (self.peek()[0].isdigit() or self.peek()[0] == "."):
                raise Outside("number after number")
            return _const(_check(Fraction(tok)))
        if tok == "(":
            return self.group("(", ")")
        if tok == "{":
            return self.group("{", "}")
        if _is_letter(tok):
            if tok in _OUTSIDE_LETTERS or self.peek(1) in ("(", "_"):
                raise Outside("imaginary unit, subscript or function call")
            if tok in "eE" and self.pos and self.tokens[self.pos - 1][-1].isdigit():
                raise Outside("2E+0 is a float literal for latex2sympy")
            self.take()
            return {(1, ((_E if tok == "e" else tok.lower(), 1),)): Fraction(1)}
        if tok == _PI:
            if self.peek(1) == "(":
                raise Outside("a name before a parenthesis")
            self.take()
            return {(1, ((_PI, 1),)): Fraction(1)}
        if tok == "\\frac":
            self.take()
            num = self.group("{", "}")
            return self.mul(num, self.inverse(self.group("{", "}")))
        if tok == "\\sqrt":
            return self.root()
        if tok in _BINOM:
            self.take()
            n, k = self.small_int(), self.small_int()
            return _const(Fraction(math.comb(n, k)))
        if tok == "\\log":
            return self.log()
        raise Outside(f"token {tok!r}")

    def root(self) -> Value:
        self.take("\\sqrt")
        index = 2
        if self.peek() == "[":
            self.take()
            tok = self.take()
            if not (tok.isdigit() and 2 <= int(tok) <= 10):
                raise Outside("root index")
            index = int(tok)
            self.take("]")
        radicand = self.group("{", "}")
        if index == 2:
            return self.sqrt(radicand)
        q = rational(radicand)
        if q is None or q < 0:
            raise Outside("root of a non-rational or negative value")
        num, den = _int_root(q.numerator, index), _int_root(q.denominator, index)
        if num is None or den is None:
            raise Outside("irrational root")
        return _const(Fraction(num, den))

    def log(self) -> Value:
        """``\\log_{b}{x}``, ``\\log_{b}(x)`` or ``\\log_{b}N`` (N digits, then the end or a
        sign), with an exact rational value; anything else is outside."""
        self.take("\\log")
        self.take("_")
        base = rational(self.group("{", "}"))
        tok = self.peek()
        if tok in ("{", "("):
            arg = rational(self.group(tok, "}" if tok == "{" else ")"))
        elif tok is not None and tok.isdigit() and self.peek(1) in (None, "+", "-"):
            arg = Fraction(int(self.take()))
        else:
            raise Outside("logarithm argument")
        if base is None or arg is None or base <= 0 or base == 1 or arg <= 0:
            raise Outside("logarithm of non-numbers")
        k = _log_exact(arg, base)
        if k is None:
            raise Outside("irrational logarithm")
        return _const(k)


def _int_root(n: int, k: int) -> int | None:
    """The integer k-th root of ``n`` when ``n`` is a perfect k-th power, else None."""
    if n.bit_length() > MAX_BITS:
        return None
    r = round(n ** (1 / k)) if n < 2**1000 else None
    if r is None:
        return None
    for c in (r - 1, r, r + 1):
        if c >= 0 and c**k == n:
            return c
    return None


def _log_exact(x: Fraction, b: Fraction) -> Fraction | None:
    """``k = p/q`` (q <= 6) with ``b**k == x``, checked exactly; else None."""
    k = (math.log(x.numerator) - math.log(x.denominator)) / (
        math.log(b.numerator) - math.log(b.denominator)
    )
    bits = max(x.numerator.bit_length(), x.denominator.bit_length(), 1)
    bits_b = max(b.numerator.bit_length(), b.denominator.bit_length())
    for q in range(1, 7):
        p = round(k * q)
        if abs(p) * bits_b > 2 * MAX_BITS or q * bits > 2 * MAX_BITS:
            return None
        if b**p == x**q:
            return Fraction(p, q)
    return None


def rational(v: Value) -> Fraction | None:
    """The rational number ``v`` is, or None if it has letters, ``\\pi`` or a root."""
    if not v:
        return Fraction(0)
    if len(v) == 1 and (1, ()) in v:
        return v[(1, ())]
    return None


def value(text: str) -> Value | None:
    r"""Canonical form of a normalised leaf, or None when it is outside the subset.

    >>> value(r"\sqrt{20}") == value(r"2\sqrt{5}")
    True
    >>> value(r"(x+1)^2") == value("x^2+2x+1"), value(r"\sin x"), value("10^{10^{10}}")
    (True, None, None)
    """
    if not isinstance(text, str) or len(text) > MAX_CHARS:
        return None
    reader = _Reader(text)
    try:
        out = reader.expr()
        if reader.peek() is not None:
            return None
        return out
    except Exception:  # noqa: BLE001 - Outside, or a bound hit inside int/Fraction arithmetic
        return None


def _stage(a: Value, b: Value) -> str:
    keys = set(a) | set(b)
    if all(mono == () for _, mono in keys):
        return "rational" if all(r == 1 for r, _ in keys) else "numeric"
    if all(all(atom in (_PI, _E) for atom, _ in mono) for _, mono in keys):
        return "numeric"
    return "symbolic"


def _atoms(v: Value) -> set:
    return {atom for _, mono in v for atom, _ in mono}


def _infinity(text: str) -> int | None:
    """+1 or -1 for a bare (signed) ``\\infty``, else None."""
    return {"\\infty": 1, "+\\infty": 1, "-\\infty": -1}.get(text)


_ROOT = re.compile(r"-?\\sqrt\[(\d)\]\{(\d+)\}")


def _irrational_root(text: str) -> bool:
    """Whether ``text`` is a lone ``\\sqrt[n]{m}`` whose value is irrational (m not an n-th
    power): such a value equals no rational number."""
    m = _ROOT.fullmatch(text)
    if m is None or len(m.group(2)) > 100 or int(m.group(1)) < 2:
        return False
    return _int_root(int(m.group(2)), int(m.group(1))) is None


def exact_equal(a: str, b: str) -> tuple[bool, str] | None:
    r"""(equal, stage) for two leaves, or None when either is outside the subset.

    >>> exact_equal(r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}")
    (True, 'numeric')
    >>> exact_equal("1.4142135623730951", r"\sqrt{2}")
    (False, 'numeric')
    >>> exact_equal(r"\sqrt[3]{9}", "3"), exact_equal(r"\sqrt[3]{9}", "x")
    ((False, 'numeric'), None)
    >>> exact_equal("a^2-b^2", "(a-b)(a+b)"), exact_equal(r"\sin x", "1")
    ((True, 'symbolic'), None)
    """
    inf_a, inf_b = _infinity(a), _infinity(b)
    if inf_a is not None and inf_b is not None:
        return inf_a == inf_b, "numeric"
    va = value(a) if inf_a is None else None
    vb = value(b) if inf_b is None else None
    if (inf_a is not None and vb is not None) or (inf_b is not None and va is not None):
        return False, "numeric"  # a value of the subset is finite
    if (va is None and vb is not None and rational(vb) is not None and _irrational_root(a)) or (
        vb is None and va is not None and rational(va) is not None and _irrational_root(b)
    ):
        return False, "numeric"
    if va is None or vb is None:
        return None
    if va != vb and {_PI, _E} <= _atoms(va) | _atoms(vb):
        return None  # pi and e are not known to be algebraically independent: no proof
    return va == vb, _stage(va, vb)


def exact_relation(op: str, l1: str, r1: str, l2: str, r2: str) -> tuple[bool, str] | None:
    r"""``l1 op r1`` against ``l2 op r2`` as :func:`~rewards.math.symbolic.relation_equal`
    decides it (equal up to a nonzero constant factor, positive for ``<``/``<=``), or None.

    Decides only when both differences have rational coefficients and no ``\pi``: then any
    constant factor between them is rational, so comparing coefficients is a proof.

    >>> exact_relation("=", "y", "2x+1", "2x-y+1", "0")
    (True, 'symbolic')
    >>> exact_relation("<=", "0", "2x-6", "3", "x"), exact_relation("<", "x", "3", "-x", "-3")
    ((True, 'symbolic'), (False, 'symbolic'))
    >>> exact_relation("=", "b", "9", "a", "2")
    (False, 'symbolic')
    """
    parts = [value(t) for t in (l1, r1, l2, r2)]
    if any(p is None for p in parts):
        return None
    work = _Reader("")
    try:
        d1 = work.add(parts[1], parts[0], -1)
        d2 = work.add(parts[3], parts[2], -1)
    except Outside:
        return None
    if d1 == d2:
        return True, "symbolic"
    if any(r != 1 or any(atom in (_PI, _E) for atom, _ in mono) for r, mono in (*d1, *d2)):
        return None
    if not d1 or not d2 or d1.keys() != d2.keys():
        return False, "symbolic"
    ratios = {d1[k] / d2[k] for k in d1}
    if len(ratios) != 1:
        return False, "symbolic"
    return op in ("=", "!=") or ratios.pop() > 0, "symbolic"
