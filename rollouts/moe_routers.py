"""Which modules of a transformers MoE model are its routers, and a recorder of the experts each
picks: what the HF engine reports as a completion's routed experts, and what the trainer's
router statistics and routing replay (``grpo.routing``) read.

Each router module (one per MoE layer) returns ``(logits, weights, indices)``; ``RoutingRecorder``
registers forward hooks on the routers and keeps the indices (and optionally the logits).

Routers by class name: ``TOPK_ROUTERS`` pick top-k experts from their scores (Qwen3-MoE,
DeepSeek-V2/V3/V4; ``grpo.routing`` has each one's gate-weight formula for replay);
``HASH_ROUTERS`` (DeepSeek-V4's first ``hash_moe`` layers) pick experts by a frozen table of the
token id, so the sampler and the trainer always agree and there is nothing to replay. Both kinds
count as MoE layers here; ``router_kinds`` says which layer is which.

Layer index ``L`` everywhere means "the L-th MoE layer" (routers in module order): dense layers,
such as DeepSeek-V3's first ``first_k_dense_replace`` layers or Qwen3-MoE's ``mlp_only_layers``,
have no router and are skipped. Peft-wrapped models work unchanged (the routers are found
through the wrapper). Router hooks also fire when gradient checkpointing recomputes a layer
during backward: record outside backward.
"""

from __future__ import annotations

from typing import Self

import torch
from torch import Tensor, nn

# Routers that pick the top-k experts of their scores (one gate-weight formula each in
# grpo.routing, for replay).
TOPK_ROUTERS = ("Qwen3MoeTopKRouter", "DeepseekV3TopkRouter", "DeepseekV2TopkRouter",
                "DeepseekV4TopKRouter")
# Routers whose experts are a function of the token id alone: recorded, never replayed.
HASH_ROUTERS = ("DeepseekV4HashRouter",)


def base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def moe_routers(model: nn.Module) -> list[nn.Module]:
    """The router of every MoE layer (top-k and hash-routed), in layer order, of a transformers
    or peft-wrapped model."""
    known = (*TOPK_ROUTERS, *HASH_ROUTERS)
    routers = [m for m in model.modules() if type(m).__name__ in known]
    if not routers:
        raise ValueError(
            f"{type(base_model(model)).__name__} is not supported by routing replay: it has no "
            f"router of a supported kind ({', '.join(known)})"
        )
    return routers


def router_kinds(routers: list[nn.Module]) -> list[str]:
    """``"hash"`` or ``"topk"`` per MoE layer."""
    return ["hash" if type(r).__name__ in HASH_ROUTERS else "topk" for r in routers]


class RoutingRecorder:
    """While active, records the experts each router picks on every forward call of the model.

    ``calls[c][L]`` is a LongTensor (tokens, k), detached, for forward call ``c`` and MoE layer
    ``L``; tokens are the flattened (B * T) positions of that call, row-major. With
    ``keep_logits``, ``logits[c][L]`` (tokens, num_experts) keeps its graph (for
    ``load_balancing_loss``). A call starts whenever the first MoE layer's router runs.
    """

    def __init__(self, model: nn.Module, keep_logits: bool = False):
        self.routers = moe_routers(model)
        self.keep_logits = keep_logits
        self.calls: list[list[Tensor]] = []
        self.logits: list[list[Tensor]] = []
        self._handles: list = []

    def _hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: tuple) -> None:
            logits, _, idx = output
            if layer == 0:
                self.calls.append([])
                self.logits.append([])
            self.calls[-1].append(idx.detach())
            if self.keep_logits:
                self.logits[-1].append(logits)

        return hook

    def merge_last(self, calls: int, index: Tensor) -> None:
        """Replace the last ``calls`` forward calls by one whose tokens are those calls' tokens
        laid end to end and taken at ``index``: a shared-prompt pass
        (the trainer's ``grpo.logprobs.completion_hidden``) recorded as the one (B * T) call it stands for."""
        index = index.to(self.calls[-1][0].device)
        for store in (self.calls, self.logits):  # logits: empty lists without keep_logits
            parts = store[-calls:]
            merged = [torch.cat([c[i] for c in parts])[index] for i in range(len(parts[0]))]
            del store[-calls:]
            store.append(merged)

    def experts(self, call: int = -1) -> Tensor:
        """The experts of one forward call as a LongTensor (tokens, L, k)."""
        return torch.stack(self.calls[call], dim=1)

    def __enter__(self) -> Self:
        self._handles = [r.register_forward_hook(self._hook(i)) for i, r in enumerate(self.routers)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
