"""The update step: the GRPO loss of a micro-batch, and the optimiser loop over a ``TrainBatch``.

``microbatch_loss`` is the whole objective for one forward pass, assembled from the tables of
``grpo.losses``: chunked log-probs (``grpo.logprobs``) -> mismatch weights -> policy loss -> KL
and entropy terms -> aggregation with the optimiser batch's ``Norm``. Summing its ``loss`` over
the micro-batches of a minibatch gives that minibatch's loss exactly, so gradient accumulation by
token budget changes memory, never the gradient.

``run_update`` does ``epochs`` passes over the batch, each split into ``minibatches`` optimiser
steps, and stops with ``NonFiniteError`` (naming the step and the tensor) before a NaN or inf
reaches the weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from grpo.batch import (
    Layout,
    MicroBatch,
    TrainBatch,
    make_micro_batch,
    plan_micro_batches,
    to_device,
)
from grpo.logprobs import TokenLogprobs, completion_logprobs, shared_layout
from grpo.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    MISMATCH_CORRECTIONS,
    POLICY_LOSSES,
    ClipParams,
    MismatchParams,
    Norm,
    mismatch_stats,
    topk_forward_kl,
)
from grpo.routing import load_balancing_loss, replay_routing
from grpo.settings import AlgoConfig, TrainConfig
from rollouts.moe_routers import RoutingRecorder


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN or inf; the weights were not touched."""


@dataclass(frozen=True)
class Objective:
    """The loss settings ``microbatch_loss`` needs (built from ``AlgoConfig``)."""

    policy_loss: str = "ppo_clip"
    aggregation: str = "token_mean"
    clip: ClipParams = ClipParams()
    beta: float = 0.0
    kl_estimator: str = "k3"
    kl_in_loss: bool = True
    entropy_coef: float = 0.0
    mismatch: str = "none"
    mismatch_params: MismatchParams = MismatchParams()
    max_tokens: int = 128
    logprob_chunk: int = 256
    aux_loss_coef: float = 0.0
    routing_replay: bool = False
    compute_dtype: str | None = None
    """Autocast dtype of the forward passes (mixed precision), None for the weights' own."""
    share_prompts: bool = False
    """Rows with the same prompt run it once (``train.share_prompts``)."""

    @staticmethod
    def from_config(algo: AlgoConfig, train: TrainConfig, max_tokens: int, mismatch: str,
                    compute_dtype: str | None = None) -> Objective:
        return Objective(
            policy_loss=algo.policy_loss, aggregation=algo.aggregation,
            clip=ClipParams(algo.clip_low, algo.clip_high, algo.dual_clip), beta=algo.beta,
            kl_estimator=algo.kl_estimator, kl_in_loss=algo.kl_in == "loss",
            entropy_coef=algo.entropy_coef, mismatch=mismatch,
            mismatch_params=MismatchParams(algo.mismatch_cap, algo.mismatch_low),
            max_tokens=max_tokens, logprob_chunk=train.logprob_chunk,
            aux_loss_coef=algo.aux_loss_coef, routing_replay=algo.routing_replay,
            compute_dtype=compute_dtype, share_prompts=train.share_prompts)


