"""``HFEngine``: batched transformers generation with a KV cache, on CPU or GPU.

It samples from a live transformers (or peft) model, so ``update_weights(model)`` only swaps the
reference: the engine then samples from exactly the weights the trainer holds, at no copy cost.
The one exception is a model sharded by FSDP2 (its parameters are DTensors spread over ranks):
the engine then keeps its own plain copy, built on the first sync and refilled on each one from
``rollouts.weights.iter_live_weights`` (one gathered layer at a time, LoRA merged), so sampling
runs on one rank without collectives.

Decoding is r1kit's own loop over the model's forward with its KV cache (``_decode``), not
``generate``: per token it runs one forward, takes the raw log-softmax of the last position, and
samples, with nothing else in between. Three reasons:

- Speed. On small models ``generate``'s per-token machinery (logits processors, stopping
  criteria, input preparation, output bookkeeping) costs as much as the forward itself;
  ``r1kit bench train`` measures the step.
- Memory. Only the chosen tokens' log-probs are kept, never ``(B, S, V)`` logits
  (``output_logits=True`` stored them all).
- Exactness. Sampling follows ``Sampling`` and nothing else: a checkpoint's
  ``generation_config`` (Qwen3 ships ``top_k=20, top_p=0.95, temperature=0.6``) cannot change the
  distribution behind the caller's back, as it did through ``generate``'s merge. The vLLM engines
  also sample from the request's parameters alone.

Logprobs are those of the raw model distribution (temperature 1, before top-p/top-k): the
quantity GRPO's importance ratio needs, and what the vLLM engines report. Top-k and top-p filter
as transformers' ``TopKLogitsWarper`` and ``TopPLogitsWarper`` do (ties at the k-th logit kept;
the top-p set is the smallest whose mass reaches ``top_p``). ``sleep``/``wake`` do nothing here:
the weights are the trainer's own.

Randomness is counter-based (``row_uniforms``): the uniform behind token ``t`` of completion ``c``
is a hash of (seed, ``c``, ``t``), with ``c = (Sampling.first_prompt + i) * n + j`` for sample
``j`` of prompt ``i``, computed in integer arithmetic that gives the same bits on every device.
So a seeded draw does not depend on which rows share a forward batch, on ``batch_size``, or on
how a batch is split over calls or ranks (the trainer's every-rank rollout relies on it); the
tokens can differ only where the logits themselves differ in rounding, by a uniform within that
rounding of a token boundary. Unseeded sampling takes a fresh seed from torch's global
generator (which advances it); seeded sampling leaves the caller's RNG state alone.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from rollouts.engine import check_generate_args, peak_memory_bytes
from rollouts.mla import incremental_expansion
from rollouts.model_check import check_causal_lm
from rollouts.moe_routers import RoutingRecorder, moe_routers
from rollouts.prompts import encode_prompt
from rollouts.sharing import SHARED_PROMPT_MODELS, prompt_owners
from rollouts.types import Completion, GenerationStats, Group, Sampling
from rollouts.weights import iter_live_weights

ANY_EVERY = 8
"""On a GPU, decode steps between host reads of whether any row still runs: at most
``ANY_EVERY - 1`` steps of padding are sampled after the last row ends, and dropped."""


def _any_every(device: torch.device) -> int:
    return ANY_EVERY if device.type == "cuda" else 1


def _hf_config(model: Any) -> Any:
    """The transformers config of ``model`` (a peft model's base model's)."""
    return model.get_base_model().config if hasattr(model, "get_base_model") else model.config


class HFEngine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        device: str | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
        max_model_len: int | None = None,
        record_routing: bool = False,
        share_prompts: bool = True,
        compute_dtype: torch.dtype | None = None,
        incremental_mla: bool = True,
    ):
        """``model`` is a live model or a checkpoint folder; ``batch_size`` counts sequences
        (prompt x completion) per forward batch; ``record_routing`` fills
        ``Completion.routed_experts`` (MoE models only, see ``grpo.routing``);
        ``share_prompts``: a prompt repeated in a batch (a group's samples) is prefilled once
        (``_prefill``); ``compute_dtype``: decode under autocast in this dtype (a policy with
        float32 master weights trained in mixed precision samples in the dtype its training
        passes compute in, not in float32); ``incremental_mla``: an MLA model's decode steps
        expand only the cache positions they add (``rollouts.mla``)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, (str, Path)):
            check_causal_lm(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
            model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if tokenizer is None:
            raise ValueError("a tokenizer is required when passing a live model")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_model_len = max_model_len or model.config.max_position_embeddings
        self.record_routing = record_routing
        self.share_prompts = share_prompts
        self.compute_dtype = compute_dtype
        self.incremental_mla = incremental_mla
        # DeepSeek-V4's compressed attention pools fixed windows of tensor positions, so a
        # left-padded row would pool padding: such models batch only prompts of one length.
        self.equal_length_batches = getattr(model.config, "model_type", "") == "deepseek_v4"
        if record_routing:
            moe_routers(model)  # fail now, not at the first generate, if the model has no routers
        self.last_stats: GenerationStats | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompts: Sequence[str], n: int, sampling: Sampling) -> list[Group]:
        check_generate_args(prompts, n)
        tok = self.tokenizer
        prompt_ids = [encode_prompt(tok, p) for p in prompts]
        for i, ids in enumerate(prompt_ids):
            if len(ids) + sampling.max_tokens > self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens; with max_tokens={sampling.max_tokens} it "
                    f"exceeds the context of {self.max_model_len} tokens"
                )
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        # One row per (prompt, sample), prompt-major, so a group's samples are contiguous; each
        # with its completion index (the key of its random stream, ``row_uniforms``).
        rows = list(enumerate((i, ids) for i, ids in enumerate(prompt_ids) for _ in range(n)))
        groups = [Group(p, ids, []) for p, ids in zip(prompts, prompt_ids)]
        was_training = self.model.training
        self.model.eval()
        seed = sampling.seed
        if seed is None:  # fresh randomness: a seed from (and advancing) the global generator
            seed = int(torch.randint(0, 2**62, ()))
        first = sampling.first_prompt * n
        try:
            with torch.no_grad(), self._autocast():
                for batch in self._batches(rows):
                    ids = [r[1][1] for r in batch]
                    keys = row_keys(seed, [first + k for k, _ in batch], self.device)
                    for (_, (i, _)), c in zip(batch, self._sample(ids, sampling, keys)):
                        groups[i].completions.append(c)
        finally:
            self.model.train(was_training)
        self.last_stats = GenerationStats(
            prompts=len(prompts),
            completions=len(rows),
            new_tokens=sum(len(c.token_ids) for g in groups for c in g.completions),
            seconds=time.perf_counter() - start,
            peak_memory_bytes=peak_memory_bytes(self.device),
        )
        return groups

    def _autocast(self):
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def _batches(self, rows: list[tuple[int, tuple[int, list[int]]]]
                 ) -> list[list[tuple[int, tuple[int, list[int]]]]]:
        """Forward batches of at most ``batch_size`` rows ``(completion, (prompt, ids))``, in
        order; with ``equal_length_batches`` only rows whose prompts have one length share a
        batch."""
        buckets: dict[int, list[tuple[int, tuple[int, list[int]]]]] = {}
        for row in rows:
            buckets.setdefault(len(row[1][1]) if self.equal_length_batches else 0,
                               []).append(row)
        return [rs[b : b + self.batch_size] for rs in buckets.values()
                for b in range(0, len(rs), self.batch_size)]

    def _sample(self, prompt_ids: list[list[int]], s: Sampling,
                keys: torch.Tensor) -> list[Completion]:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(ids) for ids in prompt_ids)
        # Left padding: every row's last prompt token sits at the same position.
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in prompt_ids])  # (B, T)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in prompt_ids])
        recorder = self._recorder()
        expansion = (incremental_expansion(self.model) if self.incremental_mla
                     else contextlib.nullcontext())
        with recorder, expansion:
            new, logp = self._decode(input_ids.to(self.device), mask.to(self.device), s, pad,
                                     keys)
        done = [self._completion(new[r].tolist(), logp[r].tolist(), s) for r in range(len(new))]
        if self.record_routing:
            del recorder.calls[new.shape[1]:]  # the passes of steps that sampled only padding
            routed = _routed_experts(recorder, len(new), width + new.shape[1] - 1)  # (B, W, L, k)
            for r, (c, ids) in enumerate(zip(done, prompt_ids)):
                start = width - len(ids)  # left padding
                c.routed_experts = routed[r, start : width + len(c.token_ids) - 1].clone()
        return done

    def _decode(self, input_ids: torch.Tensor, mask: torch.Tensor, s: Sampling,
                pad: int, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample up to ``s.max_tokens`` tokens per row: (B, S) token ids (``pad`` after a row
        ended) and (B, S) their raw log-probs; ``keys`` (B,): each row's random stream
        (``row_keys``). One prefill forward, then one forward per token fed back; none after
        the last token (``_routed_experts`` relies on this count)."""
        b, width = input_ids.shape
        eos = self.tokenizer.eos_token_id
        full_mask = torch.cat([mask, mask.new_ones(b, s.max_tokens)], dim=1)  # (B, T + S)
        position = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        out = self._prefill(input_ids, mask, position)
        cache, position = out.past_key_values, position[:, -1:]  # (B, 1)
        tokens, logps = [], []
        running = torch.ones(b, dtype=torch.bool, device=input_ids.device)  # (B,)
        # Whether any row still runs, read on the host every `every` tokens on a GPU (a read
        # waits for the device) and after every token elsewhere, where it costs nothing.
        every = _any_every(input_ids.device)
        live: list[torch.Tensor] = []  # per step: some row still ran after it
        stops = _StopStrings(self.tokenizer, s.stop) if s.stop else None
        for t in range(s.max_tokens):
            logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V), raw
            if t < s.min_tokens and eos is not None:
                logp_pick = logp.clone()
                logp_pick[:, eos] = float("-inf")
            else:
                logp_pick = logp
            token = _pick(logp_pick, s, row_uniforms(keys, t))  # (B,)
            token = torch.where(running, token, torch.full_like(token, pad))
            tokens.append(token)
            chosen = logp.gather(-1, token[:, None])[:, 0]  # (B,)
            logps.append(torch.where(running, chosen, torch.zeros_like(chosen)))
            if eos is not None:
                running &= token != eos
            if stops is not None and t + 1 >= s.min_tokens:
                running &= ~stops.hit(torch.stack(tokens, dim=1), running)
            live.append(running.any())
            if t + 1 == s.max_tokens or ((t + 1) % every == 0 and not bool(live[-1])):
                break
            position = position + 1
            out = self.model(input_ids=token[:, None], attention_mask=full_mask[:, : width + t + 1],
                             position_ids=position, past_key_values=cache, use_cache=True)
        # Steps after every row ended (at most every - 1 of them) sampled only padding: dropped.
        kept = 1 + int(torch.stack(live[:-1]).sum()) if len(live) > 1 else len(tokens)
        return (torch.stack(tokens[:kept], dim=1).cpu(),
                torch.stack(logps[:kept], dim=1).float().cpu())

    def _prefill(self, input_ids: torch.Tensor, mask: torch.Tensor, position: torch.Tensor):
        """The prompt forward, filling the KV cache. A group's samples share one prompt: each
        distinct (left-padded) row runs once and its cache and logits are indexed out to the
        rows that repeat it (model types in ``rollouts.sharing.SHARED_PROMPT_MODELS``, not while
        recording routing, which is laid out for one pass of every row)."""
        kw = {"use_cache": True, "logits_to_keep": 1}
        share = (self.share_prompts and not self.record_routing
                 and getattr(self.model.config, "model_type", None) in SHARED_PROMPT_MODELS)
        rows = torch.cat([input_ids, mask], dim=1)  # equal ids and equal padding
        owners = prompt_owners(rows, torch.full((len(rows),), rows.shape[1])) if share else None
        if owners is None:
            return self.model(input_ids=input_ids, attention_mask=mask, position_ids=position,
                              **kw)
        firsts, owner = (t.to(input_ids.device) for t in owners)
        out = self.model(input_ids=input_ids[firsts], attention_mask=mask[firsts],
                         position_ids=position[firsts], **kw)
        out.past_key_values.batch_select_indices(owner)
        out.logits = out.logits[owner]
        return out

    def _recorder(self):
        if not self.record_routing:
            return contextlib.nullcontext()
        return RoutingRecorder(self.model)

    def _completion(self, ids: list[int], logps: list[float], s: Sampling) -> Completion:
        eos = self.tokenizer.eos_token_id
        finish = "length"
        if eos in ids:  # keep the EOS token: the policy must learn to stop
            ids, finish = ids[: ids.index(eos) + 1], "stop"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in s.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        return Completion(text, ids, logps[: len(ids)], finish)

    def update_weights(self, model: Any) -> None:
        """Sample from ``model`` from now on: a reference, not a copy, unless ``model`` is
        sharded by FSDP2 (then its gathered weights are copied into the engine's own model;
        every rank must walk the weights at the same time, see ``rollouts.weights``)."""
        if not any(type(p).__name__ == "DTensor" for p in model.parameters()):
            self.model = model
            return
        own = self.model if getattr(self, "_owns_model", False) else None
        slots: dict[str, torch.Tensor] = {}
        loaded: set[str] = set()
        for name, tensor in iter_live_weights(model):
            if own is None:  # first sync: a plain model of the same config, dtype and device
                from transformers import AutoModelForCausalLM

                with torch.device(tensor.device):
                    own = AutoModelForCausalLM.from_config(_hf_config(model), dtype=tensor.dtype)
                own.eval().requires_grad_(False)
            if not slots:
                slots = own.state_dict(keep_vars=True)
            slots[name].data.copy_(tensor)
            loaded.add(name)
        tied = {n for n, t in slots.items() if n not in loaded and any(
            t.data_ptr() == slots[m].data_ptr() for m in loaded)}
        missing = set(slots) - loaded - tied
        if missing:
            raise RuntimeError(f"the sharded model's weights did not cover {sorted(missing)[:5]}")
        self.model, self._owns_model = own, True

    def sleep(self, level: int = 1) -> None:
        """Nothing to release: the weights belong to the trainer."""

    def wake(self, tags: Sequence[str] | None = None) -> None:
        """Nothing to restore."""

    def close(self) -> None:
        self.model = None

    def __enter__(self) -> "HFEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pick(logp: torch.Tensor, s: Sampling, u: torch.Tensor) -> torch.Tensor:
    """(B,) tokens drawn from (B, V) raw log-probs under ``s``'s temperature, top-k and top-p,
    with (B, 1) uniforms ``u``."""
    if s.temperature == 0:
        return logp.argmax(dim=-1)
    return inverse_cdf_sample(sampling_scores(logp, s).softmax(dim=-1), u)


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor | int, c: int) -> torch.Tensor | int:
    """``x * c mod 2**32`` for ``x`` in [0, 2**32), without int64 overflow (16-bit halves)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """A 32-bit integer hash with full avalanche ("lowbias32", Chris Wellons' hash-prospector),
    on ints or int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_keys(seed: int, completions: Sequence[int], device: torch.device) -> torch.Tensor:
    """(B,) int64 keys of the random streams of ``completions`` (indices) under ``seed``."""
    s = _mix32((seed & _M32) ^ _mix32((seed >> 32) & _M32 ^ 0x9E3779B9))
    idx = torch.tensor(completions, dtype=torch.int64, device=device) & _M32
    return _mix32(idx ^ s)


def row_uniforms(keys: torch.Tensor, t: int) -> torch.Tensor:
    """(B, 1) float64 uniforms in [0, 1), 53 bits each, for step ``t`` of the streams ``keys``
    (``row_keys``): two hashes of (key, t) in integer arithmetic, so the same bits on every
    device, independent of batch composition.

    >>> keys = row_keys(7, [0, 1, 2], torch.device("cpu"))
    >>> u = row_uniforms(keys, 0)
    >>> u.shape, bool(((u >= 0) & (u < 1)).all()), torch.equal(u, row_uniforms(keys, 0))
    (torch.Size([3, 1]), True, True)
    >>> bool((row_uniforms(keys, 1) != u).all())
    True
    """
    h1 = _mix32(keys ^ _mix32((t & _M32) ^ 0x85EBCA6B))
    h2 = _mix32(h1 ^ 0x68E31DA4)
    return ((h1 << 21) + (h2 >> 11)).double().mul_(2.0**-53)[:, None]


def inverse_cdf_sample(probs: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) one draw per row of (B, V) probabilities: the first token whose cumulative
    probability (float64) exceeds the row's uniform ``u`` (B, 1) scaled to the row's total
    (``u`` defaults to torch's global generator). A token of probability 0 (filtered) is never
    drawn. 16x cheaper than ``torch.multinomial`` on CPU at (32, 844), which was a fifth of a
    decode step.

    >>> _ = torch.manual_seed(0)
    >>> inverse_cdf_sample(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])).tolist()
    [1, 2]
    """
    if u is None:
        u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device)
    if probs.is_cuda:  # a float cumsum has no deterministic CUDA kernel (deterministic mode)
        return fixed_point_sample(probs, u)
    c = probs.double().cumsum(dim=-1)  # (B, V)
    return torch.searchsorted(c, u * c[:, -1:], right=True)[:, 0].clamp_(max=c.shape[1] - 1)


