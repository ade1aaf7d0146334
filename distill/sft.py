"""Supervised fine-tuning on (prompt, completion) pairs: packed rows, loss on completion tokens only.

The one supervised trainer of r1kit: the embedded base checkpoint (``r1kit tiny --base``) is made
with it, and distillation from verified teacher traces uses it too.

- **Packing.** Examples are laid end to end into rows of at most ``row_tokens`` tokens (first
  fit, in the given order), with position ids restarting at 0 for each example and no attention
  mask: transformers then builds a block-diagonal causal mask from the position ids
  (``masking_utils.find_packed_sequence_indices``), so an example never attends to its
  neighbours and no compute goes to padding beyond the end of a row. ``tests/test_sft.py``
  checks that a packed row gives the same log-probs as each example alone.
- **Loss.** Mean negative log-likelihood over completion tokens only (prompt tokens are context),
  token-weighted across the step (every completion token counts the same, whichever row it is
  in). The LM head runs in chunks (``grpo.logprobs.chunked_head_logprobs``), so no ``[B, T, V]``
  logits exist at any vocabulary size.
- An example longer than ``row_tokens`` is an error, not a silent truncation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from grpo.logprobs import chunked_head_logprobs, split_model


@dataclass(frozen=True)
class SFTExample:
    prompt_ids: list[int]
    completion_ids: list[int]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass
class PackedBatch:
    """Rows of packed examples, right-padded to the longest row."""

    input_ids: Tensor
    """(B, T) token ids."""
    position_ids: Tensor
    """(B, T) position within each example (restarts at 0); padding continues the last one."""
    loss_mask: Tensor
    """(B, T) bool: True where the token is a completion token (predicted from position t-1)."""

    @property
    def tokens(self) -> int:
        return int(self.loss_mask.sum())


def pack(examples: Sequence[SFTExample], row_tokens: int) -> list[list[SFTExample]]:
    """First-fit packing, in order: each example goes into the first row with room for it.

    >>> rows = pack([SFTExample([1], [2, 3]), SFTExample([4], [5]), SFTExample([6], [7, 8])], 5)
    >>> [[len(e) for e in row] for row in rows]
    [[3, 2], [3]]
    """
    rows: list[list[SFTExample]] = []
    room: list[int] = []
    for ex in examples:
        if len(ex) > row_tokens:
            raise ValueError(f"an example of {len(ex)} tokens does not fit row_tokens={row_tokens}")
        if not ex.completion_ids:
            raise ValueError("an example has no completion tokens")
        for i, left in enumerate(room):
            if len(ex) <= left:
                rows[i].append(ex)
                room[i] -= len(ex)
                break
        else:
            rows.append([ex])
            room.append(row_tokens - len(ex))
    return rows


def collate(rows: Sequence[Sequence[SFTExample]], pad_id: int) -> PackedBatch:
    """Packed rows -> tensors (see ``PackedBatch``)."""
    width = max(sum(len(e) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    loss = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, row in enumerate(rows):
        t = 0
        for e in row:
            n, p = len(e), len(e.prompt_ids)
            ids[b, t:t + n] = torch.tensor(e.prompt_ids + e.completion_ids)
            pos[b, t:t + n] = torch.arange(n)
            loss[b, t + p:t + n] = True
            t += n
        pos[b, t:] = torch.arange(width - t) + (pos[b, t - 1] + 1 if t else 0)
    return PackedBatch(ids, pos, loss)


def token_logprobs(model: nn.Module, batch: PackedBatch, chunk_tokens: int = 1024) -> Tensor:
    """Log-prob of every completion token of ``batch``, in row-major order: (M,)."""
    decoder, head = split_model(model)
    hidden = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids,
                     attention_mask=None, use_cache=False).last_hidden_state  # (B, T, H)
    rows, cols = batch.loss_mask.nonzero(as_tuple=True)  # M completion tokens
    logp, _ = chunked_head_logprobs(head, hidden[rows, cols - 1], batch.input_ids[rows, cols],
                                    chunk_tokens)
    return logp


@dataclass
class SFTConfig:
    steps: int
    lr: float = 1e-3
    row_tokens: int = 512
    rows_per_step: int = 8
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0


def train_sft(model: nn.Module, examples: Sequence[SFTExample], cfg: SFTConfig, pad_id: int,
              on_step: Callable[[int, float], None] | None = None,
              tokens: list[int] | None = None) -> list[float]:
    """Train ``model`` in place for ``cfg.steps`` steps of ``rows_per_step`` packed rows, cycling
    through ``examples`` in a fresh seeded order each epoch; AdamW, linear warm-up then cosine
    decay to 10%. Returns the loss of each step; ``on_step(step, loss)`` after each; ``tokens``,
    if given, gets each step's token count (prompt and completion, no padding)."""
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rows: list[list[SFTExample]] = []
    losses = []
    model.train()
    for step in range(cfg.steps):
        if len(rows) < cfg.rows_per_step:
            order = list(examples)
            rng.shuffle(order)
            rows += pack(order, cfg.row_tokens)
        batch = collate(rows[:cfg.rows_per_step], pad_id)
        if tokens is not None:
            tokens.append(sum(len(e) for row in rows[:cfg.rows_per_step] for e in row))
        rows = rows[cfg.rows_per_step:]
        loss = -token_logprobs(model, batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses
