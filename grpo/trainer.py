"""The GRPO trainer: ``rollout -> score -> advantages -> update -> sync -> log/save``, one method
each.

``GRPOTrainer`` holds a policy (transformers or peft), an ``Engine`` (whichever
``rollouts.factory`` built: the trainer never asks which), a ``Scorer`` and the problems. One
``step()``:

1. ``rollout``: sample ``rollout.n`` completions for ``train.prompts_per_step`` prompts and score
   them; with ``algo.filter_zero_variance`` (DAPO dynamic sampling), groups whose rewards are all
   equal are dropped and more prompts are sampled (the shortfall over the keep rate so far), at
   most ``algo.max_refills`` extra rounds; surplus groups are discarded.
   Returns a ``Rollout`` stamped with the policy version that sampled it.
2. ``prepare``: reference log-probs (beta > 0), KL-in-reward, advantages, masks (truncated
   completions masked), and the trainer's own log-probs of the rollout policy when the update
   makes more than one optimiser step. With a distillation ``teacher`` in the parts, the
   teacher's per-token advantages replace the reward-based ones (``distill.on_policy``).
   Returns a ``TrainBatch``.
3. ``update``: ``train.epochs`` passes, ``train.minibatches`` optimiser steps each, micro-batches
   by ``train.token_budget`` with gradient accumulation.
4. ``sync``: ``engine.update_weights(policy)``; the policy version goes up by one.
5. ``log`` and ``save``. Policies with mHC residual streams (DeepSeek-V4) also log the mixing
   matrices' distance from doubly stochastic and the streams' sizes after the update
   (``grpo.mhc``).

Steps 1 and 3 share nothing but the ``Rollout``, which is what one-step-off-policy pipelining
(``train.async_steps = k``) uses: ``_next_rollout`` starts the rollouts of the next k steps on
the engine (a thread here, the vLLM server in its own process) before this step's update, so
they are sampled while it trains; ``sync`` waits for them before the engine's weights change.
Each ``Rollout`` carries the version that sampled it (``staleness`` = policy version minus it,
at most k, logged), and the mismatch correction weights each sample by its sampler's log-probs.
The rollouts sampled ahead are part of ``state_dict``, so a resume trains on exactly them.
With several ranks (``grpo.parallel``) every rank holds the same rollout: with the HF engine each
samples and scores its share of the prompts and the shares are gathered; a vLLM server is driven
by rank 0, which broadcasts the rollout.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from grpo.batch import Rollout, TrainBatch, pad_rows
from grpo.losses import ADVANTAGES, KL_ESTIMATORS, Norm, kl_penalised_rewards
from grpo.mhc import has_mhc, mhc_stats
from grpo.observe import RunLog
from grpo.parallel import Parallel, PeakExtra
from grpo.problems import Problem
from grpo.routing import RouterCounts, replay_routing, update_router_counts
from grpo.settings import AlgoConfig, TrainConfig
from grpo.update import (
    NonFiniteError,
    Objective,
    Sums,
    batch_logprobs,
    check_finite,
    check_grad_norm,
    check_params,
    micro_batches,
    microbatch_loss,
    minibatch_order,
)
from rewards.scorer import RewardFailure, ScoreResult
from rollouts.engine import Engine
from rollouts.moe_routers import RoutingRecorder
from rollouts.settings import RolloutConfig
from rollouts.types import Sampling
from rollouts.weights import iter_live_weights

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("r1kit.train")


class ProblemStream:
    """Problems in a seeded order, reshuffled every pass; its position is two integers."""

    def __init__(self, problems: list[Problem], seed: int):
        if not problems:
            raise ValueError("no training problems")
        self.problems, self.seed = problems, seed
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.problems), generator=g).tolist()

    def take(self, k: int) -> list[Problem]:
        out = []
        for _ in range(k):
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self.problems[self._order[self.pos]])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict[str, int]) -> None:
        self.epoch, self.pos = s["epoch"], s["pos"]
        self._order = self._shuffle()


class TrainerSettings(Protocol):
    """What the trainer reads of a recipe (``r1kit.config.Config`` is one)."""

    @property
    def algo(self) -> AlgoConfig: ...
    @property
    def train(self) -> TrainConfig: ...
    @property
    def rollout(self) -> RolloutConfig: ...
    @property
    def data(self) -> DataColumns: ...


class DataColumns(Protocol):
    @property
    def columns(self) -> list[str]:
        """Dataset fields passed to the rewards as columns (``data.columns``)."""
        ...


class RewardScorer(Protocol):
    """Scores completions with the recipe's rewards (``rewards.scorer.Scorer``)."""

    def score(self, completions: Sequence[str], **columns: Sequence) -> ScoreResult: ...
    def close(self) -> None: ...


