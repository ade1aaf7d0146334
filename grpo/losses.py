"""GRPO's loss math as pure functions over tensors, each variant an entry in a name-to-function table.

Shapes: ``G`` groups (prompts) of ``n`` completions; ``N = G * n`` sequences (or any subset of
them in a micro-batch); ``T`` completion positions, right-padded; ``mask`` is 1.0 on completion
tokens that count in the loss and 0.0 elsewhere. Inputs are never modified in place; statistics
and importance weights come back detached.

Where the math departs from DeepSeekMath's GRPO (Shao et al. 2024, arXiv:2402.03300), and why:

- **Token-level aggregation** (default ``token_mean``): DAPO (Yu et al. 2025, arXiv:2503.14476)
  averages over all tokens of the batch instead of per-sequence-then-per-batch, so a long
  completion's tokens weigh as much as a short one's. GRPO's own ``seq_mean_token_mean`` is kept.
- **Constant normaliser** ``seq_mean_token_sum_norm``: Dr. GRPO (Liu et al. 2025,
  arXiv:2503.20783) divides the token sum by ``max_tokens`` (a constant), removing GRPO's length
  bias; with it, the ``dr_grpo`` advantage drops the division by the group's std (question-level
  difficulty bias).
- **Clip-higher**: separate ``clip_low`` / ``clip_high`` (DAPO), 0.2 / 0.28 by default.
- **Dual clip** (Ye et al. 2020, arXiv:1912.09729): for negative advantages the ratio's pull is
  bounded by ``dual_clip`` (> 1).
- **GSPO** (Zheng et al. 2025, arXiv:2507.18071): one importance ratio per sequence, the geometric
  mean of the token ratios, clipped as a whole.
- **CISPO** (MiniMax-M1, arXiv:2506.13585): clips the importance weight itself (stop-gradient) and
  keeps every token's REINFORCE gradient, instead of zeroing clipped tokens' gradients.
- **RLOO** (Ahmadian et al. 2024, arXiv:2402.14740) and **REINFORCE++** (Hu 2025,
  arXiv:2501.03262) baselines as alternatives to the group mean; REINFORCE++ normalises by the
  batch's statistics.
- **KL to a reference**: GRPO puts the k3 estimator (Schulman 2020) in the loss with beta = 0.04;
  here k1/k2/k3 are available in the loss or folded into the reward, and the default is beta = 0
  (DAPO, Dr. GRPO: with verifiable rewards the KL term mostly slows learning).
- **Train/inference mismatch correction**: the sampler (vLLM) and the trainer compute different
  probabilities for the same weights; its importance weight ``exp(old_logp - sampler_logp)`` is
  truncated (TIS, Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
  training") or used as a mask (MIS), per token or per sequence (Liu et al. 2025, "When speed kills
  stability"), or tokens outside a two-sided band are masked (IcePop, Ling team 2025, Ring-1T).
- **Entropy bonus** (optional, off by default): ``-entropy_coef * entropy`` per token.
- **Distillation term** (on-policy distillation only): the forward KL from a teacher's top-k
  distribution at each sampled position (GKD, Agarwal et al. 2024), added per token, over the
  top-k tokens plus one bucket for the rest of the vocabulary (``topk_forward_kl``).

Nothing here knows about models, engines or configs: the trainer (``grpo.trainer``) calls these
through the tables at the bottom.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Advantages: rewards (G, n) -> advantages (G, n)


def _group_baseline(r: Tensor) -> Tensor:  # (G, n) -> (G, 1)
    return r.mean(dim=1, keepdim=True)


def scale(r_centered: Tensor, r: Tensor, how: str, eps: float) -> Tensor:
    """Divide centred rewards by the group's std (``group``), the batch's std (``batch``), or
    nothing (``none``). Stds are unbiased (Bessel), as in DeepSeekMath and TRL.

    >>> r = torch.tensor([[0., 1.], [1., 1.]])
    >>> scale(r - r.mean(1, keepdim=True), r, "group", 0.0)[0]
    tensor([-0.7071,  0.7071])
    """
    if how == "none":
        return r_centered
    if how == "group":
        std = r.std(dim=1, keepdim=True) if r.shape[1] > 1 else torch.zeros_like(r[:, :1])
    elif how == "batch":
        std = r.std() if r.numel() > 1 else torch.zeros(())
    else:
        raise ValueError(f"unknown reward scaling {how!r}; expected group, batch or none")
    return r_centered / (std + eps)


def adv_grpo(r: Tensor, how: str = "group", eps: float = 1e-4) -> Tensor:
    """DeepSeekMath GRPO: (r - group mean) / std. (G, n) -> (G, n)"""
    return scale(r - _group_baseline(r), r, how, eps)


def adv_dr_grpo(r: Tensor, how: str = "none", eps: float = 1e-4) -> Tensor:
    """Dr. GRPO: r - group mean, never divided by a std (``how`` is ignored). (G, n) -> (G, n)"""
    return r - _group_baseline(r)


def adv_rloo(r: Tensor, how: str = "none", eps: float = 1e-4) -> Tensor:
    """RLOO: r minus the mean of the other n-1 rewards of the group, then scaled. (G, n)"""
    n = r.shape[1]
    if n < 2:
        raise ValueError("RLOO needs at least 2 completions per group")
    loo = (r.sum(dim=1, keepdim=True) - r) / (n - 1)
    return scale(r - loo, r, how, eps)


def adv_reinforce_pp(r: Tensor, how: str = "batch", eps: float = 1e-4) -> Tensor:
    """REINFORCE++: r minus the batch mean, divided by the batch std (``how`` is ignored:
    batch normalisation is the method). (G, n) -> (G, n)"""
    return scale(r - r.mean(), r, "batch", eps)


def adv_reinforce_pp_baseline(r: Tensor, how: str = "batch", eps: float = 1e-4) -> Tensor:
    """REINFORCE++-baseline (OpenRLHF): r minus the group mean, then whitened over the batch
    (divided by the batch std of the centred values). (G, n) -> (G, n)"""
    centred = r - _group_baseline(r)
    return scale(centred, centred, "batch", eps)


ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "grpo": adv_grpo,
    "dr_grpo": adv_dr_grpo,
    "rloo": adv_rloo,
    "reinforce_pp": adv_reinforce_pp,
    "reinforce_pp_baseline": adv_reinforce_pp_baseline,
}

# ---------------------------------------------------------------------------------------------
# Policy losses: per-token loss (N, T) from the trainer's log-probs, the rollout policy's
# log-probs (``old``) and one advantage per sequence (or per token: ``per_token``).


@dataclass(frozen=True)
class ClipParams:
    clip_low: float = 0.2
    """Lower clip range: the ratio is held above ``1 - clip_low``."""
    clip_high: float = 0.28
    """Upper clip range (DAPO clip-higher): the ratio is held below ``1 + clip_high``."""
    dual_clip: float = 3.0
    """Dual-clip bound ``c`` (> 1) for negative advantages (``dual_clip`` loss only)."""


@dataclass
class PolicyOut:
    loss: Tensor
    """(N, T) per-token loss, before masking and aggregation."""
    clipped: Tensor
    """(N, T) bool: tokens whose ratio was clipped (no gradient through the ratio)."""
    ratio: Tensor
    """(N, T) the importance ratio each token used (per-sequence for GSPO), detached."""


def per_token(adv: Tensor) -> Tensor:
    """One advantage per sequence (N,) -> (N, 1), broadcast over its tokens; per-token
    advantages (N, T) (on-policy distillation, ``distill.on_policy``) pass through."""
    return adv[:, None] if adv.dim() == 1 else adv


def _clip_surrogate(ratio: Tensor, adv: Tensor, p: ClipParams) -> tuple[Tensor, Tensor]:
    # ratio (N, T) or (N, 1); adv (N, 1) or (N, T) -> loss, clipped
    unclipped = ratio * adv
    clipped_ratio = torch.clamp(ratio, 1 - p.clip_low, 1 + p.clip_high)
    loss = -torch.min(unclipped, clipped_ratio * adv)
    is_clipped = ((ratio < 1 - p.clip_low) & (adv < 0)) | ((ratio > 1 + p.clip_high) & (adv > 0))
    return loss, is_clipped


def policy_ppo_clip(logp: Tensor, old: Tensor, adv: Tensor, mask: Tensor, p: ClipParams) -> PolicyOut:
    """PPO-clip surrogate per token, ratio = exp(logp - old). logp, old, mask (N, T); adv (N,)
    or (N, T)"""
    ratio = torch.exp(logp - old)  # (N, T)
    loss, clipped = _clip_surrogate(ratio, per_token(adv), p)
    return PolicyOut(loss, clipped, ratio.detach())


def policy_dual_clip(logp: Tensor, old: Tensor, adv: Tensor, mask: Tensor, p: ClipParams) -> PolicyOut:
    """PPO-clip, plus for A < 0 the loss is capped at ``-dual_clip * A`` (Ye et al. 2020)."""
    if p.dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1, got {p.dual_clip}")
    ratio = torch.exp(logp - old)  # (N, T)
    a = per_token(adv)  # (N, 1) or (N, T)
    loss, clipped = _clip_surrogate(ratio, a, p)
    capped = torch.min(loss, -p.dual_clip * a)
    neg = (a < 0).expand_as(loss)
    dual = neg & (loss > -p.dual_clip * a)
    return PolicyOut(torch.where(neg, capped, loss), clipped | dual, ratio.detach())


def sequence_log_ratio(logp: Tensor, old: Tensor, mask: Tensor) -> Tensor:
    """Mean log-ratio over each sequence's tokens: (N, T) -> (N, 1)."""
    return ((logp - old) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)


