"""Find the final answer in a model completion or a reference solution.

Guarantees: :func:`extract_answer` never raises, runs in time linear in the
length of its input (plain scans and non-backtracking regular expressions),
and returns the answer text untouched (normalisation happens later, in
:mod:`rewards.math.normalize`).

Doubled backslashes (``\\\\boxed{\\\\frac12}``, text escaped twice) are halved first
when every command in the text has two, the JSON escapes ``\\n``, ``\\t`` and ``\\"``
of such text read as what they stand for (:func:`undouble`).

Where it looks, first match wins:

1. the last ``<answer>...</answer>`` block (R1 format); a ``\\boxed`` inside
   it is preferred to the whole block;
2. the last ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces, and the
   brace-less form ``\\boxed 5``), unless a "final answer" phrase comes after
   it (Minerva's "Final Answer: The final answer is $X$" after intermediate
   boxes: the phrase wins);
3. the last answer phrase: "(final) answer is", "Answer:", "Answer" right
   before a math span, a "### Answer" or "**Final Answer**" heading
   (Minerva's "Final Answer: The final answer is $X$. I hope it is correct."
   included); what follows it is the first math span right after the phrase
   (``$...$``, ``$$...$$``, ``\\[...\\]``, ``\\(...\\)``, even on the next
   line; an inline ``$`` or ``\\(`` span never runs across lines), else the
   rest of that line up to its first sentence end; when that is prose ("The
   volume of $V$ is 120"), the text after its last "is" (its last math span,
   or itself when it is no prose), else its last number, else its last math span;
4. a GSM8K ``#### N`` line;
5. the whole text when it is a bare answer: a single line of at most
   :data:`BARE_MAX_CHARS` characters outside its ``$...$`` spans (a matrix is
   long, the words around it are not; how it errs: a one-line chain of
   formulas is read as an answer, from its last sentence, as a short line
   is) without a (broken) ``\\boxed`` (so
   ``grade("0.5", ...)`` works), read as in 3 when it is prose ("We find that
   $x < 3$."), but from its last sentence (the first may be an intermediate
   result: "The sum is 5. Doubled, the result is 10.") and without a last
   number unless ``last_number`` is on;
6. the last number in the text (``2/3``, ``-1.5``; thousands separators kept:
   ``2,500`` is one number, ``1,2`` is two), only with ``last_number=True``
   and only when the text has no answer marker at all (a broken ``\\boxed``
   or an answer phrase with nothing readable after it is no answer, not an
   invitation to guess). :func:`rewards.math.grade.grade_one` turns it on
   when the gold is a single number (see there).

:func:`boxed_answers` lists the last few distinct boxes, for
:mod:`rewards.math.grade`, which reads several boxes as several answers when
the gold has that many.

Why the fallback is off in :func:`extract_answer` by default: a completion that
never marks its answer is graded on whatever number it happened to write last,
which can reward an intermediate result by accident; the grader allows it only
where a number is the whole answer.

Does not: judge whether a completion is well formed (e.g. several different
boxed answers: the last one is extracted), nor repair truncated LaTeX (an unclosed
``\\boxed{`` yields no answer from that marker).
"""

from __future__ import annotations

import re

