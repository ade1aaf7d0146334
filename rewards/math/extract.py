"""Find the final answer in a model completion or a reference solution.

Guarantees: :func:`extract_answer` never raises, runs in time linear in the
length of its input (plain scans and non-backtracking regular expressions),
and returns the answer text untouched (normalisation happens later, in
:mod:`rewards.math.normalize`).

Where it looks, first match wins:

1. the last ``<answer>...</answer>`` block (R1 format); a ``\\boxed`` inside
   it is preferred to the whole block;
2. the last ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces, and the
   brace-less form ``\\boxed 5``);
3. the last answer phrase: "(final) answer is", "Answer:", a "### Answer" or
   "**Final Answer**" heading (Minerva's "Final Answer: The final answer is
   $X$. I hope it is correct." included); what follows it is the first math
   span right after the phrase (``$...$``, ``$$...$$``, ``\\[...\\]``,
   ``\\(...\\)``, even on the next line), else the rest of that line (or of
   the next non-empty one);
4. a GSM8K ``#### N`` line;
5. the whole text when it is a bare answer: a single line of at most
   :data:`BARE_MAX_CHARS` characters without a (broken) ``\\boxed`` (so
   ``grade("0.5", ...)`` works);
6. the last number in the text, only with ``last_number=True`` (thousands
   separators kept: ``2,500`` is one number, ``1,2`` is two).

:func:`boxed_answers` lists the last few distinct boxes, for
:mod:`rewards.math.grade`, which reads several boxes as several answers when
the gold has that many.

The last-number fallback is off by default: a completion that never marks its
answer gets no reward, rather than being graded on whatever number it happened
to write last (which teaches a policy to stop marking answers and rewards
intermediate results by accident). Turn it on for unformatted reference data.

Does not: judge whether a completion is well formed (e.g. several different
boxed answers: the last one is extracted), nor repair truncated LaTeX (an unclosed
``\\boxed{`` yields no answer from that marker).
"""

from __future__ import annotations

import re

BARE_MAX_CHARS = 100  # longer or multi-line text is prose, not a bare answer
BOXED_MAX_CHARS = 4000  # a brace group longer than this is not an answer: stop scanning
BOXED_TRIES = 4  # unclosed markers tried from the end, so 100 kB of "\\boxed{" stays linear

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_PHRASE = re.compile(
    r"\banswer\s+is\b|\banswer\s*:|^[ \t]*(?:#+|\*\*)[ \t]*(?:final[ \t]+)?answer\b",
    re.IGNORECASE | re.MULTILINE,
)
_SPAN_CLOSE = {"$$": "$$", "$": "$", "\\[": "\\]", "\\(": "\\)"}
SPAN_MAX_CHARS = 2000  # a math span longer than this is not an answer
_GSM = re.compile(r"^####\s*([^\n]+)", re.MULTILINE)
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")


def braced(text: str, start: int) -> tuple[str, int] | None:
    """Return the content of the brace group opening at ``text[start]`` and the end index."""
    depth, i = 0, start
    stop = min(len(text), start + BOXED_MAX_CHARS)
    while i < stop:
        c = text[i]
        if c == "\\":  # "\{", "\}" and "\\" are escapes, not braces
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed``/``\fbox`` in ``text``, or None.

    >>> last_boxed(r"so $\boxed{\frac{1}{2}}$ and then \boxed{3}.")
    '3'
    >>> last_boxed(r"\boxed 5$")
    '5'
    >>> last_boxed(r"\boxed{unclosed") is None
    True
    """
    for m in reversed(list(_BOX_CMD.finditer(text))[-BOXED_TRIES:]):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            found = braced(text, i)
            if found is not None:
                return found[0].strip()
        elif i > m.end():  # "\boxed 5": one token up to space, "$" or end
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                return token.group(0).rstrip(".,;")
    return None


def boxed_answers(text: str, most: int = 8) -> list[str]:
    r"""Distinct contents of the last ``\boxed``/``\fbox`` groups, last first (at most ``most``).

    >>> boxed_answers(r"$\boxed{5}$ and $\boxed{-1}$, again $\boxed{-1}$")
    ['-1', '5']
    """
    out: list[str] = []
    for m in reversed(list(_BOX_CMD.finditer(text))[-2 * most :]):
        i = m.end()
        if i < len(text) and text[i] == "{":
            found = braced(text, i)
            if found is not None and found[0].strip() not in out:
                out.append(found[0].strip())
                if len(out) == most:
                    break
    return out


def _answer_phrase(text: str) -> str | None:
    found = None
    for found in _PHRASE.finditer(text):
        pass
    if found is None:
        return None
    rest = text[found.end() :].lstrip(" \t*:\n")
    for opener in ("$$", "$", "\\[", "\\("):
        if rest.startswith(opener):
            end = rest.find(_SPAN_CLOSE[opener], len(opener), SPAN_MAX_CHARS)
            if end > 0:
                return rest[len(opener) : end].strip() or None
            break
    ans = rest.split("\n", 1)[0].strip()
    ans = re.sub(r"^\$+|\$+\.?$", "", ans).strip().rstrip(".")
    return None if not ans or _BOX_CMD.search(ans) else ans  # a broken \boxed is no answer


def extract_answer(text: str, *, last_number: bool = False) -> str | None:
    r"""Return the final answer marked in ``text``, or None when there is none.

    >>> extract_answer(r"Thus $x = \boxed{\frac{\sqrt{3}}{2}}$.")
    '\\frac{\\sqrt{3}}{2}'
    >>> extract_answer("<think>2+2</think><answer>4</answer>")
    '4'
    >>> extract_answer("So the final answer is 12.")
    '12'
    >>> extract_answer("Final Answer: The final answer is $x^2$. I hope it is correct.")
    'x^2'
    >>> extract_answer("Answer:\n\\[ \\frac{7}{2} \\]")
    '\\frac{7}{2}'
    >>> extract_answer("She pays 3 * 4 = 12 dollars.\n#### 12")
    '12'
    >>> extract_answer("0.5")
    '0.5'
    >>> extract_answer("I computed 7 and then 9, done.\nNothing marked here.") is None
    True
    >>> extract_answer("I computed 7 and then 9, done.\nNothing marked.", last_number=True)
    '9'
    """
    if not isinstance(text, str):
        return None
    tags = _ANSWER_TAG.findall(text)
    if tags:
        inner = tags[-1]
        return last_boxed(inner) or inner.strip() or None
    for finder in (last_boxed, _answer_phrase):
        ans = finder(text)
        if ans:
            return ans
    gsm = _GSM.findall(text)
    if gsm:
        return gsm[-1].strip()
    stripped = text.strip()
    bare = len(stripped) <= BARE_MAX_CHARS and "\n" not in stripped
    if stripped and bare and not _BOX_CMD.search(stripped):  # a broken \boxed is no answer
        return stripped
    if last_number:
        nums = _NUMBER.findall(text)
        if nums:
            return nums[-1].rstrip(",")
    return None
