"""A vLLM worker extension that loads new policy weights exactly as a fresh start would.

Use it with ``LLM(..., worker_extension_cls="rollouts.vllm_worker.WeightSyncExtension")``; its
methods then run on every worker through ``llm.collective_rpc(name, args=...)`` (the in-process
engine). A server in another process is synced through vLLM's weight-transfer API instead, by
``rollouts.weight_transfer_engines.ShmWeightTransferEngine``, which applies the same two corrections
(``_rearm_first_load``/``_restore_unbuilt`` and ``_tied_heads``/``_repack`` below) around vLLM's
layerwise reload. After any update the caller must reset the prefix cache
(``llm.reset_prefix_cache()``, or the server's ``/reset_prefix_cache``): cached KV blocks were
computed with the old weights.

Root cause of the drift this module fixes (vLLM 0.32, CPU backend, unquantized MoE):

vLLM's in-place reload (``worker.reload_weights(weights_iterator, is_checkpoint_format=True)``,
``model_loader/reload``) restores each layer to its checkpoint-format metadata, loads the new
tensors through the layer's weight loaders, runs the layer's ``quant_method
.process_weights_after_loading`` and copies the result into the tensors the kernels use. For a
fused-MoE layer that method is ``UnquantizedFusedMoEMethod.process_weights_after_loading ->
_setup_kernel``. At first load ``quant_method.moe_kernel`` is None, so ``_setup_kernel`` builds the
kernel and then calls ``moe_kernel.fused_experts.process_weights_after_loading(layer)``; on CPU that
is ``CPUUnquantizedExperts.process_weights_after_loading``, which pads the intermediate dim and
prepacks ``w13_weight`` / ``w2_weight`` into the grouped-GEMM layout (``cpu_prepack_moe_weight``)
that ``cpu_fused_moe`` reads. On a reload ``moe_kernel`` is already set, ``_setup_kernel`` treats the
call as a "weight update" and skips that step (it assumes, as on GPU, that the experts' hook is a
no-op). The expert weights are left in checkpoint layout while the kernel reads them as prepacked:
reloading the very same weights moves per-token logprobs by up to ~0.4 on the tiny Qwen3-MoE and
~0.02 on the tiny DeepSeek-V3 (measured); dense layers are unaffected.

The fix: before the reload, ``_rearm_first_load`` sets ``moe_kernel = None`` on every fused-MoE
quant method whose experts implementation has its own ``process_weights_after_loading`` (a
one-time repack; the base class's is a no-op). The reload then runs exactly the first-load code
path on the new checkpoint-format tensors: kernel built, experts repacked, result copied into the
original parameter storage by vLLM's layerwise reload (so the addresses the engine holds stay
valid). Nothing is specific to a model: it keys on the kernel, and works for Qwen3-MoE and
DeepSeek-V3 alike. The previous kernel object is dropped, and a layer that received no weights
gets its old kernel back, so repeated updates neither leak (process RSS is flat over repeated
updates, measured) nor leave a layer without a kernel.

Root cause of the second drift (tied embeddings, vLLM 0.32, CPU backend, any architecture):

With ``tie_word_embeddings=True`` (Qwen3-0.6B, Qwen2.5-0.5B, ...) vLLM's ``lm_head``
(``ParallelLMHead``) shares its ``weight`` Parameter with ``embed_tokens``, the checkpoint (and the
sync, like ``save_pretrained``) carries that tensor once as ``model.embed_tokens.weight``, and the
model's ``load_weights`` skips ``lm_head.*``. On CPU, ``UnquantizedEmbeddingMethod
.process_weights_after_loading`` packs a private copy of the weight for the logits GEMM
(``dispatch_cpu_unquantized_gemm`` -> ``layer.cpu_linear``: sgl-kernel packed weight or a oneDNN
handle). The layerwise reload processes a layer only when it receives tensors: ``embed_tokens`` is
reloaded, ``lm_head`` receives none ("ParallelLMHead: Failed to load weights"), gets its kernel
tensors placed back (the shared, updated Parameter) but keeps its packed copy of the *old* weight.
Logits then come from the old head: ~0.3 max logprob gap after one AdamW step on the tiny dense
Qwen3 (measured). On GPU the hook is a no-op and the head reads the shared Parameter.

The fix: ``_tied_heads`` finds, before the reload, every layer whose parameter is another layer's
(a tie) and whose quant method is the unquantized embedding method; after the reload their
``process_weights_after_loading`` runs again, repacking from the shared, updated weight (on GPU a
no-op). Quantized tied heads are not re-processed: their hooks may not be idempotent.

What it does not do: partial updates. Every update must carry every weight of the model (what
``rollouts.weights.iter_checkpoint_weights`` yields); a MoE layer given only some of its experts
would be processed with stale or uninitialised elements for the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from rollouts.vllm_patches import apply_cpu_patches

# A server imports this module in its worker before the model is built: patch vLLM there too.
apply_cpu_patches()


def _rearm_first_load(model: torch.nn.Module) -> dict[torch.nn.Module, Any]:
    """Clear the built MoE kernels whose experts repack weights after loading; return them."""
    # vLLM is an optional extra, slow to import: loaded only where an engine needs it
    from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
    from vllm.model_executor.layers.fused_moe.modular_kernel import FusedMoEExperts

    cleared: dict[torch.nn.Module, Any] = {}
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if not isinstance(method, FusedMoEMethodBase) or method.moe_kernel is None:
            continue
        experts = getattr(method.moe_kernel, "fused_experts", None)
        hook = getattr(type(experts), "process_weights_after_loading", None)
        if experts is not None and hook is not FusedMoEExperts.process_weights_after_loading:
            cleared[module] = method.moe_kernel
            method.moe_kernel = None
    return cleared


def _restore_unbuilt(cleared: dict[torch.nn.Module, Any]) -> None:
    """Give a layer its previous kernel back if the reload did not rebuild one (no weights)."""
    for module, kernel in cleared.items():
        if module.quant_method.moe_kernel is None:
            module.quant_method.moe_kernel = kernel


def _tied_heads(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Layers holding a parameter that an earlier layer also holds (tied output embeddings)
    whose quant method is the unquantized embedding one, whose hook only (re)packs."""
    # vLLM is an optional extra, slow to import: loaded only where an engine needs it
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    owners: set[int] = set()
    tied = []
    for module in model.modules():
        params = [p for p in module._parameters.values() if p is not None]
        shared = any(id(p) in owners for p in params)
        owners.update(id(p) for p in params)
        if shared and isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod):
            tied.append(module)
    return tied