@dataclass(slots=True)
class Sums:
    """Statistics of an update, over its micro-batches (and ranks): token-weighted sums, which
    the trainer divides by ``tokens``, and extremes. A field set by name that does not exist
    is an AttributeError (slots), never a silent new key.

    During the update the fields are 0-dim tensors on the policy's device, added to without
    reading them (a read would wait for the device once per micro-batch); ``resolved`` reads
    them all at once. An extreme over no token is -inf (``ratio_max``, ``mismatch_max_ratio``)
    or +inf (the minima) on the device and None once resolved: every ratio is an exponential,
    so a real maximum is never -inf, and a real minimum of +inf makes the loss non-finite,
    which stops the step first."""

    tokens: float | Tensor = 0.0
    entropy: float | Tensor = 0.0
    clipped: float | Tensor = 0.0
    """Tokens whose policy ratio was clipped."""
    ratio_sq_dev: float | Tensor = 0.0
    """Sum of (ratio - 1)^2 over tokens."""
    mismatch_kl: float | Tensor = 0.0
    """Sampler-to-trainer KL, token-weighted."""
    mismatch_dropped: float | Tensor = 0.0
    """Tokens the mismatch correction dropped."""
    kl: float | Tensor | None = None
    """KL to the reference; None when the KL term is off."""
    distill_forward_kl: float | Tensor | None = None
    """Forward KL to the teacher's top-k; None outside ``distill.loss: forward_kl``."""
    ratio_max: float | Tensor | None = None
    ratio_min: float | Tensor | None = None
    mismatch_max_ratio: float | Tensor | None = None
    mismatch_min_ratio: float | Tensor | None = None

    def add(self, name: str, value: float | Tensor) -> None:
        old = getattr(self, name)
        value = _kept(value)
        setattr(self, name, value if old is None else old + value)

    def high(self, name: str, value: float | Tensor) -> None:
        self._fold(name, _kept(value), torch.maximum, max)

    def low(self, name: str, value: float | Tensor) -> None:
        self._fold(name, _kept(value), torch.minimum, min)

    def _fold(self, name: str, value: float | Tensor, on_device, on_host) -> None:
        old = getattr(self, name)
        if old is None:
            setattr(self, name, value)
        elif isinstance(old, Tensor) or isinstance(value, Tensor):
            like = old if isinstance(old, Tensor) else value
            setattr(self, name, on_device(torch.as_tensor(old, device=like.device),
                                          torch.as_tensor(value, device=like.device)))
        else:
            setattr(self, name, on_host(old, value))

    def resolved(self) -> Sums:
        """These statistics as Python numbers: every tensor field read in one transfer per
        device, an extreme over no token (an infinity) as None.

        >>> s = Sums(); s.add("tokens", torch.tensor(3.0))
        >>> s.high("ratio_max", torch.tensor(-math.inf)); r = s.resolved(); (r.tokens, r.ratio_max)
        (3.0, None)
        """
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        by_device: dict[torch.device, list[str]] = {}
        for name, v in values.items():
            if isinstance(v, Tensor):
                by_device.setdefault(v.device, []).append(name)
        for names in by_device.values():
            read = torch.stack([values[n].double().reshape(()) for n in names]).tolist()
            values.update(zip(names, read))
        for name in _EXTREMES:
            if values[name] is not None and math.isinf(values[name]) and (
                    (values[name] < 0) == (_EXTREMES[name] is Sums.high)):
                values[name] = None
        return Sums(**values)

    def merge(self, other: Sums) -> None:
        """Add ``other``'s sums to these and widen the extremes by its own.

        >>> a, b = Sums(tokens=2.0, ratio_max=1.5), Sums(tokens=3.0, kl=0.1, ratio_max=1.2)
        >>> a.merge(b); (a.tokens, a.kl, a.ratio_max)
        (5.0, 0.1, 1.5)
        """
        for f in fields(self):
            value = getattr(other, f.name)
            if value is not None:
                _EXTREMES.get(f.name, Sums.add)(self, f.name, value)


def _kept(value: float | Tensor) -> float | Tensor:
    """A statistic as ``Sums`` keeps it: a detached float64 tensor (sums of many micro-batches
    keep their precision), or the Python number it was."""
    return value.detach().double() if isinstance(value, Tensor) else float(value)


# The extremes and how each folds; every other field of Sums is a sum.
_EXTREMES = {"ratio_max": Sums.high, "ratio_min": Sums.low, "mismatch_max_ratio": Sums.high,
             "mismatch_min_ratio": Sums.low}


@dataclass
class MicroLoss:
    loss: Tensor
    """Scalar: this micro-batch's share of the minibatch loss (already normalised)."""


def autocast_to(device: torch.device, compute_dtype: str | None):
    """Autocast on ``device`` in ``compute_dtype`` (mixed precision), or nothing when None."""
    if compute_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, compute_dtype))


def forward_logprobs(model: nn.Module, mb: MicroBatch, chunk: int, replay: bool,
                     recorder: RoutingRecorder | None = None, compute_dtype: str | None = None,
                     extra_ids: Tensor | None = None, runner: nn.Module | None = None,
                     share: bool = False) -> TokenLogprobs:
    """``completion_logprobs`` of a micro-batch, routed as the sampler routed it when ``replay``
    is on and routing was recorded, seen by ``recorder`` if one is given, and run under autocast
    in ``compute_dtype`` when given (mixed precision; the LM head's log-softmax stays float32).
    ``share``: rows with the same prompt run it once, unless routing is replayed (the recorded
    experts are laid out for one pass); the recorder then sees the two passes as one."""
    replaying = replay and mb.routed is not None
    share = share and not replaying
    calls = len(recorder.calls) if recorder is not None else 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(autocast_to(mb.input_ids.device, compute_dtype))
        if replaying:
            stack.enter_context(replay_routing(model, mb.routed, mb.routed_valid))
        if recorder is not None:
            stack.enter_context(recorder)
        if runner is not None:  # data-parallel: the DDP / FSDP2 root (grpo.parallel)
            tl = TokenLogprobs.from_tuple(runner(mb.input_ids, mb.attention_mask,
                                                 mb.prompt_lens, mb.completion_lens, chunk,
                                                 extra_ids, share, mb.layout))
        else:
            tl = completion_logprobs(model, mb.input_ids, mb.attention_mask, mb.prompt_lens,
                                     mb.completion_lens, chunk_tokens=chunk, extra_ids=extra_ids,
                                     share_prompts=share, layout=mb.layout)
    if recorder is not None and len(recorder.calls) == calls + 2:  # the shared-prompt pass
        layout = mb.layout or Layout.read(mb.input_ids, mb.prompt_lens, mb.completion_lens)
        recorder.merge_last(2, shared_layout(layout, mb.input_ids.shape[1]))
    return tl


