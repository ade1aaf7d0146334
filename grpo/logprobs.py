"""Per-token log-probabilities and entropies of completion tokens, without ``[B, T, V]`` logits.

A causal LM's forward returns logits for every position: at a 151,936-token vocabulary, 8 x 1,024
tokens of fp32 logits are 5 GB, and their log-softmax and its gradient as much again. The trainer
needs only two numbers per completion token: the log-probability of the token that was sampled
and (for statistics or a bonus) the entropy of the distribution it was sampled from.

``completion_logprobs`` therefore runs the model's decoder (the transformer without its LM head),
gathers the final hidden states of the positions that predict completion tokens (padding-free:
``(M, H)`` for ``M`` completion tokens), and applies the LM head in chunks of ``chunk_tokens``
rows under activation checkpointing: each chunk's ``(chunk, V)`` logits live only while that
chunk's log-softmax is taken, in the forward pass and again in the backward pass. Peak memory of
the head is ``chunk_tokens x V`` floats, whatever the batch. Gradients flow into the hidden
states, the LM head, and any LoRA adapter on either; the entropy is computed from the same chunk
(its gradient is exact too, so an entropy bonus works), and the KL to a reference and the
mismatch correction use the returned log-probs, so none of them needs the full logits.

What it assumes: the model's output logits are ``lm_head(decoder(x).last_hidden_state)``. Models
that post-process logits (Gemma's ``final_logit_softcapping``, Cohere's ``logit_scale``) are
refused with a clear error rather than computed wrongly. Log-probs are at temperature 1: the raw
distribution, which is what every engine reports (``rollouts.hf``, ``rollouts.vllm_engine``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from grpo.batch import Layout, to_device
from rollouts.sharing import SHARED_PROMPT_MODELS

_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "output_multiplier")


@dataclass
class TokenLogprobs:
    logp: Tensor
    """(B, C) log-probability of each completion token; 0 where ``mask`` is 0."""
    entropy: Tensor
    """(B, C) entropy (nats) of the distribution each completion token was drawn from."""
    mask: Tensor
    """(B, C) 1.0 on real completion tokens, 0.0 on padding."""
    extra_logp: Tensor | None = None
    """(B, C, K) log-probabilities of the ``extra_ids`` asked for (a teacher's top-k tokens in
    on-policy distillation), from the same logits; None when none were asked for."""

    @classmethod
    def from_tuple(cls, out: tuple[Tensor, ...]) -> TokenLogprobs:
        """The tuple a ``grpo.parallel.LogprobModule`` returns (DDP / FSDP2 roots return
        tensors, not dataclasses)."""
        return cls(*out[:3], out[3] if len(out) > 3 else None)


def split_model(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder, lm_head) of a transformers causal LM, or of a peft model wrapping one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    for key in _LOGIT_POSTPROCESSING:
        if getattr(config, key, None) not in (None, 1, 1.0):
            raise ValueError(
                f"{type(base).__name__} post-processes its logits ({key}={getattr(config, key)}); "
                "r1kit's chunked log-probs assume logits = lm_head(hidden)"
            )
    head = base.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(base).__name__} has no output embeddings (LM head)")
    return base.get_decoder(), head


def _head_chunk(head: nn.Module, h: Tensor, targets: Tensor,
                extra: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    # h (m, H), targets (m,), extra (m, K) or None -> logp (m,), entropy (m,), (m, K) or None
    logits = head(h).float()  # (m, V): lives only inside this chunk
    logz = torch.logsumexp(logits, dim=-1)  # (m,)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - logz
    entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    extra_logp = None if extra is None else logits.gather(-1, extra) - logz[:, None]
    return logp, entropy, extra_logp


def chunked_head_logprobs(
    head: nn.Module, hidden: Tensor, targets: Tensor, chunk_tokens: int = 1024,
    extra: Tensor | None = None,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Log-prob of ``targets`` and entropy under ``head(hidden)``, ``chunk_tokens`` rows at a
    time. hidden (M, H), targets (M,) -> (M,), (M,). Checkpointed when gradients are on.
    With ``extra`` (M, K) token ids, also their log-probs (M, K), from the same chunk."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    grad = torch.is_grad_enabled() and (hidden.requires_grad or
                                        any(p.requires_grad for p in head.parameters()))
    logps, ents, extras = [], [], []
    for s in range(0, hidden.shape[0], chunk_tokens):
        h, t = hidden[s : s + chunk_tokens], targets[s : s + chunk_tokens]
        e = None if extra is None else extra[s : s + chunk_tokens]
        if grad:
            lp, en, ex = checkpoint(_head_chunk, head, h, t, e, use_reentrant=False)
        else:
            lp, en, ex = _head_chunk(head, h, t, e)
        logps.append(lp)
        ents.append(en)
        extras.append(ex)
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        if extra is None:
            return empty, empty
        return empty, empty, hidden.new_zeros(0, extra.shape[1], dtype=torch.float32)
    if extra is None:
        return torch.cat(logps), torch.cat(ents)
    return torch.cat(logps), torch.cat(ents), torch.cat(extras)


@torch.no_grad()
def chunked_head_topk(head: nn.Module, hidden: Tensor, targets: Tensor, k: int,
                      chunk_tokens: int = 1024,
                      vocab_limit: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` most likely tokens under ``head(hidden)`` (among ids below ``vocab_limit``),
    their log-probs and the log-prob of ``targets``, ``chunk_tokens`` rows at a time, without
    gradients.
    hidden (M, H), targets (M,) -> ids (M, k) long, logp (M, k), target logp (M,)."""
    ids, logps, tlogps = [], [], []
    for s in range(0, hidden.shape[0], chunk_tokens):
        logits = head(hidden[s : s + chunk_tokens]).float()  # (m, V)
        logz = torch.logsumexp(logits, dim=-1, keepdim=True)  # (m, 1)
        top = torch.topk(logits[:, :vocab_limit], k, dim=-1)
        ids.append(top.indices)
        logps.append(top.values - logz)
        tlogps.append((logits.gather(-1, targets[s : s + chunk_tokens, None]) - logz)[:, 0])
    if not ids:
        return (hidden.new_zeros(0, k, dtype=torch.long),
                hidden.new_zeros(0, k, dtype=torch.float32),
                hidden.new_zeros(0, dtype=torch.float32))
    return torch.cat(ids), torch.cat(logps), torch.cat(tlogps)


