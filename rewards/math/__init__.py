r"""A sympy math grader: extract the final answer, normalise it, compare in stages.

Public API:

* :func:`grade` -> bool, :func:`grade_batch` -> list of :class:`Verdict`
  ``(correct, extracted, reason)``, :func:`extract_answer`, :func:`main` (the
  ``r1kit grade`` CLI, also ``python -m rewards.math``).
* :class:`Options`: float rounding precision, strict variables, set against
  inequality (math-verify's options of those kinds; the defaults and why are
  documented on the class).

Guarantees: no call raises on string input or hangs: each pair is decided
within ``timeout_s`` (plus the one-time start of a helper process), without
signals, from any thread or worker process. Cheap stages (normalised string,
exact rationals, structure, exact arithmetic on radicals, ``\pi`` and
polynomials) run in-process; only what they cannot read goes to the sympy
stage, in a persistent helper process that is killed and replaced when it
overruns.
Known failures of other graders are fixed: ``0.5`` equals ``\frac{1}{2}``;
``\frac{1}{2^{99}}`` does not equal ``\frac{1}{2^{98}}``.

Does not: import torch, score format, or give partial credit. Module
docstrings of :mod:`.extract`, :mod:`.normalize`, :mod:`.structure`,
:mod:`.equiv`, :mod:`.exact`, :mod:`.symbolic` and :mod:`.bounded` state each
rule.

>>> grade(r"Thus $\boxed{\dfrac{1}{2}}$.", "0.5")
True
"""

from rewards.math.bounded import warm_up
from rewards.math.cli import main
from rewards.math.equiv import Options
from rewards.math.extract import extract_answer
from rewards.math.grade import Verdict, grade, grade_batch, grade_one

__all__ = ["Options", "Verdict", "extract_answer", "grade", "grade_batch", "grade_one", "main",
           "warm_up"]