def fixed_point_sample(probs: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
    """``inverse_cdf_sample``'s draw with the cumulative sum in integers: each row normalised,
    then probabilities in units of 2**-52 (int64, so the sum is exact and the same on every
    device and run, where a float cumsum on CUDA is not, and raises in deterministic mode).
    The same uniform is drawn; the token differs from the float path's only when the uniform
    falls within 2**-52 of a boundary. Tokens below 2**-52 (and filtered ones) are never drawn.

    >>> _ = torch.manual_seed(0)
    >>> fixed_point_sample(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])).tolist()
    [1, 2]
    """
    p = probs.double()
    q = (p / p.sum(dim=-1, keepdim=True) * 2.0**52).floor_().long()  # (B, V), sum <= 2**52
    c = q.cumsum(dim=-1)
    if u is None:
        u = torch.rand(c.shape[0], 1, dtype=torch.float64, device=c.device)
    target = (u * c[:, -1:].double()).floor_().long()  # in [0, total)
    return torch.searchsorted(c, target, right=True)[:, 0].clamp_(max=c.shape[1] - 1)


def sampling_scores(logp: torch.Tensor, s: Sampling) -> torch.Tensor:
    """(B, V) scores whose softmax is the distribution ``s`` samples from: temperature, then
    top-k, then top-p, in the order and with the tie rules of transformers' warpers; filtered
    tokens are -inf."""
    scores = logp / s.temperature
    if 0 < s.top_k < scores.shape[-1]:
        kth = torch.topk(scores, s.top_k, dim=-1).values[:, -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if s.top_p < 1.0:
        ordered, order = torch.sort(scores, dim=-1, descending=False)
        mass = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = mass <= 1 - s.top_p
        drop[:, -1] = False  # the most likely token always stays
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


class _StopStrings:
    """Which rows' newest tokens complete a stop string: each step decodes only a row's tail,
    long enough to hold the longest stop string (every token decodes to at least one byte)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]):
        self.tokenizer, self.stop = tokenizer, list(stop)
        self.tail = max(len(x.encode()) for x in self.stop) + 1

    def hit(self, tokens: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        """(B,) bool for (B, S) tokens so far: a running row whose tail holds a stop string."""
        out = torch.zeros_like(running)
        for r in running.nonzero()[:, 0].tolist():
            text = self.tokenizer.decode(tokens[r, -self.tail :].tolist())
            out[r] = any(x in text for x in self.stop)
        return out


def _routed_experts(recorder: Any, batch: int, width: int) -> torch.Tensor:
    """The recorded experts of every forward call (prefill, then one per decode step) laid side by
    side in time: int16 (B, width, L, k), position ``t`` being input position ``t`` of the padded
    batch (the prompt block, then each fed-back sampled token)."""
    calls = [torch.stack(layers, dim=1) for layers in recorder.calls]  # each (B * t, L, k)
    steps = [c.view(batch, -1, *c.shape[1:]) for c in calls]  # each (B, t, L, k)
    routed = torch.cat(steps, dim=1).to(device="cpu", dtype=torch.int16)
    if routed.shape[1] != width:
        raise RuntimeError(f"recorded routing covers {routed.shape[1]} positions, expected {width}")
    return routed
