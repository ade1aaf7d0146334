"""Rows that share a prompt, found once: a GRPO group's samples repeat one prompt, so its prefill
(HF engine, ``rollouts.hf``) and its forward in the trainer's update (``grpo.logprobs``) can run it
once. Which model types the shared pass is tested equal for lives here too, so the engine and the
trainer agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Model types whose shared-prompt pass (``grpo.logprobs.completion_hidden`` with
# ``share_prompts``) is tested equal to the plain one (tests/test_logprobs.py); others always take
# the plain pass.
SHARED_PROMPT_MODELS = ("qwen3_moe", "qwen3", "qwen2", "qwen2_moe", "llama", "deepseek_v3")


def owners_of(prompts: Sequence[Sequence[int]]) -> tuple[list[int], list[int]] | None:
    """``prompt_owners`` of prompts given as token id lists (on the host: nothing is read from
    a device).

    >>> owners_of([[5, 6], [5, 6], [7]])
    ([0, 2], [0, 0, 1])
    """
    seen: dict[tuple[int, ...], int] = {}
    firsts, owner = [], []
    for r, prompt in enumerate(prompts):
        key = tuple(prompt)
        if key not in seen:
            seen[key] = len(firsts)
            firsts.append(r)
        owner.append(seen[key])
    return None if len(firsts) == len(owner) else (firsts, owner)


def prompt_owners(input_ids: Tensor, prompt_lens: Tensor) -> tuple[Tensor, Tensor] | None:
    """Rows with the same prompt (a GRPO group's samples): ``(firsts, owner)``, the first row of
    each distinct prompt (P,) and, per row, the index into ``firsts`` of its prompt (B,); None
    when no two rows share a prompt. Reads ``input_ids`` on the host; callers that know the
    prompts as lists use ``owners_of``.

    >>> prompt_owners(torch.tensor([[5, 6, 1], [5, 6, 2], [7, 1, 1]]), torch.tensor([2, 2, 1]))
    (tensor([0, 2]), tensor([0, 0, 1]))
    """
    found = owners_of([row[:n] for row, n in zip(input_ids.tolist(), prompt_lens.tolist())])
    return None if found is None else (torch.tensor(found[0]), torch.tensor(found[1]))