def _completion_positions(layout: Layout, device: torch.device):
    """mask (B, C) of real completion tokens, and for the M of them (row-major) their rows,
    columns and positions in the input: built on the host from the layout, then copied."""
    clens = np.asarray(layout.completion_lens, dtype=np.int64)
    rows = np.repeat(np.arange(len(clens)), clens)  # (M,) row-major
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(clens) - clens, clens)
    pos = np.asarray(layout.prompt_lens, dtype=np.int64)[rows] + cols
    rows_t, cols_t, pos_t, clens_t = (to_device(torch.from_numpy(x), device)
                                      for x in (rows, cols, pos, clens))
    mask = torch.arange(int(clens.max(initial=0)), device=device)[None, :] < clens_t[:, None]
    return mask, rows_t, cols_t, pos_t


def shared_layout(layout: Layout, width_t: int) -> Tensor:
    """(B * T,) for each position of the right-padded (B, T) rows (``width_t`` = T), row-major,
    the index of the same token among the shared-prompt pass's tokens laid end to end: the P
    distinct prompts (P x Lp), then the B completions (B x C). Padding positions get an
    arbitrary valid index. Built on the host from ``layout``, which must have owners."""
    firsts, owner = (torch.tensor(x) for x in layout.owners)
    plens, clens = torch.tensor(layout.prompt_lens), layout.completion_lens
    b = len(clens)
    width, c = max(layout.prompt_lens[f] for f in layout.owners[0]), max(max(clens), 1)
    pos = torch.arange(width_t)[None, :]  # (1, T)
    prompt = owner[:, None] * width + pos  # (B, T)
    completion = (len(firsts) * width + torch.arange(b)[:, None] * c
                  + (pos - plens[:, None]).clamp(0, c - 1))
    return torch.where(pos < plens[:, None], prompt, completion).flatten()


def _shares_prompts(decoder: nn.Module) -> bool:
    """Whether the shared-prompt pass equals the plain one for this decoder: a tested model type,
    full attention in every layer (transformers' sliding-window mask measures distance in cache
    slots, which padded prompt slots shift), and no gradient checkpointing (it turns the cache
    off in training)."""
    config = decoder.config
    if getattr(config, "model_type", None) not in SHARED_PROMPT_MODELS:
        return False
    if getattr(config, "use_sliding_window", False) or any(
            kind != "full_attention" for kind in getattr(config, "layer_types", None) or []):
        return False
    return not (decoder.training and getattr(decoder, "gradient_checkpointing", False))


