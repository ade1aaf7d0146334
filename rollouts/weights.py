"""A live policy's weights under checkpoint names: what vLLM's ``load_weights`` consumes.

``iter_checkpoint_weights(model)`` streams ``(name, tensor)`` pairs for a transformers model or a
peft model wrapping one, named and laid out exactly as ``save_pretrained`` would write them to
``model.safetensors`` (the layout vLLM's model loaders read).

What it guarantees:

- Fused MoE experts are split per expert. transformers 5 keeps the experts of Qwen3-MoE and
  DeepSeek-V3 fused in memory: ``mlp.experts.gate_up_proj`` of shape ``(E, 2*I, H)`` whose first
  ``I`` rows of each expert are ``gate_proj`` and the last ``I`` are ``up_proj`` (the forward does
  ``linear(x, gate_up_proj[e]).chunk(2)`` and takes gate first), and ``mlp.experts.down_proj`` of
  shape ``(E, H, I)``; both already in ``nn.Linear`` ``(out, in)`` order, so no transposition.
  Rather than re-deriving this per architecture, the split runs through transformers' own inverse
  of its load-time conversion (``revert_weight_conversion``, what ``save_pretrained`` uses), so
  every architecture transformers can save (transposed or interleaved experts included) comes out
  in checkpoint layout.
- Persistent buffers that belong to the checkpoint are included (DeepSeek-V3's
  ``mlp.gate.e_score_correction_bias``); non-persistent ones (rotary ``inv_freq``) are not. A
  parameter tied to one already yielded (tied embeddings) is yielded once, as ``save_pretrained``
  does.
- A peft LoRA model is merged on the fly for its active adapter(s): each LoRA'd weight is yielded as
  ``W + get_delta_weight(adapter)`` (``W + scale * B @ A``, peft's own formula, so ``fan_in_fan_out``
  and LoRA on fused expert parameters via ``target_parameters`` are handled the way
  ``merge_and_unload`` handles them). The trainer's model is not mutated. Adapters already merged
  into the base weights (``merge_adapter``) or disabled are not added again. For
  ``modules_to_save`` the active adapter's trained copy is yielded under the original name. peft's
  prefixes (``base_model.model.``, ``.base_layer``, ``.modules_to_save.<adapter>``) never appear.
- Streaming: tensors are produced one transformer block at a time (the unit transformers' weight
  conversions act on), so at most one block's merged/split tensors exist at once, never a copy of
  the whole model. Tensors are detached and contiguous.
- FSDP2: a submodule sharded with ``fully_shard`` (a decoder layer) is gathered
  (``FSDPModule.unshard``) while it is walked and resharded after, its tensors copied out first,
  so a rank holds one gathered layer at a time. Each gather is a collective: every rank must
  walk the model in full and in the same order (a rank with no engine drains
  ``iter_live_weights``). Parameters managed by an FSDP root above ``model`` must be gathered by
  the caller (``grpo.parallel.Parallel.gathered``); a shard met outside any gather raises.

What it does not do:

- Unmerged tensors (and split experts) may share storage with the live model: consume each one
  (vLLM copies it into its own parameters) before the next optimizer step.
- DoRA, LoRA biases (``lora_bias=True``) and non-LoRA peft methods raise ``ValueError``; they have
  their own merge rules that this module does not reproduce.
- No dtype conversion: tensors keep the policy's dtype.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from torch import nn

_GROUP_RE = re.compile(r"^(.*?\.\d+)\.")  # the first "<prefix>.<index>." of a name: one block


def iter_checkpoint_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``model``'s current weights as ``(checkpoint_name, tensor)``, one block at a time."""
    hf_model = _unwrap_peft(model)
    group_key, group = None, []
    with torch.no_grad():
        for name, tensor in _merged_tensors(hf_model):
            key = _group_key(name)
            if group and key != group_key:
                yield from _to_checkpoint_layout(hf_model, group)
                group = []
            group_key = key
            group.append((name, tensor))
        if group:
            yield from _to_checkpoint_layout(hf_model, group)


def iter_live_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``model``'s current weights under their in-memory (transformers) names, LoRA merged and
    FSDP2 layers gathered: what a plain copy of the model loads with ``load_state_dict``."""
    with torch.no_grad():
        yield from _merged_tensors(_unwrap_peft(model))


def _unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (still holding its LoRA layers), or ``model``."""
    from transformers import PreTrainedModel

    inner = model
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        for cfg in model.peft_config.values():
            if getattr(cfg, "peft_type", None) is None or str(cfg.peft_type.value) != "LORA":
                raise ValueError(f"only LoRA peft models can be merged, got {cfg.peft_type}")
            if getattr(cfg, "use_dora", False) or getattr(cfg, "lora_bias", False):
                raise ValueError("DoRA and lora_bias adapters are not supported by the weight sync")
        inner = model.get_base_model()
    if not isinstance(inner, PreTrainedModel):
        raise TypeError(f"expected a transformers PreTrainedModel or a peft model wrapping one, "
                        f"got {type(model).__name__}")
    return inner