BARE_MAX_CHARS = 100  # longer (outside $...$) or multi-line text is prose, not a bare answer
BOXED_MAX_CHARS = 4000  # a brace group longer than this is not an answer: stop scanning
BOXED_TRIES = 4  # unclosed markers tried from the end, so 100 kB of "\\boxed{" stays linear

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_PHRASE = re.compile(
    r"\banswer\s+is\b|\banswer\s*:|^[ \t]*(?:#+|\*\*)[ \t]*(?:final[ \t]+)?answer\b"
    r"|\banswer(?=[ \t]*\n?[ \t]*(?:\$|\\\[|\\\())",  # "Answer $9$", "Answer \[ 9 \]"
    re.IGNORECASE | re.MULTILINE,
)
_FINAL = re.compile(r"\bfinal\s+answer\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\bI hope it is correct|<\|")
_WORDS = re.compile(r"[a-zA-Z]{3,}[ \t,]+[a-zA-Z]{2,}")  # two words in a row: prose
_IS = re.compile(r"\b(?:is|are|equals|was)\s+")
_CONNECTIVES = re.compile(r"[\s,;]*(?:(?:and|or)[\s,;]+)*")
BOX_GAP_WORDS = 3  # more words than this between two boxes of a gold: not one list
_DOUBLED = re.compile(r"(?<!\\)\\\\[a-zA-Z]")
_SINGLE = re.compile(r"(?<!\\)\\[a-zA-Z]")
_JSON_ESCAPE = re.compile(r'\\([\\nt"])')  # one escape of a JSON string: \\, \n, \t, \"
_JSON_CHARS = {"\\": "\\", "n": "\n", "t": "\t", '"': '"'}
_INLINE = re.compile(r"(?<!\\)\$([^$]+?)(?<!\\)\$")
_SPAN_CLOSE = {"$$": "$$", "$": "$", "\\[": "\\]", "\\(": "\\)"}
SPAN_MAX_CHARS = 2000  # a math span longer than this is not an answer
_GSM = re.compile(r"^####\s*([^\n]+)", re.MULTILINE)
_NUMBER = re.compile(
    r"-?\d+/\d+(?!\d|[.,]\d)|-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+"
)


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


def undouble(text: str) -> str:
    r"""Halve doubled backslashes when every command in ``text`` has two (``\\frac`` as JSON
    escaped twice writes it); text with any single-backslash command is left alone, except
    the JSON escapes of a newline, a tab and a quote (``\n``, ``\t``, ``\"``), which text
    escaped that way also holds and which become what they stand for. How it errs: a text with
    doubled commands and a real single ``\nu`` or ``\theta`` reads them as a newline or a
    tab; a LaTeX line break followed by a command name (``\\frac`` meaning a new line, then
    the word "frac") is not LaTeX anyone writes.

    >>> undouble(r"\\boxed{\\frac{1}{2}}"), undouble(r"\frac{1}{2} \\ 3")
    ('\\boxed{\\frac{1}{2}}', '\\frac{1}{2} \\\\ 3')
    >>> undouble(r"so\n\nthe answer is $\\boxed{\\pi}$ (\"polar\")")
    'so\n\nthe answer is $\\boxed{\\pi}$ ("polar")'
    """
    if not _DOUBLED.search(text):
        return text
    if not _SINGLE.search(text):
        return text.replace("\\\\", "\\")
    if all(m.group(0) in ("\\n", "\\t") for m in _SINGLE.finditer(text)):
        return _JSON_ESCAPE.sub(lambda m: _JSON_CHARS[m.group(1)], text)
    return text


def _span_end(rest: str, opener: str) -> int:
    """Index of the closer of the math span opening ``rest`` (an escaped ``\\$`` is no closer)."""
    close, i = _SPAN_CLOSE[opener], len(opener)
    while True:
        end = rest.find(close, i, SPAN_MAX_CHARS)
        if end > 0 and opener in ("$", "\\(") and "\n" in rest[:end]:
            return -1  # inline math does not run across lines
        if end <= 0 or close != "$" or rest[end - 1] != "\\":
            return end
        i = end + 1