def policy_gspo(logp: Tensor, old: Tensor, adv: Tensor, mask: Tensor, p: ClipParams) -> PolicyOut:
    """GSPO: the sequence ratio exp(mean_t log r_t), clipped per sequence, shared by its tokens.
    GSPO's paper uses clip ranges near 3e-4 / 4e-4, far below PPO's, and averages per sequence
    (``seq_mean_token_mean``); with ``token_mean`` longer sequences weigh more (TRL's default)."""
    ratio = torch.exp(sequence_log_ratio(logp, old, mask))  # (N, 1)
    loss, clipped = _clip_surrogate(ratio, per_token(adv), p)
    full = logp.shape
    return PolicyOut(loss.expand(full), clipped.expand(full), ratio.detach().expand(full))


def policy_cispo(logp: Tensor, old: Tensor, adv: Tensor, mask: Tensor, p: ClipParams) -> PolicyOut:
    """CISPO: -sg(clamp(ratio, 1 - clip_low, 1 + clip_high)) * A * logp per token; every token
    keeps its gradient. MiniMax-M1 leaves the lower bound off (set clip_low = 1.0 for that)."""
    ratio = torch.exp(logp - old)  # (N, T)
    w = torch.clamp(ratio, 1 - p.clip_low, 1 + p.clip_high).detach()
    clipped = (ratio < 1 - p.clip_low) | (ratio > 1 + p.clip_high)
    return PolicyOut(-w * per_token(adv) * logp, clipped, ratio.detach())


