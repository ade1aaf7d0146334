"""Turning questions into prompts: the R1-Zero template and chat-template prompts.

The R1-Zero template is plain text for a base model: it states the output format and ends inside
an open ``<think>`` block, so the first sampled token already belongs to the reasoning. The wording
here is r1kit's own; the structure (a conversation preamble, the format rule, ``Assistant: <think>``)
follows DeepSeek-R1's Table 1.
"""

from __future__ import annotations

from typing import Any

R1_ZERO_TEMPLATE = (
    "A user asks a question and an assistant answers it. The assistant first works through the "
    "problem step by step inside <think> </think>, then gives only the final result inside "
    "<answer> </answer>, like this: <think> reasoning </think> <answer> result </answer>.\n"
    "User: {question}\n"
    "Assistant: <think>"
)

PROMPT_STYLES = ("r1_zero", "chat")


def r1_zero_prompt(question: str) -> str:
    """The R1-Zero prompt for ``question``; the completion starts inside ``<think>``.

    >>> r1_zero_prompt("What is 2 + 2?").endswith("User: What is 2 + 2?\\nAssistant: <think>")
    True
    """
    return R1_ZERO_TEMPLATE.format(question=question.strip())


def chat_prompt(question: str, tokenizer: Any, system: str | None = None) -> str:
    """A prompt built by the tokenizer's own chat template, ready for generation."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; use prompt style 'r1_zero'")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_prompt(question: str, style: str, tokenizer: Any = None) -> str:
    """Dispatch on the configured prompt style (``rollout.prompt_style``)."""
    if style == "r1_zero":
        return r1_zero_prompt(question)
    if style == "chat":
        return chat_prompt(question, tokenizer)
    raise ValueError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")


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