def microbatch_loss(model: nn.Module, batch: TrainBatch, mb: MicroBatch, obj: Objective,
                    norm: Norm, sums: Sums, recorder: RoutingRecorder | None = None,
                    runner: nn.Module | None = None, scale: float = 1.0) -> MicroLoss:
    """The objective on one micro-batch; adds its statistics to ``sums``. With a teacher's
    top-k in the batch (on-policy distillation, ``distill.loss: forward_kl``) the forward KL
    to it (``grpo.losses.topk_forward_kl``) is added per token. ``runner``: the data-parallel
    root that runs the forward pass (``grpo.parallel``); ``scale`` multiplies the loss (the
    number of ranks, whose gradients DDP and FSDP2 average; 0 for a padding micro-batch)."""
    teacher_ids = None if batch.teacher_ids is None else batch.teacher_ids[mb.rows]
    tl = forward_logprobs(model, mb, obj.logprob_chunk, obj.routing_replay, recorder,
                          obj.compute_dtype, teacher_ids, runner,
                          share=obj.share_prompts)
    dev = tl.logp.device
    c = tl.logp.shape[1]

    def take(t: Tensor) -> Tensor:  # (N, C, ...) -> (b, c, ...)
        return to_device(t[mb.rows][:, :c], dev)

    mask, sampler = take(batch.mask), take(batch.sampler_logp)
    old = take(batch.old_logp) if batch.old_logp is not None else tl.logp.detach()
    adv = to_device(batch.advantages[mb.rows], dev)  # (b,), or (b, C) per-token advantages
    if adv.dim() == 2:
        adv = adv[:, :c]
    w, kept = MISMATCH_CORRECTIONS[obj.mismatch](old, sampler, mask, obj.mismatch_params)
    pol = POLICY_LOSSES[obj.policy_loss](tl.logp, old, adv, mask, obj.clip)
    per_token = pol.loss * w.detach() * kept  # (b, c); dropped tokens contribute 0
    if obj.beta > 0 and obj.kl_in_loss:
        kl = KL_ESTIMATORS[obj.kl_estimator](tl.logp, take(batch.ref_logp))
        per_token = per_token + obj.beta * kl
        sums.add("kl", (kl.detach() * mask).sum())
    if obj.entropy_coef:
        per_token = per_token - obj.entropy_coef * tl.entropy
    if tl.extra_logp is not None:  # (b, c, K) student log-probs of the teacher's top-k
        fkl = topk_forward_kl(tl.extra_logp, take(batch.teacher_logp))  # (b, c)
        per_token = per_token + fkl
        sums.add("distill_forward_kl", (fkl.detach() * mask).sum())
    loss = AGGREGATIONS[obj.aggregation](per_token, mask, norm)
    if obj.aux_loss_coef and recorder is not None:
        valid = mb.attention_mask.bool()
        loss = loss + obj.aux_loss_coef * load_balancing_loss(model, recorder, valid) * (
            float(mask.shape[0]) / max(norm.seqs, 1.0))
    _record(sums, tl.entropy, pol.clipped, pol.ratio, mask, kept, old, sampler)
    return MicroLoss(loss * scale if scale != 1.0 else loss)