class TeacherSignal(Protocol):
    """On-policy distillation's teacher (``distill.on_policy.Teacher``): fills a batch's
    advantages (and top-k) from its log-probs."""

    def prepare(self, batch: TrainBatch, budget: int, pad_id: int, chunk: int,
                device: torch.device, share: bool = False) -> None: ...


@dataclass
class Parts:
    """What a trainer is built from (``r1kit.train.build_trainer`` assembles it from a recipe)."""

    cfg: TrainerSettings
    """The recipe (``r1kit.config.Config``)."""
    policy: nn.Module
    tokenizer: PreTrainedTokenizerBase
    engine: Engine | None
    """None on ranks that do not sample."""
    scorer: RewardScorer | None
    """None on ranks that do not score."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data: ProblemStream
    prompt_fn: Callable[[str], str]
    """question -> prompt text."""
    objective: Objective
    reference: nn.Module | None = None
    """Frozen reference policy (full fine-tuning with beta > 0); LoRA uses the adapter off."""
    runlog: RunLog | None = None
    recorder_fn: Callable[[nn.Module], RoutingRecorder] | None = None
    """model -> a fresh routing recorder (MoE statistics), or None."""
    parallel: Parallel = field(default_factory=Parallel)
    """This process's rank among the trainer's ranks (one process by default)."""
    teacher: TeacherSignal | None = None
    """On-policy distillation: its per-token advantages replace the reward-based ones in
    ``prepare``; rewards are still computed and logged."""

    def close(self) -> None:
        """Stop what runs beside the trainer: the run log, the scorer's workers, the engine."""
        for held in (self.runlog, self.scorer, self.engine):
            if held is not None:
                held.close()


