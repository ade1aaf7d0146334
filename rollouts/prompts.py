"""Turning questions into prompts, one style per name (``rollout.prompt_style``,
``eval.prompt_style``).

- ``r1_zero``: DeepSeek-R1's Table 1 template for a base model, word for word, with the question in
  place of "prompt". One departure: `` <think>`` follows the final "Assistant:", so the completion
  starts inside the think block, as the format reward (``rewards.format``, ``prompt_opens_think``)
  and the evaluation's answer part (after ``</think>``) expect. The paper does not say whether its
  prompt opened the block.
- ``r1kit_zero``: r1kit's own wording of the same structure (conversation preamble, format rule,
  ``Assistant: <think>``), on separate lines. The embedded tiny models (``r1kit.tiny``'s
  tokenizer, ``r1kit.base``'s supervised base) are trained on this text, so the tiny recipes and
  the demo use it.
- ``qwen_math``: Qwen's chat format (ChatML) written out as text, with the system prompt "Please
  reason step by step, and put your final answer within \\boxed{}." (Qwen2.5-Math's CoT prompt;
  the template SimpleRL-Zoo and Dr. GRPO's Oat-Zero train with). No think tags.
- ``chat``: the tokenizer's own chat template, the question as the user turn.
- ``chat_think``: DeepSeek-R1's evaluation of chat and distilled reasoning models: the tokenizer's
  chat template, the instruction in the user turn (the evaluation adds it, ``eval.suites``), and
  the response opened with ``<think>\\n`` (not added again where the template already ends in
  ``<think>``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves "
    "it. The assistant first thinks about the reasoning process in the mind and then provides the "
    "user with the answer. The reasoning process and answer are enclosed within <think> </think> "
    "and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>. User: {question}. Assistant: <think>"
)
"""DeepSeek-R1 (DeepSeek-AI 2025), Table 1, verbatim; `` <think>`` appended (module docstring)."""

R1KIT_ZERO_TEMPLATE = (
    "A user asks a question and an assistant answers it. The assistant first works through the "
    "problem step by step inside <think> </think>, then gives only the final result inside "
    "<answer> </answer>, like this: <think> reasoning </think> <answer> result </answer>.\n"
    "User: {question}\n"
    "Assistant: <think>"
)

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
"""Qwen2.5-Math's system prompt, and the user-turn instruction of DeepSeek-R1's evaluation."""

QWEN_MATH_TEMPLATE = (
    "<|im_start|>system\n" + BOXED_INSTRUCTION.replace("{}", "{{}}") + "<|im_end|>\n"
    "<|im_start|>user\n{question}<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def r1_zero_prompt(question: str) -> str:
    """DeepSeek-R1's Table 1 prompt for ``question``; the completion starts inside ``<think>``.

    >>> r1_zero_prompt("What is 2 + 2?")[-51:]
    '</answer>. User: What is 2 + 2?. Assistant: <think>'
    """
    return R1_ZERO_TEMPLATE.format(question=question.strip())


def r1kit_zero_prompt(question: str) -> str:
    """r1kit's R1-Zero prompt for ``question`` (the tiny models' text).

    >>> r1kit_zero_prompt("What is 2 + 2?").endswith("User: What is 2 + 2?\\nAssistant: <think>")
    True
    """
    return R1KIT_ZERO_TEMPLATE.format(question=question.strip())


def qwen_math_prompt(question: str) -> str:
    """Qwen-Math's prompt for ``question``: ChatML with the boxed-answer system prompt.

    >>> print(qwen_math_prompt("What is 2 + 2?"))
    <|im_start|>system
    Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>
    <|im_start|>user
    What is 2 + 2?<|im_end|>
    <|im_start|>assistant
    <BLANKLINE>
    """
    return QWEN_MATH_TEMPLATE.format(question=question.strip())


def chat_prompt(question: str, tokenizer: Any, system: str | None = None) -> str:
    """A prompt built by the tokenizer's own chat template, ready for generation."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; use prompt style 'r1_zero'")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_think_prompt(question: str, tokenizer: Any) -> str:
    """The chat template's prompt with the response opened by ``<think>\\n``."""
    prompt = chat_prompt(question, tokenizer)
    return prompt if prompt.rstrip().endswith("<think>") else prompt + "<think>\n"


PROMPT_BUILDERS: dict[str, Callable[[str, Any], str]] = {
    "r1_zero": lambda q, tok: r1_zero_prompt(q),
    "r1kit_zero": lambda q, tok: r1kit_zero_prompt(q),
    "qwen_math": lambda q, tok: qwen_math_prompt(q),
    "chat": chat_prompt,
    "chat_think": chat_think_prompt,
}
PROMPT_STYLES = tuple(PROMPT_BUILDERS)
CHAT_STYLES = ("chat", "chat_think")
"""The styles that need the tokenizer's chat template."""


def build_prompt(question: str, style: str, tokenizer: Any = None) -> str:
    """Dispatch on the configured prompt style (``rollout.prompt_style``)."""
    if style not in PROMPT_BUILDERS:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")
    return PROMPT_BUILDERS[style](question, tokenizer)


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """A prompt's token ids with the tokenizer's BOS exactly once.

    Chat templates often write the BOS token into the text themselves, while plain-text prompts
    (the R1-Zero template) rely on the tokenizer to prepend it; encoding either with the
    tokenizer's defaults would double or drop it. Every engine encodes prompts here, so all of
    them feed the policy the same tokens. A tokenizer that adds no BOS (the tiny policies,
    Qwen) gets the text's tokens unchanged.
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and ids[:1] != [bos] and tokenizer("x")["input_ids"][:1] == [bos]:
        ids.insert(0, bos)
    return ids