def _record(sums: Sums, entropy, clipped, ratio, mask, kept, old, sampler) -> None:
    """Adds a micro-batch's statistics to ``sums`` on the device: masked reductions, with no
    boolean indexing or read that would wait for the device."""
    m = mask.bool()
    ratio = ratio.detach()
    sums.add("tokens", mask.sum())
    sums.add("entropy", (entropy.detach() * mask).sum())
    sums.add("clipped", (clipped & m).sum())
    sums.add("mismatch_dropped", (mask - kept * mask).sum())
    sums.high("ratio_max", ratio.masked_fill(~m, -math.inf).amax())
    sums.low("ratio_min", ratio.masked_fill(~m, math.inf).amin())
    d = torch.where(m, ratio - 1, 0.0)
    sums.add("ratio_sq_dev", (d * d).sum())
    ms = mismatch_stats(old, sampler, mask)
    sums.add("mismatch_kl", ms["kl"] * mask.sum())
    sums.high("mismatch_max_ratio", ms["max_ratio"])
    sums.low("mismatch_min_ratio", ms["min_ratio"])


def check_finite(step: int, name: str, t: Tensor, updated: bool = False) -> None:
    """Raise ``NonFiniteError`` naming the step and tensor if ``t`` holds a NaN or inf."""
    if hasattr(t, "to_local"):  # an FSDP2 shard: each rank checks its own part
        t = t.to_local()
    if not torch.isfinite(t).all():
        state = ("the optimiser step was applied in memory but nothing was saved after it"
                 if updated else "the weights were not updated")
        raise NonFiniteError(f"step {step}: {name} is not finite ({t.flatten()[:4].tolist()}...)"
                             f"; {state}; the last checkpoint is intact")


def check_grad_norm(step: int, model: nn.Module, norm: float) -> None:
    """A finite global norm (read on the host) means every gradient is finite; otherwise name
    the first bad one."""
    if math.isfinite(norm):
        return
    for name, p in model.named_parameters():
        if p.grad is not None:
            check_finite(step, f"gradient of {name}", p.grad)
    check_finite(step, "gradient norm", torch.tensor(norm))


def check_params(step: int, model: nn.Module) -> None:
    """Every trainable parameter finite after the step: one device read for all of them (per
    device), and a search for the first bad one only when one is not."""
    trained = [(n, p.detach()) for n, p in model.named_parameters() if p.requires_grad]
    by_device: dict[torch.device, list[Tensor]] = {}
    for _, p in trained:
        local = p.to_local() if hasattr(p, "to_local") else p  # an FSDP2 shard
        by_device.setdefault(local.device, []).append(torch.isfinite(local).all())
    if all(bool(torch.stack(flags).all()) for flags in by_device.values()):
        return
    for name, p in trained:
        check_finite(step, f"parameter {name}", p, updated=True)


def micro_batches(batch: TrainBatch, rows: list[int], budget: int, pad_id: int, device: Any):
    lengths = [len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids)]
    for plan in plan_micro_batches(lengths, rows, budget):
        yield make_micro_batch(batch, plan, pad_id, device)


@torch.no_grad()
def batch_logprobs(model: nn.Module, batch: TrainBatch, budget: int, pad_id: int, chunk: int,
                   device: Any, replay: bool = False, compute_dtype: str | None = None,
                   share: bool = False, runner: nn.Module | None = None,
                   rows: list[int] | None = None,
                   pad_count: Callable[[int], int] | None = None) -> Tensor:
    """(N, C) log-probs of the completion tokens of ``rows`` (default: every row) under
    ``model``, no gradients; zeros in the other rows. ``runner``: the FSDP2 root that runs
    ``model`` (``grpo.parallel``), else None. ``pad_count``: the number of passes every rank
    runs given this one's (``Parallel.pad_count``: FSDP2 gathers weights in each pass); a rank
    with fewer repeats its last micro-batch and keeps nothing of it."""
    rows = list(range(batch.rows)) if rows is None else rows
    mbs = list(micro_batches(batch, rows or [0], budget, pad_id, device))
    own = len(mbs) if rows else 0
    out = torch.zeros_like(batch.sampler_logp)
    for i in range(pad_count(own) if pad_count else own):
        mb = mbs[min(i, len(mbs) - 1)]
        tl = forward_logprobs(model, mb, chunk, replay, compute_dtype=compute_dtype, share=share,
                              runner=runner)
        if i < own:
            out[mb.rows, : tl.logp.shape[1]] = tl.logp.cpu()
    return out


def minibatch_order(n: int, minibatches: int, seed: int, step: int, epoch: int) -> list[list[int]]:
    """Rows shuffled by a generator of (seed, step, epoch), cut into ``minibatches`` parts."""
    if minibatches == 1:
        return [list(range(n))]
    g = torch.Generator().manual_seed(hash((seed, step, epoch)) % 2**63)
    perm = torch.randperm(n, generator=g).tolist()
    return [perm[i::minibatches] for i in range(minibatches)]
