r"""Normalise answer text so that equal answers written differently compare equal.

Guarantees: every function here is pure, never raises on a ``str`` input and
runs in time linear in its input (regular expressions without nested
quantifiers, brace scans). :func:`normalize` maps surface variants of the same
answer to one string: ``$``, ``\left``/``\right``, spacing commands
(``\!``, ``\,``, ``\;``, ``~``), ``\dfrac``/``\tfrac``/``\cfrac`` -> ``\frac``,
``\frac12`` and ``\frac1{2}`` -> ``\frac{1}{2}``, ``\sqrt2`` -> ``\sqrt{2}``, ``\text{}``/``\mbox{}``
unwrapped, unit words dropped, degrees (``^\circ``), percent and dollar signs
dropped, thousands separators (``1,000``, ``1{,}000``, ``1,\\!000``) removed (a
comma followed by a space separates answers: ``32, 349`` is the list of two,
never 32349, so a list cannot pass for the number nor the number for the list; a
number written ``32, 349`` is missed, the error on the safe side), trailing
punctuation removed (not ``!``: ``6!`` is a factorial), ``\text{ or }`` and
``\text{ and }`` between answers made a comma (``y=1 \text{ or } y=6`` is the
list ``y=1,y=6``), ``\ne`` and ``!=`` -> ``\neq``, ``\log_3 27`` ->
``\log_{3}27`` (the space is the only thing that ends the base),
``\begin{array}{cc}`` -> ``\begin{matrix}``.

Does not: decide equality beyond the string (see :mod:`rewards.math.equiv`),
nor keep the meaning of units or percent: ``50\%`` normalises to ``50`` (not
``0.5``), ``30^\circ`` to ``30`` (not ``\pi/6``), ``5\text{ cm}`` to ``5``.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_PARSE_CHARS = 600  # longer answers are refused before sympy sees them
MAX_BRACE_DEPTH = 30  # deeper nesting is refused before sympy sees it
MAX_EXPONENT = 10_000  # integer exponents above this, on a number, are refused

UNITS = (
    "units?|square units?|sq units?|cm|centimeters?|m|meters?|km|kilometers?|mm|inch(?:es)?|"
    "feet|foot|ft|yards?|miles?|mph|seconds?|sec|s|minutes?|min|hours?|hrs?|days?|weeks?|"
    "months?|years?|dollars?|cents?|degrees?|radians?|pounds?|lbs?|ounces?|oz|grams?|g|kg|"
    "liters?|ml|gallons?|points?|people|students?|ways?|percent(?:age)?|pct|cups?|pages?|boxes|"
    "marbles"
)
_UNIT_TEXT = re.compile(
    r"\\(?:text|textnormal|mbox|mathrm|textbf|textrm)\s*\{\s*(?:"
    + UNITS
    + r")\s*\}(?:\^\{?[23]\}?)?$"
)
_UNIT_WORD = re.compile(r"(?<=[\d}\s])\s*(?:" + UNITS + r")(?:\^\{?[23]\}?)?$")
_TEXT_CMD = re.compile(
    r"\\(?:text|textnormal|mbox|mathrm|textbf|textrm|textit|mathbf|operatorname)\s*\{([^{}]*)\}"
)
_DROP = re.compile(
    r"(?<!\\)\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big|displaystyle|textstyle"
    r"|!|,|;|:|quad|qquad|\ )"
    r"(?![a-zA-Z])|~|\$|\\\$"
)
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![a-zA-Z])|\\circ(?![a-zA-Z])")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_HALF = re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d)")
_FRAC_DIGIT = re.compile(r"\\frac\s*(\d)\s*(?=\{)")  # \frac4{4}
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d|[a-zA-Z](?![a-zA-Z]))")
_ARRAY = re.compile(r"\\begin\s*\{array\}\s*\{[lcr| ]*\}")  # a matrix written as an array
_THOUSANDS = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")  # 0,111 is not 111
_SPACE_KEEP = re.compile(r"(\\[a-zA-Z]+) (?=[a-zA-Z])")
_CHOICE = re.compile(r"^\(([A-E])\)$")
_CONNECTIVE = re.compile(
    r"\\(?:text|mbox|mathrm|textrm)\s*\{\s*(?:or|and)\s*\}|(?<=[\s$)])(?:or|and)(?=[\s$(])"
)
_LOG_BASE = re.compile(r"\\log_\s*([0-9a-zA-Z])\s+(?=[0-9a-zA-Z(\\{])")
_NOT_EQUAL = re.compile(r"\\ne(?![a-zA-Z])|(?<=[a-zA-Z\s])!=")


def _unwrap_text(s: str) -> str:
    s = _UNIT_TEXT.sub("", s).strip()
    for _ in range(3):  # \text{\text{x}} unwraps in a few rounds
        s, n = _TEXT_CMD.subn(r"\1", s)
        if not n:
            break
    return s


def normalize(ans: str) -> str:
    r"""Return the canonical string form of an answer.

    >>> normalize(r"$\dfrac{1}{2}$.")
    '\\frac{1}{2}'
    >>> normalize(r"\left( 3, \frac{\pi}{2} \right)")
    '(3,\\frac{\\pi}{2})'
    >>> normalize(r"1{,}000\text{ dollars}")
    '1000'
    >>> normalize(r"30^\circ") == normalize("30")
    True
    >>> normalize(r"\frac12") == normalize(r"\frac{1}{2}")
    True
    >>> normalize(r"y = 1 \text{ or } y = 6")
    'y=1,y=6'
    >>> normalize(r"\log_3 27"), normalize("6!"), normalize("x != 2")
    ('\\log_{3}27', '6!', 'x\\neq2')
    >>> normalize(r"\pi r^2") == normalize(r"\pir^2")
    False
    """
    s = ans.strip().replace("\u2212", "-").replace("\\%", "").replace("%", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    s = s.replace("\\cfrac", "\\frac")
    s = re.sub(r",\\!\s*", ",", s)  # 12,\! 000: a thousands separator, not "12, 000"
    s = s.replace("€", "").replace("£", "").replace("²", "^2").replace("³", "^3")
    s = re.sub(r",(?:\s*,)+", ",", _CONNECTIVE.sub(",", s))  # "19, 46, and 82": one comma
    s = _DROP.sub(" ", s)
    s = _DEGREES.sub("", s)
    s = _LOG_BASE.sub(r"\\log_{\1}", s)
    s = _NOT_EQUAL.sub(r"\\neq ", s)
    s = _unwrap_text(s)
    s = _UNIT_WORD.sub("", s.strip())
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF.sub(r"\\frac\1{\2}", s)
    s = _FRAC_DIGIT.sub(r"\\frac{\1}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    s = _ARRAY.sub(r"\\begin{matrix}", s).replace("\\end{array}", "\\end{matrix}")
    s = s.replace("\\le ", "\\leq ").replace("\\ge ", "\\geq ")
    s = re.sub(r"\\(le|ge)(?![a-zA-Z])", r"\\\1q", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".,;:").strip()
    if _THOUSANDS.fullmatch(s):  # before spaces go: "32, 349" is a list of two, not 32349
        s = s.replace(",", "")
    s = _SPACE_KEEP.sub("\\1\x00", s).replace(" ", "").replace("\x00", " ")
    choice = _CHOICE.match(s)
    return choice.group(1) if choice else s


_INT = r"[+-]?\d+"
_RATIONAL = re.compile(
    r"([+-]?)(?:(\d+)|(\d*\.\d+|\d+\.)|(\d+)/(\d+)|\\frac\{([+-]?\d+)\}\{([+-]?\d+)\})"
)


def parse_rational(s: str) -> Fraction | None:
    r"""Exact value of a normalised integer, decimal or fraction literal, else None.

    No floats are involved: ``0.1`` is exactly ``1/10``.

    >>> parse_rational("0.5") == parse_rational(r"\frac{1}{2}") == Fraction(1, 2)
    True
    >>> parse_rational(r"-\frac{3}{-6}")
    Fraction(1, 2)
    >>> parse_rational("x") is None
    True
    """
    m = _RATIONAL.fullmatch(s)
    if m is None or len(s) > 200:
        return None
    sign, integer, dec, num, den, fnum, fden = m.groups()
    try:
        if integer is not None:
            value = Fraction(int(integer))
        elif dec is not None:
            value = Fraction(dec)
        elif num is not None:
            value = Fraction(int(num), int(den))
        else:
            value = Fraction(int(fnum), int(fden))
    except ZeroDivisionError:
        return None
    return -value if sign == "-" else value


_TOWER3 = re.compile(r"\d\s*\^\s*\{?\s*(\d+)\s*\^\s*\{?\s*(\d+)")  # a^{b^{c}} on numbers
_POWER = re.compile(r"(?:\^|\*\*)\s*\{?\s*\(?\s*(\d+)")
_FACTORIAL = re.compile(r"(\d{4,})\s*!")


def _tower(s: str) -> bool:
    """A numeric power tower whose value has over ~10**4 digits, or is 4 high."""
    for m in _TOWER3.finditer(s):
        b, c = int(m.group(1)), int(m.group(2)[:6])
        if b > 1 and c * math.log10(b) > 4 or re.match(r"\s*\}?\s*\^", s[m.end() :]):
            return True
    return False


def refuse_reason(s: str) -> str | None:
    r"""Why ``s`` is too risky to hand to the parser, or None when it is fine.

    Catches input that makes sympy hang or eat memory: overlong text, deep
    nesting, exponent towers (``9^{9^{9}}``), huge numeric powers and factorials.

    >>> refuse_reason("9^{9^{9^{9}}}")
    'guard: exponent tower'
    >>> refuse_reason("2^{1000000}")
    'guard: huge power'
    >>> refuse_reason(r"\frac{1}{2^{99}}") is None
    True
    >>> refuse_reason("x^2 + 2^{2^{10}}") is None
    True
    """
    if len(s) > MAX_PARSE_CHARS:
        return f"guard: answer longer than {MAX_PARSE_CHARS} chars"
    depth = deepest = 0
    for c in s:
        depth += (c in "{([") - (c in "})]")
        deepest = max(deepest, depth)
    if deepest > MAX_BRACE_DEPTH:
        return f"guard: nesting deeper than {MAX_BRACE_DEPTH}"
    if _tower(s):
        return "guard: exponent tower"
    for m in _POWER.finditer(s):
        if len(m.group(1)) > 6 or int(m.group(1)) > MAX_EXPONENT:
            return "guard: huge power"
    if _FACTORIAL.search(s):
        return "guard: huge factorial"
    return None
