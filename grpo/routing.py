"""Routing replay (R3) for transformers MoE models: record the experts each router picks, replay them.

R3 ("Rollout Routing Replay", Ma et al. 2025, arXiv:2510.11370): the trainer's forward routes each
token through exactly the experts the rollout engine chose for it, so the importance ratio compares
the same sub-network on both sides; only the gate *weights* come from the live router, which keeps
the router's gradient.

How: each router module (one per MoE layer) returns ``(logits, weights, indices)`` and its MoE block
runs ``experts(hidden, indices, weights)``. ``rollouts.moe_routers.RoutingRecorder`` registers forward
hooks on the routers and keeps the indices (and optionally the logits). ``replay_routing`` swaps each router's
``forward`` for one that calls the original, overrides ``indices`` at the valid positions with the
given ones, and recomputes ``weights`` there with the router's own formula gathered at those
indices; where the given indices equal the router's own choice this is bit-identical to not
replaying. The original ``forward`` is restored on exit, exceptions included.

Supported routers (transformers >= 5, one entry each in ``_GATE_WEIGHTS``):

- ``Qwen3MoeTopKRouter`` (Qwen3-MoE): softmax over all experts in float32, gathered, renormalised
  over the top-k if ``norm_topk_prob``, cast back to the logits' dtype.
- ``DeepseekV3TopkRouter`` (DeepSeek-V3, R1): sigmoid scores; ``e_score_correction_bias`` and the
  ``n_group``/``topk_group`` restriction act on the *selection* only, so under replay they are not
  used (the rollout already applied them); weights are the sigmoid scores gathered, renormalised if
  ``norm_topk_prob`` (+1e-20), times ``routed_scaling_factor``.
- ``DeepseekV2TopkRouter`` (DeepSeek-V2, V2-Lite): softmax over all experts in float32, gathered,
  times ``routed_scaling_factor`` (no renormalisation); ``group_limited_greedy``'s group mask acts
  on the selection only, so under replay it is not applied.
- ``DeepseekV4TopKRouter`` (DeepSeek-V4, ``mlp_layer_types == "moe"``): ``scoring_func`` scores
  (``sqrtsoftplus`` in the published configs); the correction bias acts on the selection only;
  weights are the scores gathered, renormalised (+1e-20), times ``routed_scaling_factor``.

Hash-routed layers (``DeepseekV4HashRouter``, V4's first ``mlp_layer_types == "hash_moe"``
layers) pick experts by a frozen table, ``tid2eid[input_id]``: the same token id always goes to
the same experts, in the sampler and in the trainer, so there is nothing to replay. They count as
MoE layers everywhere here (recorded, in ``router_stats``, so ``experts`` has a slot for them) but
``replay_routing`` leaves them alone; their gate weights come from the live router as always.
``HASH_ROUTERS`` names them; ``router_kinds`` says which layer is which.

Layer index ``L`` everywhere here means "the L-th MoE layer" (routers in module order): dense
layers, such as DeepSeek-V3's first ``first_k_dense_replace`` layers or Qwen3-MoE's
``mlp_only_layers``, have no router and are skipped. Peft-wrapped models work unchanged (the
routers are found through the wrapper). Router hooks also fire when gradient checkpointing
recomputes a layer during backward: record outside backward. Replay does not count calls, so
recomputation replays the same experts.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rollouts.moe_routers import (  # noqa: F401  (RoutingRecorder, TOPK_ROUTERS: part of this API)
    HASH_ROUTERS,
    TOPK_ROUTERS,
    RoutingRecorder,
    base_model,
    moe_routers,
    router_kinds,
)


def _qwen3_moe_weights(router: nn.Module, logits: Tensor, idx: Tensor) -> Tensor:
    probs = F.softmax(logits, dtype=torch.float, dim=-1)  # (N, E)
    w = probs.gather(-1, idx)  # (N, k)
    if router.norm_topk_prob:
        w = w / w.sum(dim=-1, keepdim=True)
    return w.to(logits.dtype)


def _deepseek_v3_weights(router: nn.Module, logits: Tensor, idx: Tensor) -> Tensor:
    w = logits.sigmoid().gather(1, idx)  # (N, k); the correction bias is for selection only
    if router.norm_topk_prob:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return w * router.routed_scaling_factor


def _deepseek_v2_weights(router: nn.Module, logits: Tensor, idx: Tensor) -> Tensor:
    w = logits.softmax(dim=-1, dtype=torch.float32).gather(1, idx)  # group limit: selection only
    return w * router.routed_scaling_factor


def _deepseek_v4_weights(router: nn.Module, logits: Tensor, idx: Tensor) -> Tensor:
    w = router.score_fn(logits).gather(1, idx)  # (N, k); the correction bias is for selection only
    w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return w * router.routed_scaling_factor


# Router class name -> its gate weights at given expert ids, computed exactly as its forward does.
_GATE_WEIGHTS: dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {
    "Qwen3MoeTopKRouter": _qwen3_moe_weights,
    "DeepseekV3TopkRouter": _deepseek_v3_weights,
    "DeepseekV2TopkRouter": _deepseek_v2_weights,
    "DeepseekV4TopKRouter": _deepseek_v4_weights,
}
def _replaying_forward(router: nn.Module, original: Callable, ids: Tensor, valid: Tensor):
    weights_fn = _GATE_WEIGHTS[type(router).__name__]

    def forward(hidden_states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, weights, idx = original(hidden_states)
        if idx.shape != ids.shape:
            raise ValueError(
                f"replay_routing got experts for {ids.shape[0]} tokens (top-{ids.shape[1]}) but the "
                f"router saw {idx.shape[0]} (top-{idx.shape[1]}): call the model once per forward "
                "with the (B, T) batch the experts were given for (no KV-cache generation)"
            )
        keep = valid[:, None]  # (N, 1)
        idx = torch.where(keep, ids, idx)
        weights = torch.where(keep, weights_fn(router, logits, idx), weights)
        return logits, weights, idx

    return forward


@contextmanager
def replay_routing(model: nn.Module, experts: Tensor, valid: Tensor) -> Iterator[None]:
    """Route valid positions through the given experts; gate weights stay live (differentiable).

    experts: (B, T, L, k) integer expert ids per input position and MoE layer (any value where not
    valid); valid: (B, T) bool, False positions route normally. Each forward inside must see
    exactly this (B, T) batch.
    """
    routers = moe_routers(model)
    B, T, L, k = experts.shape
    if L != len(routers) or valid.shape != (B, T):
        raise ValueError(
            f"experts {tuple(experts.shape)} / valid {tuple(valid.shape)} do not fit a model with "
            f"{len(routers)} MoE layers: expected (B, T, {len(routers)}, k) and (B, T)"
        )
    saved = [r.__dict__.get("forward") for r in routers]
    try:
        for layer, r in enumerate(routers):
            if type(r).__name__ in HASH_ROUTERS:  # experts fixed by token id: nothing to replay
                continue
            device = r.weight.device
            ids = experts[:, :, layer].reshape(B * T, k).to(device=device, dtype=torch.long)
            mask = valid.reshape(B * T).to(device=device, dtype=torch.bool)
            used = ids[mask]
            if used.numel() and (used.min() < 0 or used.max() >= r.num_experts):
                raise ValueError(f"MoE layer {layer}: expert ids outside [0, {r.num_experts})")
            r.forward = _replaying_forward(r, r.forward, ids, mask)
        yield
    finally:
        for r, fwd in zip(routers, saved):
            if fwd is None:
                r.__dict__.pop("forward", None)
            else:
                r.forward = fwd


@dataclass
class RouterCounts:
    """What ``router_stats`` is computed from, as sums: they add over micro-batches and ranks
    (``merge``), so statistics over a sharded update equal the one-process ones."""

    load: Tensor
    """(L, E) float64: valid token-slots routed to each expert, per MoE layer."""
    changed: Tensor | None
    """(L,) float64: valid tokens whose top-k set differs from the reference, or None."""
    tokens: float
    """Valid tokens counted."""
    kinds: list[str] | None = None

    @staticmethod
    def of(topk_per_layer: list[Tensor], num_experts: int, valid: Tensor,
           reference: list[Tensor] | None = None, kinds: list[str] | None = None
           ) -> RouterCounts:
        # Counted on the experts' device with masked sums (no boolean indexing, no bincount:
        # both wait for the device), then brought to the host in one copy.
        load, changed = [], []
        for layer, idx in enumerate(topk_per_layer):
            v = valid.to(idx.device, torch.bool)
            hits = v[:, None].expand_as(idx).reshape(-1).double()
            load.append(torch.zeros(num_experts, dtype=torch.float64, device=idx.device)
                        .scatter_add_(0, idx.reshape(-1).long(), hits))
            if reference is not None:
                ref = reference[layer].to(idx.device)
                diff = (idx.sort(-1).values != ref.sort(-1).values).any(-1)  # (tokens,)
                changed.append((diff & v).double().sum())
        layers = len(load)
        packed = torch.cat([torch.stack(load).reshape(-1), *(c.reshape(1) for c in changed),
                            valid.to(load[0].device).double().sum().reshape(1)]).cpu()
        return RouterCounts(packed[: layers * num_experts].reshape(layers, num_experts),
                            packed[layers * num_experts: -1] if changed else None,
                            float(packed[-1]), kinds)

    def merge(self, other: RouterCounts) -> RouterCounts:
        both = self.changed is not None and other.changed is not None
        return RouterCounts(self.load + other.load,
                            self.changed + other.changed if both else None,
                            self.tokens + other.tokens, self.kinds)

    def stats(self) -> dict[str, float]:
        """See ``router_stats``."""
        out: dict[str, float] = {}
        num_experts = self.load.shape[1]
        for layer, counts in enumerate(self.load):
            load = counts / counts.sum()  # (E,)
            ent = -(load * load.clamp_min(1e-300).log()).sum() / math.log(num_experts)
            stats = {"load_entropy": ent, "max_load": load.max(), "min_load": load.min()}
            if self.changed is not None:
                stats["topk_changed"] = self.changed[layer] / self.tokens
            for name, value in stats.items():
                out[f"router/layer{layer}/{name}"] = float(value)
        names = ("load_entropy", "max_load", "min_load", "topk_changed")
        groups = {"": range(len(self.load))}
        kinds = self.kinds
        if kinds is not None and len(set(kinds)) > 1:
            groups.update({f"{kind}/": [i for i, k in enumerate(kinds) if k == kind]
                           for kind in sorted(set(kinds))})
        for prefix, layers in groups.items():
            for name in names:
                values = [out[key] for i in layers if (key := f"router/layer{i}/{name}") in out]
                if values:
                    out[f"router/{prefix}{name}"] = sum(values) / len(values)
        return out


def router_stats(
    topk_per_layer: list[Tensor],
    num_experts: int,
    valid: Tensor,
    reference: list[Tensor] | None = None,
    kinds: list[str] | None = None,
) -> dict[str, float]:
    """Expert-load statistics per MoE layer and their means over layers.

    topk_per_layer[L]: (tokens, k) expert ids; valid: (tokens,) bool; reference[L]: (tokens, k),
    e.g. the rollout's experts. Per layer: ``load_entropy`` (entropy of the expert load over valid
    token-slots, divided by log(num_experts): 1.0 is perfectly balanced), ``max_load`` and
    ``min_load`` (fraction of token-slots on the busiest / idlest expert) and, with a reference,
    ``topk_changed`` (fraction of valid tokens whose top-k *set* differs from the reference).
    With ``kinds`` (``router_kinds``) that hold both kinds, also the means over each kind's layers,
    ``router/hash/<name>`` and ``router/topk/<name>``.
    """
    return RouterCounts.of(topk_per_layer, num_experts, valid, reference, kinds).stats()


def update_router_counts(recorded: list) -> RouterCounts:
    """``RouterCounts`` over one update pass: ``recorded`` holds a (``RoutingRecorder``,
    ``grpo.batch.MicroBatch``) pair per micro-batch. The reference is the sampler's routing
    (``mb.routed``) when every micro-batch carries it; only positions it covers are compared."""
    num_experts = recorded[0][0].routers[0].num_experts
    layers = len(recorded[0][0].calls[-1])
    # Laid end to end on the device; RouterCounts.of counts there and copies once.
    topk = [torch.cat([rec.calls[-1][i] for rec, _ in recorded]) for i in range(layers)]
    valid = torch.cat([mb.attention_mask.bool().flatten() for _, mb in recorded])
    reference = None
    if all(mb.routed is not None for _, mb in recorded):
        reference = [torch.cat([mb.routed[:, :, i].reshape(-1, mb.routed.shape[-1])
                                for _, mb in recorded]) for i in range(layers)]
        valid = valid & torch.cat([mb.routed_valid.flatten() for _, mb in recorded])
    return RouterCounts.of(topk, num_experts, valid, reference,
                           router_kinds(recorded[0][0].routers))


def load_balancing_loss(model: nn.Module, recorded: RoutingRecorder, valid: Tensor) -> Tensor:
    """The router auxiliary loss of the recorder's last forward call (without its coefficient).

    ``recorded`` must have run with ``keep_logits=True`` over a (B, T) batch; valid (B, T) masks
    padding. Where the model's modeling module has ``load_balancing_loss_func`` (Qwen3-MoE) that
    Switch-Transformer loss is used, with the model's num_experts and top-k; it re-derives the
    top-k from the softmax, so it ignores replay. DeepSeek-V3 has none in transformers: its
    sequence-wise balance loss (DeepSeek-V3 report, eq. 17-20) is computed instead, from the
    recorded (possibly replayed) experts. Both equal 1.0 at perfect balance. Hash-routed layers
    are left out (their selection is a fixed table that no loss can balance), as transformers'
    own DeepSeek-V4 ``router_logits`` leave them out.
    """
    if not recorded.logits or not recorded.logits[-1]:
        raise ValueError(
            "the recorder holds no router logits: use RoutingRecorder(keep_logits=True)"
        )
    topk = [i for i, k in enumerate(router_kinds(recorded.routers)) if k == "topk"]
    logits = [recorded.logits[-1][i] for i in topk]
    experts = [recorded.calls[-1][i] for i in topk]
    router = recorded.routers[topk[0]]
    func = getattr(
        sys.modules[type(base_model(model)).__module__], "load_balancing_loss_func", None
    )
    if func is not None:
        return func(tuple(logits), router.num_experts, router.top_k, attention_mask=valid)
    return _sequence_balance_loss(logits, experts, valid, router.num_experts)


def _sequence_balance_loss(logits: list[Tensor], experts: list[Tensor], valid: Tensor, E: int):
    B, T = valid.shape
    m = valid.to(logits[0].device, torch.float32)  # (B, T)
    n = m.sum(-1).clamp_min(1)  # (B,) valid tokens per sequence
    losses = []
    for lg, idx in zip(logits, experts):
        k = idx.shape[-1]
        s = lg.float().sigmoid()
        s = (s / s.sum(-1, keepdim=True)).view(B, T, E)  # normalised affinities s'
        hits = torch.zeros(idx.shape[0], E, device=idx.device).scatter_add_(
            1, idx.long(), torch.ones(idx.shape, device=idx.device)).view(B, T, E)  # (B, T, E)
        f = (hits * m[..., None]).sum(1) * E / (k * n[:, None])  # (B, E)
        p = (s * m[..., None]).sum(1) / n[:, None]  # (B, E)
        has = (m.sum(-1) > 0).float()  # sequences with a valid token (a masked mean: no sync)
        losses.append(((f * p).sum(-1) * has).sum() / has.sum())
    return torch.stack(losses).mean()
