"""Shared helpers for the vLLM engine tests: tiny checkpoints, one engine per family, HF logprobs
of sampled tokens, and one optimizer step on a policy."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Small KV cache: the tiny models need a few MiB, and several engines may share this machine.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

FAMILIES = ("qwen3_moe", "deepseek_v3")
# Tied input/output embeddings (Qwen3-0.6B, Qwen2.5-0.5B): the dense Qwen3 and a tied Qwen3-MoE.
TIED_FAMILIES = ("qwen3", "qwen3_moe")
MAX_MODEL_LEN = 256
PROMPTS = (
    "User: What is 12 + 7?\nAssistant: <think>",
    "User: What is 3 * 4 - 5?\nAssistant: <think>",
)


def make_engine(path: Path, **kwargs):
    from rollouts.vllm_engine import VLLMEngine

    return VLLMEngine(path, dtype="float32", max_model_len=MAX_MODEL_LEN, seed=0, **kwargs)


def load_hf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@torch.no_grad()
def hf_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """log p(completion token t | prefix) under ``model`` at temperature 1, one plain forward."""
    ids = torch.tensor([prompt_ids + completion_ids])
    logits = model(input_ids=ids).logits[0].float()  # (T, V)
    pred = logits[len(prompt_ids) - 1 : -1]  # the positions that predict the completion
    return torch.log_softmax(pred, dim=-1).gather(1, torch.tensor(completion_ids)[:, None])[:, 0]


def max_logprob_gap(model, groups) -> float:
    """Largest |vLLM sampler logprob - HF logprob| over every sampled token of ``groups``."""
    model.eval()
    gap = 0.0
    for g in groups:
        for c in g.completions:
            want = hf_logprobs(model, g.prompt_token_ids, c.token_ids)
            gap = max(gap, (torch.tensor(c.logprobs) - want).abs().max().item())
    return gap


def same_tokens_max_gap(groups_a, groups_b) -> float:
    """Assert two samplings drew the same tokens; return the largest |logprob difference|."""
    gap = 0.0
    for ga, gb in zip(groups_a, groups_b, strict=True):
        for a, b in zip(ga.completions, gb.completions, strict=True):
            assert a.token_ids == b.token_ids
            gap = max(gap, (torch.tensor(a.logprobs) - torch.tensor(b.logprobs)).abs().max().item())
    return gap


def optimizer_step(model, tokenizer, lr: float = 1e-2) -> None:
    """One AdamW step of causal-LM loss on a few task strings: the policy moves."""
    texts = [p + " 19 </think> <answer> 19 </answer>" for p in PROMPTS] + [
        "User: What is 5 + 5?\nAssistant: <think> 5 + 5 = 10 </think> <answer> 10 </answer>"
    ]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    for text in texts:
        ids = torch.tensor([tokenizer.encode(text)])
        loss = model(input_ids=ids, labels=ids).loss / len(texts)
        loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