class GRPOTrainer:
    def __init__(self, parts: Parts, step: int = 0, version: int = 0):
        self.p = parts
        self.cfg = parts.cfg
        self.step, self.version = step, version
        self.sync_peak_bytes = 0  # extra memory of the last weight sync (grpo.parallel.PeakExtra)
        self.ahead: collections.deque[Future] = collections.deque()
        """Rollouts sampled ahead for the next steps (``train.async_steps``), oldest first."""
        self._pool = None
        self.device = next(parts.policy.parameters()).device
        self.mhc = has_mhc(parts.policy)
        # The colocated vLLM engine gives its GPU memory to the update: it was started with
        # sleep mode where rollout.sleep says so (r1kit.train.engine_sleeps), never while
        # rollouts are sampled ahead of the update.
        self.sleeps = (bool(getattr(parts.engine, "enable_sleep_mode", False))
                       and not parts.cfg.train.async_steps)

    # -- 1. rollout + score -----------------------------------------------------------------
    def rollout(self, step: int | None = None) -> Rollout:
        """Sample and score the rollout of ``step`` (default: the current one; a rollout
        sampled ahead under ``train.async_steps`` is seeded by the step that will train on it)."""
        step = self.step if step is None else step
        a, r, want = self.cfg.algo, self.cfg.rollout, self.cfg.train.prompts_per_step
        kept: list[tuple[Any, Any, list[float], dict[str, list[float]]]] = []
        every: list[tuple[list[float], Any, dict[str, list[float]]]] = []
        t0, gen_s, score_s, refills = time.perf_counter(), 0.0, 0.0, 0
        failures: dict[str, int] = {}  # reward label -> samples it failed on, every round
        for attempt in range(1 + a.max_refills):
            # A refill asks for the shortfall divided by the keep rate so far (at least 1/4), as
            # DAPO samples a larger generation batch than it trains on.
            rate = max(len(kept) / len(every), 0.25) if every else 1.0
            problems = self.p.data.take(math.ceil((want - len(kept)) / rate))
            sampling = r.sampling(seed=r.seed + 7919 * step + 104729 * attempt)
            if not r.seeds_training(self.device.type == "cuda"):
                sampling = dataclasses.replace(sampling, seed=None)
            groups, totals, pers, seconds = self._sample_and_score(problems, sampling, failures,
                                                                   step)
            gen_s += seconds[0]
            score_s += seconds[1]
            for prob, grp, tot, per in zip(problems, groups, totals, pers):
                every.append((tot, grp, per))
                if not a.filter_zero_variance or max(tot) > min(tot):
                    kept.append((prob, grp, tot, per))
            refills = attempt
            if len(kept) >= want:
                break
        kept = kept[:want]
        stats = self._rollout_stats(every, len(kept), refills, failures, gen_s, score_s,
                                    time.perf_counter() - t0)
        return Rollout(
            problems=[k[0] for k in kept], groups=[k[1] for k in kept],
            rewards=torch.tensor([k[2] for k in kept], dtype=torch.float32).reshape(-1, r.n),
            per_reward={name: torch.tensor([k[3][name] for k in kept]).reshape(-1, r.n)
                        for name in (kept[0][3] if kept else {})},
            version=self.version, stats=stats)

    def _sample_and_score(self, problems: list[Problem], sampling: Sampling,
                          failures: dict[str, int], step: int):
        """Groups, totals, per-reward scores of ``problems`` and the wall times of generation
        and scoring.
        With ``rollout.every_rank_samples``, each rank samples and scores its ``block`` of the
        problems (seeded as in one call: ``Sampling.first_prompt``) and the pieces are gathered
        in order; an error on any rank is raised on every rank."""
        par = self.p.parallel
        if not self.cfg.rollout.every_rank_samples(par.world):
            return self._sample_piece(problems, sampling, step, failures)
        share = par.block(len(problems))
        mine = problems[share]
        try:
            piece: Any = self._sample_piece(
                mine, dataclasses.replace(sampling, first_prompt=share.start), step)
        except Exception as e:  # noqa: BLE001  (raised below, on every rank)
            piece = _portable(e, par.rank)
        pieces = par.gather(piece)
        for p in pieces:
            if isinstance(p, BaseException):
                raise p
        groups = [g for p in pieces for g in p[0]]
        totals = [t for p in pieces for t in p[1]]
        pers = [x for p in pieces for x in p[2]]
        res = [p[4] for p in pieces if p[4] is not None]
        broken = set.intersection(*(set(r.failed_everywhere()) for r in res)) if res else set()
        if broken:
            raise RewardFailure(f"step {step}: reward {', '.join(sorted(broken))} failed on all "
                                f"{len(totals) * self.cfg.rollout.n} samples (see train.log "
                                "for the first error)")
        for r in res:
            for label, count in r.failure_counts().items():
                failures[label] = failures.get(label, 0) + count
        # the ranks sample (and score) at the same time
        return groups, totals, pers, tuple(max(p[3][i] for p in pieces) for i in (0, 1))

    def _sample_piece(self, problems: list[Problem], sampling: Sampling, step: int,
                      failures: dict[str, int] | None = None):
        """(groups, totals, per-reward, (generation, scoring) seconds, ``ScoreResult``) of
        ``problems``.
        With ``failures`` (one sampler) the reward failures are checked and counted here."""
        if not problems:
            return [], [], [], (0.0, 0.0), None
        g0 = time.perf_counter()
        groups = self._generate([self.p.prompt_fn(q.question) for q in problems], sampling,
                                step)
        s0 = time.perf_counter()
        totals, pers, res = self._score(problems, groups)
        seconds = (s0 - g0, time.perf_counter() - s0)
        if failures is None:
            return groups, totals, pers, seconds, res
        broken = res.failed_everywhere()
        if broken:
            raise RewardFailure(f"step {step}: reward {', '.join(broken)} failed on all "
                                f"{len(res.total)} samples (see train.log for the first error)")
        for label, count in res.failure_counts().items():
            failures[label] = failures.get(label, 0) + count
        return groups, totals, pers, seconds

    def _generate(self, prompts: list[str], sampling: Sampling, step: int):
        try:
            return self.p.engine.generate(prompts, self.cfg.rollout.n, sampling)
        except RuntimeError as e:  # torch.multinomial on a NaN/inf distribution
            if "inf" not in str(e) and "nan" not in str(e):
                raise
            raise NonFiniteError(
                f"step {step}: the policy's sampling probabilities are not finite ({e}); the "
                "weights diverged in the last update; the last checkpoint is intact") from e

    def _score(self, problems, groups):
        """Totals and per-reward scores per group, and the ``ScoreResult`` (its failures)."""
        n = self.cfg.rollout.n
        texts = [c.text for g in groups for c in g.completions]
        columns = {c: [p.columns[c] for p in problems for _ in range(n)]
                   for c in self.cfg.data.columns}
        res = self.p.scorer.score(
            texts, answer=[p.answer for p in problems for _ in range(n)],
            completion_lengths=[len(c.token_ids) for g in groups for c in g.completions],
            **columns)
        total = list(res.total)
        if self.cfg.algo.truncated_reward is not None:  # an unfinished answer earns a fixed score
            flat = [c for g in groups for c in g.completions]
            total = [self.cfg.algo.truncated_reward if c.finish_reason == "length" else x
                     for c, x in zip(flat, total)]
        totals = [total[i * n:(i + 1) * n] for i in range(len(groups))]
        per = [{k: v[i * n:(i + 1) * n] for k, v in res.per_reward.items()}
               for i in range(len(groups))]
        return totals, per, res

    def _rollout_stats(self, every, kept, refills, failures, gen_s, score_s,
                       total_s) -> dict[str, float]:
        rewards = [x for tot, _, _ in every for x in tot]
        comps = [c for _, g, _ in every for c in g.completions]
        lengths = [len(c.token_ids) for c in comps]
        stats = {
            "reward": sum(rewards) / len(rewards),
            "reward_std": float(torch.tensor(rewards).std()) if len(rewards) > 1 else 0.0,
            "response_len": sum(lengths) / len(lengths),
            "response_len_max": max(lengths),
            "truncated_frac": sum(c.finish_reason == "length" for c in comps) / len(comps),
            "groups_sampled": len(every), "groups_kept": kept, "refills": refills,
            "time/generate": gen_s, "time/score": score_s, "time/rollout": total_s,
            "tokens_per_s/generate": sum(lengths) / gen_s if gen_s > 0 else 0.0,
        }
        for name in every[0][2]:
            scores = [x for _, _, per in every for x in per[name]]
            stats[f"reward/{name}"] = sum(scores) / len(scores)
            stats[f"reward_failures/{name}"] = failures.get(name, 0)
        return stats

    # -- 2. advantages, masks, reference ----------------------------------------------------
    def prepare(self, ro: Rollout) -> TrainBatch:
        a, t = self.cfg.algo, self.cfg.train
        comps = [c for g in ro.groups for c in g.completions]
        width = max(len(c.token_ids) for c in comps)
        token_mask = pad_rows([[1.0] * len(c.token_ids) for c in comps], width)
        truncated = torch.tensor([c.finish_reason == "length" for c in comps])
        mask = token_mask * (~truncated)[:, None] if a.mask_truncated else token_mask.clone()
        batch = TrainBatch(
            prompt_ids=[g.prompt_token_ids for g in ro.groups for _ in g.completions],
            completion_ids=[c.token_ids for c in comps],
            sampler_logp=pad_rows([c.logprobs for c in comps], width),
            mask=mask, token_mask=token_mask, advantages=torch.zeros(len(comps)),
            rewards=ro.rewards.flatten().clone(), truncated=truncated,
            routed=[c.routed_experts for c in comps])
        if a.routing_replay and any(x is None for x in batch.routed):
            log.warning("step %d: algo.routing_replay is on but the engine reported no routing "
                        "for some completions; they are routed live", self.step)
        if a.beta > 0:
            batch.ref_logp = self._reference_logprobs(batch)
            if a.kl_in == "reward":
                kl = KL_ESTIMATORS[a.kl_estimator](batch.sampler_logp, batch.ref_logp)
                batch.rewards = kl_penalised_rewards(batch.rewards, kl, token_mask, a.beta)
        rewards = batch.rewards.reshape(ro.rewards.shape)  # (G, n)
        batch.advantages = ADVANTAGES[a.advantage](rewards, a.scale_rewards).flatten()
        if self.p.teacher is not None:  # on-policy distillation: (N, C) from the teacher
            self.p.teacher.prepare(batch, t.token_budget, self._pad_id(), t.logprob_chunk,
                                   self.device, share=t.share_prompts)
        if t.epochs > 1 or t.minibatches > 1:
            batch.old_logp = self._logprobs(self.p.policy, batch, self.p.parallel.sharded_root)
        return batch

    def _logprobs(self, model: nn.Module, batch: TrainBatch,
                  runner: nn.Module | None = None) -> torch.Tensor:
        """(N, C) log-probs of every row under ``model`` on every rank: each rank runs its
        share of the rows (``Parallel.shard``) and the shares are summed over ranks (a row is
        one rank's, zeros elsewhere: the sum is exact). ``runner``: the FSDP2 root that
        gathers ``model``'s weights when sharded; every rank then runs as many passes."""
        t, par, obj = self.cfg.train, self.p.parallel, self.p.objective
        mine = batch_logprobs(model, batch, t.token_budget, self._pad_id(), t.logprob_chunk,
                              self.device, replay=obj.routing_replay,
                              compute_dtype=obj.compute_dtype, share=obj.share_prompts,
                              runner=runner, rows=par.shard(list(range(batch.rows))),
                              pad_count=par.pad_count if par.sharded else None)
        return par.sum_over_ranks(mine)

    def _reference_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        par = self.p.parallel
        if self.p.reference is not None:
            return self._logprobs(self.p.reference, batch, par.frozen)
        with self.p.policy.disable_adapter():  # LoRA: the reference is the adapter switched off
            return self._logprobs(self.p.policy, batch, par.sharded_root)

    def _pad_id(self) -> int:
        tok = self.p.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # -- 3. update ----------------------------------------------------------------------------
    def update(self, batch: TrainBatch) -> dict[str, float]:
        """``train.epochs`` x ``train.minibatches`` optimiser steps on ``batch``. With several
        ranks (``grpo.parallel``) each takes its share of every minibatch's rows and the
        gradients are reduced before the step: the same step as on one process."""
        t, obj, sums = self.cfg.train, self.p.objective, Sums()
        model, opt, par = self.p.policy, self.p.optimizer, self.p.parallel
        model.train()
        # Checkpointed layers run again in the backward pass: a replayed routing must still be
        # in place then, or the recomputed experts differ from the forward's.
        hold_replay = obj.routing_replay and any(
            getattr(m, "gradient_checkpointing", False) for m in model.modules())
        grad_norms, losses, router = [], [], []
        for epoch in range(t.epochs):
            for rows in minibatch_order(batch.rows, t.minibatches, t.seed, self.step, epoch):
                norm = Norm.of(batch.mask[rows], obj.max_tokens)  # of the whole minibatch
                opt.zero_grad(set_to_none=True)
                total = None
                # Router statistics from the last epoch: drift from the rollout's routing shows
                # there when epochs > 1; the aux loss needs the router logits every pass.
                want = self.p.recorder_fn and (obj.aux_loss_coef or epoch == t.epochs - 1)
                mine = par.shard(rows)
                mbs = list(micro_batches(batch, mine or rows[:1], t.token_budget,
                                         self._pad_id(), self.device))
                count = par.pad_count(len(mbs) if mine else 0)
                for i in range(count):
                    pad = not mine or i >= len(mbs)  # this rank repeats one, its loss times 0
                    mb = mbs[min(i, len(mbs) - 1)]
                    rec = self.p.recorder_fn(model) if want and not pad else None
                    held, loss_mb = contextlib.nullcontext(), mb
                    if hold_replay and mb.routed is not None:  # replayed here, not in the pass
                        held = replay_routing(model, mb.routed, mb.routed_valid)
                        loss_mb = dataclasses.replace(mb, routed=None)
                    with par.sync_context(last=i == count - 1), held:
                        out = microbatch_loss(model, batch, loss_mb, obj, norm,
                                              Sums() if pad else sums, rec, par.wrapped,
                                              0.0 if pad else float(par.world))
                        out.loss.backward()
                    # kept on the device (one read per minibatch, not one per micro-batch), in
                    # float64: the micro-batches' losses cancel to far below each of them
                    piece = out.loss.detach().double()
                    total = piece if total is None else total + piece
                    if rec is not None and epoch == t.epochs - 1:
                        router.append((rec, mb))
                params = [p for p in model.parameters() if p.grad is not None]
                gn = par.full_norm(torch.nn.utils.get_total_norm([p.grad for p in params]))
                # The loss and the gradient norm in one read of the device. The loss is summed
                # over ranks first, so that every rank stops on a non-finite loss (a rank
                # stopping alone would leave the others in the next collective).
                loss = par.sum_over_ranks(total.reshape(1)).to(gn.device)[0] / par.world
                summed, gn_value = torch.stack([loss, gn.detach().double()]).tolist()
                if not math.isfinite(summed):  # a host float: its message from check_finite
                    check_finite(self.step, "loss", torch.tensor(summed))
                check_grad_norm(self.step, model, gn_value)  # before clipping rescales anything
                if t.max_grad_norm > 0:
                    torch.nn.utils.clip_grads_with_norm_(params, t.max_grad_norm, gn)
                opt.step()
                check_params(self.step, model)
                self.p.scheduler.step()
                grad_norms.append(gn_value)
                losses.append(summed)
        return self._update_stats(par.merge_sums(sums.resolved()), losses, grad_norms, router)

    def _update_stats(self, sums: Sums, losses, grad_norms, router) -> dict[str, float]:
        s, tok = sums, max(sums.tokens, 1.0)

        def extreme(value: float | None) -> float:  # no token seen: ratio 1
            return 1.0 if value is None else value

        stats = {
            "loss": sum(losses) / len(losses), "grad_norm": sum(grad_norms) / len(grad_norms),
            "lr": self.p.scheduler.get_last_lr()[0], "entropy": s.entropy / tok,
            "clip_frac": s.clipped / tok,
            "ratio_max": extreme(s.ratio_max), "ratio_min": extreme(s.ratio_min),
            "ratio_std": (s.ratio_sq_dev / tok) ** 0.5,
            "mismatch/kl": s.mismatch_kl / tok,
            "mismatch/max_ratio": extreme(s.mismatch_max_ratio),
            "mismatch/min_ratio": extreme(s.mismatch_min_ratio),
            "mismatch/dropped_frac": s.mismatch_dropped / tok,
        }
        if s.kl is not None:
            stats["kl"] = s.kl / tok
        if s.distill_forward_kl is not None:  # per token, averaged over the update's passes
            stats["distill/forward_kl"] = s.distill_forward_kl / tok
        if self.p.recorder_fn is not None:  # summed over ranks: every rank has a recorder
            counts = [c for c in self.p.parallel.gather(
                update_router_counts(router) if router else None) if c is not None]
            if counts:
                stats.update(functools.reduce(RouterCounts.merge, counts).stats())
        return stats

    def _mhc_stats(self, batch: TrainBatch) -> dict[str, float]:
        """``grpo.mhc`` metrics of the updated policy on the step's first micro-batch."""
        if not self.mhc:
            return {}
        mb = next(micro_batches(batch, list(range(batch.rows)), self.cfg.train.token_budget,
                                self._pad_id(), self.device))
        with self.p.parallel.gathered():  # FSDP2: the root's weights; layers gather themselves
            return mhc_stats(self.p.policy, mb.input_ids, mb.attention_mask)

    # -- 4. sync, 5. log / save ---------------------------------------------------------------
    def sync(self) -> float:
        """The engine samples from the updated weights from now on (``push_weights``); the
        policy version goes up by one."""
        t0 = time.perf_counter()
        for f in self.ahead:  # the engine finishes what it samples before its weights change
            f.result()
        if self.sleeps:  # the weights' memory first, the KV cache once they are synced
            self.p.engine.wake(["weights"])
        self.push_weights()
        if self.sleeps:
            self.p.engine.wake(["kv_cache"])
        self.version += 1
        return time.perf_counter() - t0

    def push_weights(self) -> None:
        """Every rank: rank 0's engine (other ranks hold none) gets the policy's weights.
        Under FSDP2 they are gathered one layer at a time on every rank (``grpo.parallel``);
        the extra memory of that is ``sync_peak_bytes``."""
        par = self.p.parallel
        if not par.sharded:
            if self.p.engine is not None:
                self.p.engine.update_weights(self.p.policy)
            return
        with par.gathered(), PeakExtra(self.device) as peak:
            if self.p.engine is not None:
                self.p.engine.update_weights(self.p.policy)
            else:  # the gathers are collectives: walk as rank 0's engine does
                for _ in iter_live_weights(self.p.policy):
                    pass
        self.sync_peak_bytes = peak.bytes

    def run_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        par = self.p.parallel
        # The same rollout on every rank: sampled by each rank in shares and gathered, or by
        # rank 0 and broadcast.
        if self.cfg.rollout.every_rank_samples(par.world):
            ro = self._next_rollout()
        else:
            ro = par.share(self._next_rollout() if par.is_main else None)
        metrics: dict[str, Any] = {**ro.stats, "staleness": self.version - ro.version,
                                   "time/wait_rollout": time.perf_counter() - t0}
        if ro.groups:
            t1 = time.perf_counter()
            if self.sleeps:  # level 2: the sync replaces the weights it drops
                self.p.engine.sleep(level=2)
            batch = self.prepare(ro)
            metrics.update(batch.stats)
            metrics.update(self.update(batch))
            metrics.update(self._mhc_stats(batch))
            metrics["time/update"] = time.perf_counter() - t1
            metrics["time/sync"] = self.sync()
            if par.sharded:
                metrics["sync/peak_extra_mib"] = self.sync_peak_bytes / 2**20
        else:
            log.warning("step %d: every group had zero reward variance after %d refills; "
                        "no update", self.step, ro.stats["refills"])
        self.step += 1
        metrics["version"] = self.version
        metrics["time/step"] = time.perf_counter() - t0
        if self.p.runlog is not None:
            self.p.runlog.log(self.step, metrics)
            every = self.cfg.train.sample_every
            if every and self.step % every == 0 and ro.groups:
                self._sample_table(ro)
        return metrics

    def _next_rollout(self) -> Rollout:
        """This step's rollout. With ``train.async_steps = k > 0`` it was sampled ahead (or, with
        none queued, is sampled now), and rollouts for the next steps are started on the engine,
        which still holds this version's weights, so that they are sampled while this step
        trains: at most k wait, so a sample is at most k versions older than the policy that
        trains on it."""
        k = self.cfg.train.async_steps
        if not k:
            return self.rollout()
        ro = self.ahead.popleft().result() if self.ahead else self.rollout()
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="r1kit-rollout")
        while len(self.ahead) < k and self.step + 1 + len(self.ahead) < self.cfg.train.steps:
            self.ahead.append(self._pool.submit(self.rollout, self.step + 1 + len(self.ahead)))
        return ro

    def close(self) -> None:
        """Wait for rollouts sampled ahead (their engine is about to stop)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _sample_table(self, ro: Rollout) -> None:
        rows = [(ro.problems[i].question, g.completions[j].text, float(ro.rewards[i, j]))
                for i, g in enumerate(ro.groups[:2]) for j in range(min(2, len(g.completions)))]
        self.p.runlog.samples(self.step, rows)

    def state_dict(self, optimizer: bool = True) -> dict[str, Any]:
        """Counters, data position, optimiser (unless ``optimizer`` is False: an FSDP2
        checkpoint holds it in its shards) and schedule, and the rollouts sampled ahead
        (finished: ``sync`` waited for them), so that a resume trains on exactly them."""
        return {"step": self.step, "version": self.version, "data": self.p.data.state_dict(),
                "optimizer": self.p.optimizer.state_dict() if optimizer else None,
                "scheduler": self.p.scheduler.state_dict(),
                "ahead": [f.result() for f in self.ahead]}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.step, self.version = s["step"], s["version"]
        for ro in s.get("ahead", []):
            f: Future = Future()
            f.set_result(ro)
            self.ahead.append(f)
        self.p.data.load_state_dict(s["data"])
        if s["optimizer"] is not None:  # else loaded from the checkpoint's shards
            self.p.optimizer.load_state_dict(s["optimizer"])
        self.p.scheduler.load_state_dict(s["scheduler"])


def _portable(e: Exception, rank: int) -> Exception:
    """``e`` as it can travel to the other ranks (pickled), or a ``RuntimeError`` naming it."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001  (an exception type that does not pickle)
        return RuntimeError(f"rank {rank}: {type(e).__name__}: {e}")


__all__ = ["GRPOTrainer", "NonFiniteError", "Parts", "ProblemStream"]
