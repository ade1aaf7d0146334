"""Decoding MLA models without re-expanding their whole cache at every token.

transformers' DeepSeek-V3 attention (``DeepseekV3Attention``, MLA) keeps its KV cache compressed:
one latent of ``kv_lora_rank`` values and a shared rotary key per position. Every forward call
then expands the *whole* cache through ``kv_b_proj`` (``expand_kv``) into per-head keys and
values, so a decode step costs a matmul over every past position, and a completion of T tokens
costs O(T^2) of them. In ``r1kit bench train --grid`` this was 73% of the HF engine's decoding on
the tiny DeepSeek-V3 (docs/BENCHMARKS.md).

``incremental_expansion`` (the HF engine's decode loop) keeps each layer's expanded keys and
values from the previous step and expands only the positions the cache gained since, the way
a plain (uncompressed) KV cache would hold them. Positions already in the cache never change
during a decode (the cache only appends), so the result is the same expansion; only where a
matmul over fewer rows rounds differently in the last bit can a value differ
(``tests/test_hf_engine.py`` compares both). The memo lives for one decode loop: the prefill
and any reordering of the cache's rows (the shared-prompt prefill selects rows) happen before
it starts, and a call whose batch or length does not extend the memo expands in full.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


# Attention classes whose ``expand_kv`` is called on the whole cache at every step (checked in
# tests/test_hf_engine.py). Other transformers models have an ``expand_kv`` too, some called on
# positions a sparse indexer selects (DeepSeek-V3.2's DSA), where a prefix memo would be wrong:
# they keep the full expansion until checked.
MLA_CLASSES = ("DeepseekV3Attention",)


def mla_layers(model: Any) -> list[Any]:
    """The attention modules of ``model`` that expand a compressed cache (``MLA_CLASSES``)."""
    return [m for m in model.modules() if type(m).__name__ in MLA_CLASSES]


@contextlib.contextmanager
def incremental_expansion(model: Any) -> Iterator[int]:
    """While active, each MLA layer of ``model`` expands only the cache positions it has not
    expanded yet in this context; yields the number of layers patched (0: nothing to do)."""
    layers = mla_layers(model)
    memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def patched(layer: Any):
        full = layer.expand_kv

        def expand_kv(kv_nope: torch.Tensor, k_rot: torch.Tensor):
            done = memo.get(id(layer))
            length = kv_nope.shape[2]
            if (done is None or done[0].shape[0] != kv_nope.shape[0]
                    or done[0].shape[2] >= length or torch.is_grad_enabled()):
                keys, values = full(kv_nope, k_rot)
            else:
                old = done[0].shape[2]
                new_k, new_v = full(kv_nope[:, :, old:], k_rot[:, :, old:])
                keys = torch.cat([done[0], new_k], dim=2)
                values = torch.cat([done[1], new_v], dim=2)
            memo[id(layer)] = (keys, values)
            return keys, values

        return expand_kv

    try:
        for layer in layers:
            layer.expand_kv = patched(layer)  # an instance attribute shadows the method
        yield len(layers)
    finally:
        for layer in layers:
            layer.__dict__.pop("expand_kv", None)
        memo.clear()