def _group_key(name: str) -> str:
    m = _GROUP_RE.match(name)
    return m.group(1) if m else name


def _merged_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """In-memory (transformers) names and values, LoRA deltas folded in, peft wrappers removed."""
    seen: set[int] = set()  # ids of the model's own Parameter/buffer objects, alive throughout
    for name, tensor, source in _walk(model, "", {}):
        if id(source) in seen:  # tied parameter: save_pretrained writes it once
            continue
        seen.add(id(source))
        yield name, tensor


def _walk(
    module: nn.Module, prefix: str, deltas: dict[str, list[torch.Tensor]]
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """Depth-first over ``module``'s own tensors then children, in registration order; yields
    ``(name, value, source)`` with ``source`` the model's own Parameter or buffer.

    ``deltas`` maps a parameter name of ``module`` to LoRA deltas that wrappers above it computed.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper
    from torch.distributed.fsdp import FSDPModule

    if isinstance(module, FSDPModule) and not getattr(module, "_r1kit_gathered", False):
        module.unshard()  # a collective: every rank walks the same modules in the same order
        module._r1kit_gathered = True
        try:  # copies: resharding frees the gathered storage before the consumer is done
            for name, value, source in _walk(module, prefix, deltas):
                yield name, value.clone(), source
        finally:
            module._r1kit_gathered = False
            module.reshard()
        return
    if isinstance(module, ModulesToSaveWrapper):
        yield from _walk(_modules_to_save_target(module), prefix, deltas)
        return
    if isinstance(module, LoraLayer):
        yield from _walk(module.base_layer, prefix, _add_lora_deltas(module, deltas))
        return
    for pname, param in module._parameters.items():
        if param is None:
            continue
        value = param.detach()
        if type(value).__name__ == "DTensor":
            raise RuntimeError(f"{prefix}{pname} is an FSDP2 shard outside any gathered module: "
                               "gather the FSDP root around the walk (grpo.parallel.Parallel."
                               "gathered)")
        for delta in deltas.get(pname, ()):
            value = value + delta.to(value.dtype)
        yield prefix + pname, value, param
    for bname, buf in module._buffers.items():
        if buf is not None and bname not in module._non_persistent_buffers_set:
            yield prefix + bname, buf.detach(), buf
    for cname, child in module._modules.items():
        if child is not None:
            yield from _walk(child, f"{prefix}{cname}.", {})


def _modules_to_save_target(wrapper: nn.Module) -> nn.Module:
    """The copy a ``ModulesToSaveWrapper`` runs: the active adapter's, else the original."""
    active = [a for a in wrapper.active_adapters if a in wrapper.modules_to_save]
    if getattr(wrapper, "disable_adapters", False) or not active:
        return wrapper.original_module
    return wrapper.modules_to_save[active[0]]


def _add_lora_deltas(
    layer: nn.Module, deltas: dict[str, list[torch.Tensor]]
) -> dict[str, list[torch.Tensor]]:
    """``deltas`` plus this LoRA layer's unmerged active-adapter deltas, keyed by the parameter
    they apply to (``weight`` for module LoRA, the wrapped name for ``target_parameters``)."""
    target = getattr(layer, "parameter_name", None) or "weight"
    out = {k: list(v) for k, v in deltas.items()}
    if getattr(layer, "disable_adapters", False):
        return out
    merged = set(layer.merged_adapters)
    for adapter in layer.active_adapters:
        if adapter in merged:
            continue
        if adapter not in layer.lora_A and adapter not in layer.lora_embedding_A:
            continue
        if layer.use_dora.get(adapter, False) or layer.lora_bias.get(adapter, False):
            raise ValueError(f"adapter {adapter!r} uses DoRA or lora_bias, which the weight sync "
                             "does not merge")
        out.setdefault(target, []).append(layer.get_delta_weight(adapter).detach())
    return out


def _to_checkpoint_layout(
    model: nn.Module, group: list[tuple[str, torch.Tensor]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Undo transformers' load-time conversions (fused experts, renames) for one block."""
    from transformers.core_model_loading import revert_weight_conversion

    reverted = revert_weight_conversion(model, dict(group))
    for name, tensor in reverted.items():
        yield name, tensor.detach().contiguous()