POLICY_LOSSES: dict[str, Callable[..., PolicyOut]] = {
    "ppo_clip": policy_ppo_clip,
    "dual_clip": policy_dual_clip,
    "gspo": policy_gspo,
    "cispo": policy_cispo,
}

# ---------------------------------------------------------------------------------------------
# Aggregation: per-token values (N, T) -> a scalar. ``Norm`` carries the counts of the whole
# optimiser batch, so that summing the aggregates of its micro-batches gives the batch's value.


@dataclass(frozen=True)
class Norm:
    tokens: float
    """Loss tokens (mask sum) in the whole optimiser batch."""
    seqs: float
    """Sequences in the whole optimiser batch."""
    max_tokens: float
    """The completion budget (``rollout.max_tokens``): Dr. GRPO's constant."""

    @staticmethod
    def of(mask: Tensor, max_tokens: int) -> Norm:
        """The counts of one batch given its mask (N, T)."""
        return Norm(float(mask.sum()), float(mask.shape[0]), float(max_tokens))


def agg_token_mean(x: Tensor, mask: Tensor, norm: Norm) -> Tensor:
    """DAPO: sum over every loss token / loss tokens in the batch."""
    return (x * mask).sum() / max(norm.tokens, 1.0)


def agg_seq_mean_token_mean(x: Tensor, mask: Tensor, norm: Norm) -> Tensor:
    """GRPO: mean over each sequence's tokens, then sum / sequences in the batch."""
    per_seq = (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (N,)
    return per_seq.sum() / max(norm.seqs, 1.0)


def agg_seq_mean_token_sum_norm(x: Tensor, mask: Tensor, norm: Norm) -> Tensor:
    """Dr. GRPO: sum over every loss token / (sequences x max_tokens)."""
    return (x * mask).sum() / max(norm.seqs * norm.max_tokens, 1.0)


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, Norm], Tensor]] = {
    "token_mean": agg_token_mean,
    "seq_mean_token_mean": agg_seq_mean_token_mean,
    "seq_mean_token_sum_norm": agg_seq_mean_token_sum_norm,
}