def _from_sentence(line: str, *, whole: bool = False, numbers: bool = True) -> str:
    """The answer in one line of prose after an answer phrase (see rule 3 of the module): its
    first sentence. ``whole``: the line is the whole completion, no phrase marks the answer
    (rule 5), so its last sentence is read (what it ends on; the first sentence of "The sum is
    5. Doubled, the result is 10." is an intermediate result), and a last number is taken only
    with ``numbers`` (the last-number fallback's switch)."""
    parts = [p.strip() for p in _SENTENCE_END.split(line) if p and p.strip()]
    line = (parts[-1] if whole else parts[0]) if parts else line.strip()
    if _CONNECTIVES.fullmatch(_INLINE.sub(" ", line)):  # "$1$ and $2$": a list, not prose
        return _INLINE.sub(r"\1", line)
    if not _WORDS.search(_INLINE.sub(" ", re.sub(r"\\text\{[^{}]*\}", " ", line))):
        return line  # not prose: the line is the answer
    tail = _IS.split(line)[-1]  # "the volume of $V$ is 120" -> "120"
    spans = _INLINE.findall(tail)
    if spans:
        return spans[-1]
    if not _WORDS.search(tail):
        return tail
    nums = _NUMBER.findall(tail)
    if nums and numbers:
        return nums[-1].rstrip(",")
    spans = _INLINE.findall(line)  # "Therefore $x > 5$ is the solution."
    return spans[-1] if spans else line


def box_run(text: str) -> list[str]:
    r"""Contents of the last run of boxes in ``text`` that stand close together (at most
    :data:`BOX_GAP_WORDS` words between neighbours), in order, repeats dropped.

    >>> box_run(r"$\boxed{1}$ and $\boxed{2}$"), box_run(r"\boxed{1} no no no no \boxed{2}")
    (['1', '2'], ['2'])
    """
    run: list[str] = []
    end = -1
    for m in list(_BOX_CMD.finditer(text))[-4 * BOXED_TRIES :]:
        i = m.end()
        found = braced(text, i) if i < len(text) and text[i] == "{" else None
        if found is None:
            continue
        gap = text[end : m.start()] if end >= 0 else ""
        if end < 0 or len(re.findall(r"[a-zA-Z]+", gap)) > BOX_GAP_WORDS:
            run = []
        if found[0].strip() not in run:
            run.append(found[0].strip())
        end = found[1]
    return run


def _answer_phrase(text: str) -> tuple[str | None, int, bool]:
    """(answer after the last answer phrase or None, where the phrase starts, is it "final")."""
    found = None
    for found in _PHRASE.finditer(text):
        pass
    if found is None:
        return None, -1, False
    final = bool(_FINAL.search(text, max(0, found.start() - 6), found.end()))
    rest = text[found.end() :].lstrip(" \t*:\n")
    for opener in ("$$", "$", "\\[", "\\("):
        if rest.startswith(opener):
            end = _span_end(rest, opener)
            if end > 0:
                return rest[len(opener) : end].strip() or None, found.start(), final
            break
    ans = _from_sentence(rest.split("\n", 1)[0].strip())
    ans = re.sub(r"^\$+|\$+\.?$", "", ans).strip().rstrip(".")
    if not ans or _BOX_CMD.search(ans):  # a broken \boxed is no answer
        return None, found.start(), final
    return ans, found.start(), final


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
    text = undouble(text)
    tags = _ANSWER_TAG.findall(text)
    if tags:
        inner = tags[-1]
        return last_boxed(inner) or inner.strip() or None
    boxed = last_boxed(text)
    phrase, at, final = _answer_phrase(text)
    if phrase and final and boxed and at > text.rfind("\\boxed"):
        return phrase  # "Final Answer: The final answer is X" after intermediate boxes
    if boxed or phrase:
        return boxed or phrase
    gsm = _GSM.findall(text)
    if gsm:
        return gsm[-1].strip()
    stripped = text.strip()
    bare = len(_INLINE.sub("$$", stripped)) <= BARE_MAX_CHARS and "\n" not in stripped
    if stripped and bare and not _BOX_CMD.search(stripped):  # a broken \boxed is no answer
        return _from_sentence(stripped, whole=True, numbers=bool(last_number))
    if last_number and at < 0 and not _BOX_CMD.search(text):  # a broken marker is no answer
        nums = _NUMBER.findall(text)
        if nums:
            return nums[-1].rstrip(",")
    return None
