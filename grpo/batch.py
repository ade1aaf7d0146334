"""Typed batches that flow between the trainer's steps.

``Rollout`` (rollout + score) -> ``TrainBatch`` (advantages, masks, reference and old log-probs)
-> ``MicroBatch`` es (what one forward pass sees). Each ``TrainBatch`` tensor is indexed by
sequence row ``N`` and completion position ``C`` (right-padded); a micro-batch selects rows and
crops columns to its own longest completion.

A ``Rollout`` carries the policy ``version`` that sampled it, so a one-step-off-policy pipeline
(rollouts for step t+1 sampled while step t trains) can hand the trainer a rollout of an older
version without changing anything downstream: the mismatch correction already weights samples by
the sampler's own log-probs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rollouts.sharing import owners_of
from rollouts.types import Group


@dataclass
class Rollout:
    """What one rollout step produced: the kept groups, scored."""

    problems: list[Any]
    """One problem (``.question``, ``.answer``) per kept group."""
    groups: list[Group]
    """G groups of n completions each."""
    rewards: Tensor
    """(G, n) total reward of each completion."""
    per_reward: dict[str, Tensor]
    """Reward name -> (G, n) unweighted scores."""
    version: int
    """Policy version (optimiser steps so far) that sampled these completions."""
    stats: dict[str, float] = field(default_factory=dict)
    """Reward, length and sampling statistics over every sampled group, dropped ones included."""


@dataclass
class TrainBatch:
    """Everything the update needs, one row per completion (N = G * n)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    sampler_logp: Tensor
    """(N, C) the sampler's log-probs of the completion tokens (0 on padding)."""
    mask: Tensor
    """(N, C) 1.0 on completion tokens that count in the loss (truncated rows are 0 if masked)."""
    token_mask: Tensor
    """(N, C) 1.0 on every completion token."""
    advantages: Tensor
    """(N,) one advantage per completion, or (N, C) one per completion token (on-policy
    distillation: the teacher's per-token signal); the policy losses broadcast (N,) over C."""
    rewards: Tensor
    """(N,) total reward (after any KL-in-reward penalty)."""
    truncated: Tensor
    """(N,) bool: the completion hit the token budget."""
    routed: list[Tensor | None]
    """Per row, the sampler's routed experts ((P + C - 1, L, k), see ``Completion``) or None."""
    old_logp: Tensor | None = None
    """(N, C) the trainer's log-probs under the rollout policy; None: taken from the first
    forward of the update (exact when the step makes one optimiser step)."""
    ref_logp: Tensor | None = None
    """(N, C) the reference policy's log-probs; None when beta = 0."""
    teacher_ids: Tensor | None = None
    """(N, C, K) a distillation teacher's K most likely tokens at each completion position
    (``distill.loss: forward_kl``), else None."""
    teacher_logp: Tensor | None = None
    """(N, C, K) the teacher's log-probs of ``teacher_ids``."""
    stats: dict[str, float] = field(default_factory=dict)
    """Statistics of preparing the batch (a distillation teacher's KL and tokens), logged."""

    @property
    def rows(self) -> int:
        return len(self.completion_ids)


@dataclass(frozen=True)
class Layout:
    """Where each right-padded row's prompt and completion lie, held on the host: the passes
    index by these, and knowing them without reading the device keeps a pass free of host
    syncs. (A dataclass of tuples: DDP and FSDP2 move tensor arguments to the device, not
    this.)"""

    prompt_lens: tuple[int, ...]
    completion_lens: tuple[int, ...]
    owners: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    """Rows that share a prompt, ``(firsts, owner)`` as ``rollouts.sharing.owners_of`` gives
    them, or None when no two rows do."""

    @staticmethod
    def of(prompts: Sequence[Sequence[int]], completion_lens: Sequence[int]) -> Layout:
        """The layout of rows given their prompts' token ids (``grpo.batch.make_micro_batch``)."""
        found = owners_of(prompts)
        return Layout(tuple(len(p) for p in prompts), tuple(int(n) for n in completion_lens),
                      None if found is None else (tuple(found[0]), tuple(found[1])))

    @staticmethod
    def read(input_ids: Tensor, prompt_lens: Tensor, completion_lens: Tensor,
             owners: bool = True) -> Layout:
        """The layout of tensors, for callers that hold no ``Layout``: reads them on the host (a
        sync when they live on a device); the prompts' ids only when ``owners`` is asked for."""
        plens = prompt_lens.tolist()
        if owners:
            return Layout.of([row[:n] for row, n in zip(input_ids.tolist(), plens)],
                             completion_lens.tolist())
        return Layout(tuple(plens), tuple(completion_lens.tolist()))


