"""Prompt encoding: the BOS token exactly once, whatever the prompt style."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rollouts.prompts import build_prompt, encode_prompt, r1_zero_prompt, r1kit_zero_prompt


@pytest.fixture(scope="module")
def bos_tokenizer():
    """A word-level tokenizer that prepends <s> by default, as Llama/DeepSeek tokenizers do."""
    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, "hello": 3, "world": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def test_bos_added_once(bos_tokenizer):
    assert encode_prompt(bos_tokenizer, "hello world") == [0, 3, 4]
    # a chat template that already wrote BOS into the text: not doubled
    assert encode_prompt(bos_tokenizer, "<s> hello world") == [0, 3, 4]


def test_no_bos_tokenizer_is_unchanged(tiny_qwen):
    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    text = r1_zero_prompt("What is 1 + 2?")
    assert encode_prompt(tok, text) == tok(text, add_special_tokens=False)["input_ids"]
    assert build_prompt("What is 1 + 2?", "chat", tok).endswith("<think>")
    with pytest.raises(ValueError, match="unknown prompt style"):
        build_prompt("q", "plain", tok)


def test_the_tiny_models_keep_their_template():
    """``r1kit_zero`` is the text the tiny tokenizer and base were trained on (``r1kit.tiny``,
    ``r1kit.base``); ``r1_zero`` is DeepSeek-R1's (``tests/test_eval_protocol.py``)."""
    assert r1kit_zero_prompt("What is 1 + 2?") == (
        "A user asks a question and an assistant answers it. The assistant first works through "
        "the problem step by step inside <think> </think>, then gives only the final result "
        "inside <answer> </answer>, like this: <think> reasoning </think> <answer> result "
        "</answer>.\nUser: What is 1 + 2?\nAssistant: <think>")
    assert build_prompt("What is 1 + 2?", "r1kit_zero") == r1kit_zero_prompt("What is 1 + 2?")
    assert build_prompt("What is 1 + 2?", "r1_zero") != r1kit_zero_prompt("What is 1 + 2?")