def _repack(layers: list[torch.nn.Module]) -> None:
    """Rebuild the kernel-side copy (CPU packed GEMM) of layers the reload gave no tensors."""
    for layer in layers:
        layer.quant_method.process_weights_after_loading(layer)


def _iter_safetensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of one safetensors file, read one at a time."""
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        for name in f.keys():
            yield name, f.get_tensor(name)


class WeightSyncExtension:
    """Mixed into vLLM's worker class (``self`` is the worker): weight updates by RPC."""

    def update_weights_from_tensors(self, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load ``(checkpoint_name, tensor)`` pairs (every weight of the model) as a fresh load
        would; returns how many tensors were consumed. In-process engines only (tensors by
        reference)."""
        counted = _Counter(weights)
        model = self.model_runner.get_model()
        tied = _tied_heads(model)
        cleared = _rearm_first_load(model)
        try:
            self.reload_weights(weights_iterator=iter(counted), is_checkpoint_format=True)
        finally:
            _restore_unbuilt(cleared)
        _repack(tied)
        return counted.n

    def update_weights_from_safetensors(self, path: str) -> int:
        """The same, reading the weights from a safetensors file that this worker can open."""
        return self.update_weights_from_tensors(_iter_safetensors(path))

    def weight_sums(self) -> dict[str, float]:
        """Sum of each of the running model's parameters in float64: a cheap fingerprint to
        compare two engines' (or two moments') weights in the kernel layout."""
        model = self.model_runner.get_model()
        return {n: float(p.detach().double().sum()) for n, p in model.named_parameters()}


class _Counter:
    """Pass an iterable through, counting its items."""

    def __init__(self, items: Iterable[tuple[str, torch.Tensor]]):
        self._items, self.n = items, 0

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for item in self._items:
            self.n += 1
            yield item