def completion_hidden(decoder: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                      prompt_lens: Tensor, completion_lens: Tensor, share_prompts: bool = False,
                      layout: Layout | None = None
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int]:
    """The final hidden states that predict each completion token, padding-free: ``(hidden (M, H),
    targets (M,), mask (B, C), rows (M,), cols (M,))`` and the number of decoder calls made.

    With ``share_prompts`` (and a model type in ``SHARED_PROMPT_MODELS``), rows that share a
    prompt run it once: a first pass over the P distinct prompts (right-padded) fills a KV cache,
    which is indexed out to the B rows, and a second pass runs only the completions against it
    (explicit positions; padded prompt slots masked as keys). A group of n samples then costs one
    prompt and n completions instead of n of each, in the forward and in the backward pass
    (gradients reach the prompt's activations through the cache). Without sharing, one pass.

    ``layout``: the rows' ``Layout`` on the host (the trainer's micro-batches carry one); without
    it the lengths and prompts are read from the tensors, a host sync on a device."""
    if layout is None:
        layout = Layout.read(input_ids, prompt_lens, completion_lens, owners=share_prompts)
    dev = input_ids.device
    mask, rows, cols, pos = _completion_positions(layout, dev)
    if not share_prompts or layout.owners is None or not _shares_prompts(decoder):
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask,
                         use_cache=False).last_hidden_state  # (B, T, H)
        return hidden[rows, pos - 1], input_ids[rows, pos], mask, rows, cols, 1
    firsts, owner, plens = (to_device(torch.tensor(x, dtype=torch.long), dev)
                            for x in (*layout.owners, layout.prompt_lens))
    width = max(layout.prompt_lens[f] for f in layout.owners[0])
    p_mask = (torch.arange(width, device=dev)[None, :] < plens[firsts][:, None]).long()  # (P, Lp)
    pre = decoder(input_ids=input_ids[firsts, :width], attention_mask=p_mask,
                  position_ids=torch.arange(width, device=dev)[None].expand(len(firsts), -1),
                  use_cache=True)
    cache = pre.past_key_values
    cache.batch_select_indices(owner)  # each row's copy of its prompt's keys and values
    c = mask.shape[1]
    j = torch.arange(c, device=dev)[None, :]  # (1, C)
    take = (plens[:, None] + j).clamp(max=input_ids.shape[1] - 1)  # (B, C)
    c_ids = torch.where(mask, input_ids.gather(1, take), input_ids[:, :1])  # (B, C)
    out = decoder(input_ids=c_ids, attention_mask=torch.cat([p_mask[owner], mask.long()], 1),
                  position_ids=plens[:, None] + j, past_key_values=cache, use_cache=True)
    # Completion token 0 is predicted by the prompt's last position, token j by completion j-1.
    last = pre.last_hidden_state[owner[rows], plens[rows] - 1]  # (M, H)
    inner = out.last_hidden_state[rows, (cols - 1).clamp(min=0)]  # (M, H)
    hidden = torch.where((cols == 0)[:, None], last, inner)
    return hidden, input_ids[rows, pos], mask, rows, cols, 2


def completion_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_lens: Tensor,
    completion_lens: Tensor,
    *,
    chunk_tokens: int = 1024,
    extra_ids: Tensor | None = None,
    share_prompts: bool = False,
    layout: Layout | None = None,
) -> TokenLogprobs:
    """Log-probs and entropies of the completion tokens of right-padded rows.

    input_ids, attention_mask (B, T): row b is prompt (``prompt_lens[b]`` tokens) then completion
    (``completion_lens[b]`` tokens) then padding. Returns (B, C) tensors, C = max completion length.
    ``extra_ids`` (B, >= C, K): at each completion position, K more token ids whose log-probs
    are returned as ``extra_logp`` (B, C, K) (0 on padding). ``share_prompts``: rows with the
    same prompt run it once (``completion_hidden``). ``layout``: the rows' ``Layout``, if the
    caller holds it (no host sync).
    """
    decoder, head = split_model(model)
    h, targets, mask, rows, cols, _ = completion_hidden(
        decoder, input_ids, attention_mask, prompt_lens, completion_lens, share_prompts, layout)
    b, c = mask.shape
    extra = None if extra_ids is None else extra_ids.to(input_ids.device)[rows, cols]  # (M, K)
    got = chunked_head_logprobs(head, h, targets, chunk_tokens, extra)
    logp = h.new_zeros(b, c, dtype=torch.float32).index_put((rows, cols), got[0])
    entropy = h.new_zeros(b, c, dtype=torch.float32).index_put((rows, cols), got[1])
    extra_logp = None
    if extra is not None:
        extra_logp = h.new_zeros(b, c, extra.shape[1], dtype=torch.float32).index_put(
            (rows, cols), got[2])
    return TokenLogprobs(logp, entropy, mask.float(), extra_logp)


@torch.no_grad()
def completion_topk(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                    prompt_lens: Tensor, completion_lens: Tensor, k: int, *,
                    chunk_tokens: int = 1024, vocab_limit: int | None = None,
                    share_prompts: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """At every completion position of right-padded rows, the model's ``k`` most likely next
    tokens and their log-probs, ids (B, C, k) long and logp (B, C, k), and the log-prob of the
    completion token itself (B, C); all 0 on padding. One forward pass."""
    decoder, head = split_model(model)
    h, targets, mask, rows, cols, _ = completion_hidden(
        decoder, input_ids, attention_mask, prompt_lens, completion_lens, share_prompts)
    ids_flat, logp_flat, tlogp_flat = chunked_head_topk(head, h, targets, k, chunk_tokens,
                                                        vocab_limit)
    dev = input_ids.device
    ids = torch.zeros(*mask.shape, k, dtype=torch.long, device=dev).index_put((rows, cols),
                                                                              ids_flat)
    logp = torch.zeros(*mask.shape, k, device=dev).index_put((rows, cols), logp_flat)
    tlogp = torch.zeros(*mask.shape, device=dev).index_put((rows, cols), tlogp_flat)
    return ids, logp, tlogp
