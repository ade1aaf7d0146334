"""Format rewards for R1-style completions: one think block, then one final answer.

Two rewards, both plain functions ``fn(completions, **row) -> list[float]``:

- ``format_reward``: strict, 1.0 or 0.0. The completion holds exactly one
  ``<think>...</think>`` block with non-blank reasoning, then the answer, either as one
  ``<answer>...</answer>`` right after ``</think>`` or as text ending in ``\\boxed{...}``,
  and nothing after the answer but whitespace, closing math delimiters (``$``, ``\\]``,
  ``\\)``), a full stop, or an end-of-sequence string (``EOS_STRINGS``).
- ``tag_format_reward``: partial credit in [-1, 1] for the four tags. Each expected tag
  earns credit only when it occurs exactly once; a repeated tag costs as much as it would
  have earned, and a further share is earned only when every tag is present once and in
  order. Repeating tags can therefore only lower the score.

Most R1 prompts (and chat templates of distilled reasoning models) end in ``<think>``, so
the completion starts inside the think block. Both rewards take ``prompt_opens_think``
(default True) to say so: then the completion must not contain ``<think>`` at all (a
second one would open a nested block); with False it must start, after optional
whitespace, with ``<think>``.

What this module does not do: judge whether the answer is right (see ``rewards.math``),
or look inside the reasoning. Tags are matched literally and case-sensitively.
"""

from __future__ import annotations

from rewards.math.extract import braced

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
EOS_STRINGS = ("<|im_end|>", "<|endoftext|>", "</s>", "<｜end▁of▁sentence｜>", "<|eot_id|>")
_TRAILING_MATH = ("$", "\\]", "\\)", ".")
_ANSWER_STYLES = ("either", "tag", "boxed")


def _strip_trailer(text: str, allowed: tuple[str, ...]) -> str:
    """Remove any mix of whitespace and ``allowed`` strings from the end of ``text``."""
    text = text.rstrip()
    changed = True
    while changed and text:
        changed = False
        for suffix in allowed:
            if text.endswith(suffix):
                text = text[: -len(suffix)].rstrip()
                changed = True
    return text


def _last_boxed_end(text: str) -> tuple[int, str] | None:
    """End offset and content of the last ``\\boxed{...}`` in ``text`` (balanced braces).

    >>> _last_boxed_end(r"so \\boxed{\\frac{1}{2}}.")
    (22, '\\\\frac{1}{2}')
    >>> _last_boxed_end(r"\\boxed{1") is None
    True
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    found = braced(text, start + len("\\boxed"))
    return None if found is None else (found[1], found[0])


def _answer_ok(after_think: str, answer_style: str) -> bool:
    """Whether the text after ``</think>`` is one well-formed final answer and no more."""
    body = _strip_trailer(after_think, EOS_STRINGS)
    if answer_style in ("either", "tag") and ANSWER_OPEN in body:
        head, _, rest = body.partition(ANSWER_OPEN)
        inner, close, tail = rest.partition(ANSWER_CLOSE)
        return (
            head.strip() == ""
            and close == ANSWER_CLOSE
            and ANSWER_OPEN not in inner
            and ANSWER_CLOSE not in tail
            and inner.strip() != ""
            and tail.strip() == ""
        )
    if answer_style in ("either", "boxed") and ANSWER_CLOSE not in body:
        boxed = _last_boxed_end(body)
        if boxed is None:
            return False
        end, content = boxed
        return content.strip() != "" and _strip_trailer(body[end:], _TRAILING_MATH) == ""
    return False


def is_strict_format(
    completion: str, *, prompt_opens_think: bool = True, answer_style: str = "either"
) -> bool:
    """Whether ``completion`` follows the strict R1 format (see the module docstring).

    >>> is_strict_format("Let me add.</think><answer>4</answer>")
    True
    >>> is_strict_format("<think>add</think>\\n<answer>4</answer>", prompt_opens_think=False)
    True
    >>> is_strict_format("2+2=4.</think>\\nSo the answer is $\\\\boxed{4}$.<|im_end|>")
    True
    >>> is_strict_format("2+2=4.</think><answer>4</answer> and more")
    False
    """
    if answer_style not in _ANSWER_STYLES:
        raise ValueError(f"answer_style must be one of {_ANSWER_STYLES}, got {answer_style!r}")
    text = completion
    if not prompt_opens_think:
        text = text.lstrip()
        if not text.startswith(THINK_OPEN):
            return False
        text = text[len(THINK_OPEN) :]
    if THINK_OPEN in text or text.count(THINK_CLOSE) != 1:
        return False
    thinking, _, after = text.partition(THINK_CLOSE)
    if thinking.strip() == "" or ANSWER_OPEN in thinking or ANSWER_CLOSE in thinking:
        return False
    return _answer_ok(after, answer_style)


def format_reward(
    completions: list[str],
    *,
    prompt_opens_think: bool = True,
    answer_style: str = "either",
    **row: list,
) -> list[float]:
    """1.0 for each completion in strict R1 format, else 0.0.

    ``answer_style`` is ``"either"``, ``"tag"`` (``<answer>`` only) or ``"boxed"``.

    >>> format_reward(["ok</think><answer>4</answer>", "<think>ok</think><answer>4</answer>"])
    [1.0, 0.0]
    >>> format_reward(["<think>ok</think> \\\\boxed{4}"], prompt_opens_think=False)
    [1.0]
    >>> format_reward(["ok</think> \\\\boxed{4}"], answer_style="tag")
    [0.0]
    """
    return [
        float(is_strict_format(c, prompt_opens_think=prompt_opens_think, answer_style=answer_style))
        for c in completions
    ]


def tag_score(completion: str, *, prompt_opens_think: bool = True) -> float:
    """Partial credit in [-1, 1] for the think/answer tags of one completion.

    With k expected tags, each tag present exactly once earns 1/(k+1), each tag present
    more than once costs 1/(k+1), and all k present once and in order earn a last 1/(k+1).
    When the prompt opens the think block, k = 3 and any ``<think>`` costs 1/(k+1).

    >>> tag_score("a</think><answer>4</answer>")
    1.0
    >>> tag_score("a</think><answer>4</answer></answer></answer>")
    0.25
    >>> tag_score("<answer>4</answer></think>")
    0.75
    >>> tag_score("<think>a</think><answer>4</answer>", prompt_opens_think=False)
    1.0
    """
    expected = [THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE]
    if not prompt_opens_think:
        expected.insert(0, THINK_OPEN)
    share = 1.0 / (len(expected) + 1)
    counts = [completion.count(tag) for tag in expected]
    units = sum(1 if n == 1 else (-1 if n > 1 else 0) for n in counts)
    if prompt_opens_think and THINK_OPEN in completion:
        units -= 1
    positions = [completion.find(tag) for tag in expected]
    if all(n == 1 for n in counts) and positions == sorted(positions):
        units += 1
    return units * share


def tag_format_reward(
    completions: list[str], *, prompt_opens_think: bool = True, **row: list
) -> list[float]:
    """Partial-credit tag reward (``tag_score``) for each completion.

    >>> tag_format_reward(["a</think><answer>4</answer>", "a</think></think>", "no tags"])
    [1.0, -0.25, 0.0]
    """
    return [tag_score(c, prompt_opens_think=prompt_opens_think) for c in completions]