# ---------------------------------------------------------------------------------------------
# KL estimators of KL(policy || reference) from samples of the policy, per token (N, T).


def kl_k1(logp: Tensor, ref: Tensor) -> Tensor:
    """k1 = log(pi / ref): unbiased, high variance, can be negative."""
    return logp - ref


def kl_k2(logp: Tensor, ref: Tensor) -> Tensor:
    """k2 = (log(pi / ref))^2 / 2: low variance, biased; its gradient is the true KL's."""
    return 0.5 * (logp - ref) ** 2


def kl_k3(logp: Tensor, ref: Tensor) -> Tensor:
    """k3 = ref/pi - log(ref/pi) - 1: unbiased and >= 0 (DeepSeekMath's choice)."""
    d = ref - logp
    return torch.exp(d) - d - 1


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


REST_FLOOR = 1e-5
"""Smallest rest-of-vocabulary mass ``topk_forward_kl`` tells from 0: ``1 - sum exp(logp)``
over k float32 log-probs carries rounding of about 1e-7 (a few 1e-6 at the largest vocabularies),
and a ratio of two such remainders is noise, not signal."""


def topk_forward_kl(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """Per-token forward KL from a teacher's top-k to the student (on-policy distillation with a
    dense teacher signal, GKD, Agarwal et al. 2024, arXiv:2306.13649), over k + 1 outcomes: the
    teacher's k most likely tokens, each on its own, and one bucket for the rest of the
    vocabulary. Both inputs are full-softmax log-probs of the same k tokens; each side's bucket
    holds ``r = 1 - sum_k exp(logp_k)``::

        sum_k q_k (log q_k - log p_k)  +  r_q (log r_q - log r_p)  >=  0

    This is ``KL(teacher || student)`` with the vocabulary outside the top-k merged into one
    outcome: equal to the full KL when the top-k holds all of the teacher's mass (k = V),
    otherwise a lower bound on it (merging outcomes never raises a KL). It is 0, with zero
    gradient, exactly when the student gives every top-k token the teacher's probability, for
    any k. Why a bucket rather than renormalising the student over the top-k as well: that KL
    is blind to how much mass the student puts outside the top-k (its gradient never moves
    it), and dropping the bucket altogether, as cross-entropy on the top-k does, pushes the
    student to be sharper than the teacher. Numerics: a teacher bucket below ``REST_FLOOR`` is
    taken as 0 and a student bucket is read as at least ``REST_FLOOR`` (below it, no gradient
    flows through the bucket), since such remainders are float rounding. The gradient is
    exact, not a sampled estimate. student_logp, teacher_logp (N, T, K) -> (N, T)

    >>> q = torch.tensor([[[0.5, 0.3]]]).log()  # the teacher's top-2; 0.2 elsewhere
    >>> round(float(topk_forward_kl(q, q)), 6)  # a perfect copy
    0.0
    >>> round(float(topk_forward_kl(torch.tensor([[[0.2, 0.2]]]).log(), q)), 4)  # by hand
    0.3601
    """
    s, t = student_logp.float(), teacher_logp.float()
    top = (t.exp() * (t - s)).sum(-1)  # (N, T)
    r_q = -torch.expm1(t.logsumexp(-1))  # (N, T) the teacher's mass outside its top-k
    r_q = torch.where(r_q < REST_FLOOR, torch.zeros_like(r_q), r_q)
    r_p = (-torch.expm1(s.logsumexp(-1))).clamp(min=REST_FLOOR)  # (N, T) the student's
    return top + torch.xlogy(r_q, r_q) - r_q * r_p.log()


def kl_penalised_rewards(rewards: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """KL in the reward: each sequence's reward minus beta x its summed per-token KL.
    rewards (N,), kl (N, T) detached, mask (N, T) -> (N,)"""
    return rewards - beta * (kl * mask).sum(-1)


# ---------------------------------------------------------------------------------------------
# Train/inference mismatch: weights that correct for the sampler's log-probs differing from the
# trainer's under the same weights. Each returns (weight (N, T) detached, kept mask (N, T)).
# TIS (truncated importance sampling) clamps the weight at the cap; MIS (masked importance
# sampling) keeps the weight and drops what lies above the cap; IcePop masks outside a band.


@dataclass(frozen=True)
class MismatchParams:
    cap: float = 2.0
    """Upper threshold on the importance weight (truncate: clamp to it; mask: drop above it)."""
    low: float = 0.5
    """Lower threshold of IcePop's two-sided band (its paper uses [0.5, 2])."""


def _token_log_w(old: Tensor, sampler: Tensor, mask: Tensor) -> Tensor:  # (N, T)
    return (old - sampler) * mask


def _seq_log_w(old: Tensor, sampler: Tensor, mask: Tensor) -> Tensor:  # (N, 1)
    return _token_log_w(old, sampler, mask).sum(-1, keepdim=True)


def no_correction(old: Tensor, sampler: Tensor, mask: Tensor, p: MismatchParams):
    """No correction: weight 1, nothing dropped."""
    return torch.ones_like(old), mask


def tis_token(old: Tensor, sampler: Tensor, mask: Tensor, p: MismatchParams):
    """Token TIS: w_t = min(exp(old_t - sampler_t), cap)."""
    w = torch.exp(_token_log_w(old, sampler, mask)).clamp(max=p.cap)
    return w.detach(), mask


def mis_token(old: Tensor, sampler: Tensor, mask: Tensor, p: MismatchParams):
    """Token MIS: w_t = exp(old_t - sampler_t) on kept tokens; tokens with w_t > cap dropped."""
    w = torch.exp(_token_log_w(old, sampler, mask)).detach()
    return w, mask * (w <= p.cap)


def tis_sequence(old: Tensor, sampler: Tensor, mask: Tensor, p: MismatchParams):
    """Sequence TIS: w = min(prod_t exp(old_t - sampler_t), cap), shared by the sequence."""
    w = torch.exp(_seq_log_w(old, sampler, mask)).clamp(max=p.cap)
    return w.detach().expand_as(old), mask


def mis_sequence(old: Tensor, sampler: Tensor, mask: Tensor, p: MismatchParams):
    """Sequence MIS: w = prod_t w_t on kept sequences; a sequence with w > cap is dropped whole
    (TRL's ``sequence_mask``, its default with vLLM)."""
    w = torch.exp(_seq_log_w(old, sampler, mask)).detach()  # (N, 1)
    return w.expand_as(old), mask * (w <= p.cap)


def icepop_band(old: Tensor, sampler: Tensor, mask: Tensor, p: MismatchParams):
    """IcePop: M(w_t) = w_t inside the band [low, cap], 0 outside (two-sided token masking)."""
    w = torch.exp(_token_log_w(old, sampler, mask)).detach()
    keep = (w >= p.low) & (w <= p.cap)
    return w, mask * keep


MISMATCH_CORRECTIONS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "none": no_correction,
    "token_truncate": tis_token,
    "token_mask": mis_token,
    "sequence_truncate": tis_sequence,
    "sequence_mask": mis_sequence,
    "icepop": icepop_band,
}


def mismatch_stats(old: Tensor, sampler: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """How far the sampler's log-probs are from the trainer's on the sampled tokens, as 0-dim
    tensors on the inputs' device (nothing is read on the host: the trainer sums them over
    micro-batches and reads once per update).

    ``kl`` estimates KL(sampler || trainer) with k3 on the sampler's own samples; ``k1`` is the
    plain mean log-ratio; ``max_ratio`` / ``min_ratio`` are the extreme token weights (1 when
    no token counts).
    """
    n = mask.sum().clamp(min=1)
    d = (old - sampler) * mask  # log(trainer / sampler) on sampled tokens
    w = torch.exp(d)
    valid = mask.bool()
    some = valid.any()
    return {
        "kl": ((w - d - 1) * mask).sum() / n,
        "k1": -(d.sum()) / n,
        "max_ratio": torch.where(some, w.masked_fill(~valid, -math.inf).amax(), 1.0),
        "min_ratio": torch.where(some, w.masked_fill(~valid, math.inf).amin(), 1.0),
        "abs_logp_diff_max": d.abs().max(),
    }
