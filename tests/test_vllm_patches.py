"""vLLM CPU corrections r1kit applies (rollouts.vllm_patches), checked against vLLM's own
reference (pure-PyTorch) rotary embedding."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.vllm

HEADS, NOPE, ROPE, TOKENS = 2, 32, 64, 7


@pytest.fixture(scope="module")
def rope():
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope

    with set_current_vllm_config(VllmConfig()):
        yield get_rope(ROPE, max_position=256, is_neox_style=False,
                       rope_parameters={"rope_theta": 10000.0, "rope_type": "default"})


def _mla_inputs():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(TOKENS, HEADS, NOPE + ROPE, generator=g)  # MLA's query, nope part first
    k_pe = torch.randn(TOKENS, 1, ROPE, generator=g)
    return torch.arange(TOKENS), q, k_pe


def test_unpatched_kernel_mishandles_mla_layout(rope):
    """The reason for the patch: the raw kernel on MLA's strided query view is wrong."""
    from vllm import _custom_ops as ops

    positions, q, k_pe = _mla_inputs()
    ref_q, _ = rope.forward_native(positions, q[..., NOPE:].contiguous(), k_pe.clone())
    view = q[..., NOPE:]
    ops.rotary_embedding(positions, view, k_pe.clone(), rope.head_size,
                         rope._match_cos_sin_cache_dtype(view), rope.is_neox_style)
    assert (view - ref_q).abs().max() > 1e-2


def test_patched_forward_cpu_matches_reference_in_place(rope):
    from rollouts.vllm_patches import patch_cpu_rotary_embedding

    patch_cpu_rotary_embedding()
    patch_cpu_rotary_embedding()  # idempotent
    positions, q, k_pe = _mla_inputs()
    nope_before = q[..., :NOPE].clone()
    ref_q, ref_k = rope.forward_native(positions, q[..., NOPE:].contiguous(), k_pe.clone())
    out_q, out_k = rope.forward_cpu(positions, q[..., NOPE:], k_pe)
    assert torch.allclose(q[..., NOPE:], ref_q, atol=1e-5)  # rotated in place, in the view
    assert torch.allclose(out_q, ref_q, atol=1e-5) and torch.allclose(out_k, ref_k, atol=1e-5)
    assert torch.allclose(k_pe, ref_k, atol=1e-5)
    assert torch.equal(q[..., :NOPE], nope_before)  # the rest of the query is untouched
    # the 2-D contiguous fast path still gives the reference result
    flat_q = torch.randn(TOKENS, HEADS * ROPE)
    ref2, _ = rope.forward_native(positions, flat_q.clone(), k_pe[:, 0].clone())
    got2, _ = rope.forward_cpu(positions, flat_q, k_pe[:, 0].clone())
    assert torch.allclose(got2, ref2, atol=1e-5)