@dataclass
class MicroBatch:
    """One forward pass: rows of prompt + completion, right-padded to the longest."""

    rows: Tensor
    """(b,) row indices into the ``TrainBatch``."""
    input_ids: Tensor
    """(b, T)"""
    attention_mask: Tensor
    """(b, T)"""
    prompt_lens: Tensor
    """(b,)"""
    completion_lens: Tensor
    """(b,)"""
    routed: Tensor | None = None
    """(b, T, L, k) experts to replay per input position, or None."""
    routed_valid: Tensor | None = None
    """(b, T) positions whose experts are replayed."""
    layout: Layout | None = None
    """The rows' ``Layout`` (lengths and shared prompts, on the host), so that a
    pass indexes without reading the device; None: read from the tensors when needed."""

    @property
    def width(self) -> int:
        return int(self.completion_lens.max())


def to_device(t: Tensor, device: Any) -> Tensor:
    """``t`` (on the host) on ``device``: on CUDA from pinned memory without blocking, so the
    copy queues behind the device's work instead of waiting for it."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def pad_rows(rows: list[list[float]], width: int, value: float = 0.0) -> Tensor:
    """Right-pad ragged rows into a (len(rows), width) float tensor."""
    out = torch.full((len(rows), width), value, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r[:width], dtype=torch.float32)
    return out


def plan_micro_batches(lengths: list[int], rows: list[int], token_budget: int) -> list[list[int]]:
    """Split ``rows`` into micro-batches of at most ``token_budget`` padded tokens.

    Rows are sorted by length (longest first) so each micro-batch pads tightly; a row longer
    than the budget gets a micro-batch of its own.

    >>> plan_micro_batches([5, 3, 8, 2], [0, 1, 2, 3], token_budget=16)
    [[2, 0], [1, 3]]
    """
    order = sorted(rows, key=lambda r: (-lengths[r], r))
    plans: list[list[int]] = []
    for r in order:
        if plans and (len(plans[-1]) + 1) * lengths[plans[-1][0]] <= token_budget:
            plans[-1].append(r)
        else:
            plans.append([r])
    return plans


def make_micro_batch(batch: TrainBatch, rows: list[int], pad_id: int, device: Any) -> MicroBatch:
    """Right-padded input tensors for ``rows`` of ``batch``, with replayed routing if recorded."""
    seqs = [batch.prompt_ids[r] + batch.completion_ids[r] for r in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
    clens = [len(batch.completion_ids[r]) for r in rows]
    mb = MicroBatch(
        rows=torch.tensor(rows),
        input_ids=to_device(ids, device),
        attention_mask=to_device(att, device),
        prompt_lens=torch.tensor([len(batch.prompt_ids[r]) for r in rows]),
        completion_lens=torch.tensor(clens),
        layout=Layout.of([batch.prompt_ids[r] for r in rows], clens),
    )
    recorded = [batch.routed[r] for r in rows]
    if all(x is not None for x in recorded):
        _, layers, k = recorded[0].shape
        routed = torch.zeros((len(rows), width, layers, k), dtype=torch.long)
        valid = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, x in enumerate(recorded):
            routed[i, : x.shape[0]] = x.long()
            valid[i, : x.shape[0]] = True
        mb.routed, mb.routed_valid = to_device(routed, device), to_device(valid, device)
    return mb
