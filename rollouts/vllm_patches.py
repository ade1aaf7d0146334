"""Corrections to vLLM that exact weight sync depends on, applied before an engine starts.

vLLM 0.32's CPU rotary-embedding kernel (``torch.ops._C.rotary_embedding``, reached through
``RotaryEmbedding.forward_cpu``) indexes the query and key as 2-D ``(tokens, heads * head_size)``
tensors. Multi-head Latent Attention (DeepSeek-V2/V3) passes it ``q[..., qk_nope_head_dim:]``: a
3-D, non-contiguous view. The kernel then rotates the wrong elements, so vLLM's DeepSeek-V3
logprobs on CPU differ from HF's (2.7e-3 on the tiny DeepSeek-V3 at random init; far more with
trained, peaked attention), while models that pass 2-D contiguous tensors (Qwen3-MoE) are exact.

``patch_cpu_rotary_embedding`` wraps ``forward_cpu``: 2-D contiguous inputs go to the kernel as
before; anything else is copied into a contiguous ``(tokens, -1)`` buffer, rotated by the kernel,
and copied back in place, keeping the kernel's in-place contract. On GPU the method is not used.
"""

from __future__ import annotations

_PATCHED = "_r1kit_safe_layout"


def _flat(t):
    return t if t is None or (t.dim() == 2 and t.is_contiguous()) else t.reshape(t.shape[0], -1).clone()


def patch_cpu_rotary_embedding() -> None:
    """Idempotently make vLLM's CPU rotary embedding correct for 3-D and strided inputs."""
    # vLLM is an optional extra, slow to import: loaded only where an engine needs it
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

    original = RotaryEmbedding.forward_cpu
    if getattr(original, _PATCHED, False):
        return

    def forward_cpu(self, positions, query, key=None):
        q, k = _flat(query), _flat(key)
        original(self, positions, q, k)
        if q is not query:
            query.copy_(q.view(query.shape))
        if k is not key:
            key.copy_(k.view(key.shape))
        return query, key

    setattr(forward_cpu, _PATCHED, True)
    RotaryEmbedding.forward_cpu = forward_cpu


def apply_cpu_patches() -> None:
    """Apply every correction above when vLLM runs on the CPU platform; no-op elsewhere."""
    # vLLM is an optional extra, slow to import: loaded only where an engine needs it
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        patch_cpu_rotary_embedding()
