"""grpo/losses.py against numbers worked out by hand, and against plain-loop references.

Part 1 checks every table entry on tiny inputs whose expected values are written out (with the
arithmetic in a comment). Part 2 compares every entry with a loop-by-loop reference written here
(Python for-loops over sequences and tokens, no vectorisation) on random inputs, values and
gradients. Every parametrised test runs over the table's keys, and a test asserts that the
references cover exactly those keys, so a new table entry without a reference fails.

Everything runs in float64 so that the hand values can be compared to 1e-6.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from grpo.losses import (
    ADVANTAGES,
    AGGREGATIONS,
    KL_ESTIMATORS,
    MISMATCH_CORRECTIONS,
    POLICY_LOSSES,
    ClipParams,
    MismatchParams,
    Norm,
    kl_penalised_rewards,
    mismatch_stats,
    scale,
    topk_forward_kl,
)

LN2 = math.log(2.0)
CLIP = ClipParams(clip_low=0.2, clip_high=0.28, dual_clip=3.0)  # ratio band [0.8, 1.28]
MIS = MismatchParams(cap=2.0, low=0.5)
SEEDS = [0, 1, 2]  # random-input tests


def T(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def close(actual, expected) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert_close(torch.as_tensor(actual, dtype=torch.float64), expected, rtol=1e-6, atol=1e-6)


def grad_of(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


# =============================================================================================
# Part 1: hand-computed values
# =============================================================================================

# ---- advantages ----------------------------------------------------------------------------
# r = [[1, 0, 0], [2, 2, 5]]: group means 1/3 and 3, centred [[2/3, -1/3, -1/3], [-1, -1, 2]].
# group stds (Bessel): sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3) = 0.57735; sqrt((1+1+4)/2) = sqrt(3)
# batch: mean 10/6 = 5/3; squared deviations 4/9, 25/9, 25/9, 1/9, 1/9, 100/9 = 156/9;
#        std = sqrt(156/9 / 5) = 1.86190
R_HAND = [[1.0, 0.0, 0.0], [2.0, 2.0, 5.0]]
_S3 = math.sqrt(3.0)
_SB = math.sqrt(156 / 9 / 5)
_SC = math.sqrt(60 / 9 / 5)
ADV_HAND = {
    # (2/3) / sqrt(1/3) = 2/sqrt(3) = 1.15470; (-1/3) / sqrt(1/3) = -0.57735; g1: -1/sqrt(3), 2/sqrt(3)
    "grpo": [[2 / _S3, -1 / _S3, -1 / _S3], [-1 / _S3, -1 / _S3, 2 / _S3]],
    # centred only
    "dr_grpo": [[2 / 3, -1 / 3, -1 / 3], [-1.0, -1.0, 2.0]],
    # r - mean(others): 1 - 0 = 1; 0 - (1+0)/2 = -0.5; 2 - (2+5)/2 = -1.5; 5 - (2+2)/2 = 3
    "rloo": [[1.0, -0.5, -0.5], [-1.5, -1.5, 3.0]],
    # (r - 5/3) / 1.86190: 1 -> -0.35806, 0 -> -0.89515, 2 -> 0.17903, 5 -> 1.79029
    "reinforce_pp": [[(r - 5 / 3) / _SB for r in row] for row in R_HAND],
    # group-centred c = [2/3, -1/3, -1/3, -1, -1, 2], mean 0; whitened by the batch std of c:
    # sum c^2 = 4/9 + 1/9 + 1/9 + 1 + 1 + 4 = 60/9; std = sqrt(60/9 / 5) = 1.15470
    "reinforce_pp_baseline": [
        [2 / 3 / _SC, -1 / 3 / _SC, -1 / 3 / _SC],
        [-1 / _SC, -1 / _SC, 2 / _SC],
    ],
}


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_advantage_by_hand(name):
    close(ADVANTAGES[name](T(R_HAND), eps=0.0), ADV_HAND[name])


def test_scale_group_batch_none_by_hand():
    r = T([[0.0, 1.0], [2.0, 4.0]])
    c = r - r.mean(1, keepdim=True)  # [[-0.5, 0.5], [-1, 1]]
    # group stds: sqrt(0.25 * 2 / 1) = 0.70711, sqrt(1 * 2 / 1) = 1.41421 -> both rows +-0.70711
    close(scale(c, r, "group", 0.0), [[-1 / math.sqrt(2), 1 / math.sqrt(2)]] * 2)
    # batch: mean 7/4; squares 3.0625 + 0.5625 + 0.0625 + 5.0625 = 8.75; std = sqrt(8.75/3) = 1.70783
    sb = math.sqrt(8.75 / 3)
    close(scale(c, r, "batch", 0.0), [[-0.5 / sb, 0.5 / sb], [-1 / sb, 1 / sb]])
    close(scale(c, r, "none", 0.0), [[-0.5, 0.5], [-1.0, 1.0]])
    # eps is added to the std: 0.5 / (0.70711 + 0.1) = 0.61948
    d = math.sqrt(0.5) + 0.1
    close(scale(c, r, "group", 0.1)[0], [-0.5 / d, 0.5 / d])
    with pytest.raises(ValueError, match="unknown reward scaling"):
        scale(c, r, "groups", 0.0)


def test_grpo_scaling_choices_match_the_other_estimators():
    r = T(R_HAND)
    close(ADVANTAGES["grpo"](r, how="none"), ADV_HAND["dr_grpo"])
    # batch scaling divides by the batch std of r (1.86190), not of the centred values
    close(ADVANTAGES["grpo"](r, how="batch", eps=0.0),
          [[2 / 3 / _SB, -1 / 3 / _SB, -1 / 3 / _SB], [-1 / _SB, -1 / _SB, 2 / _SB]])
    # the default eps = 1e-4: 2/3 / (0.57735 + 1e-4) = 1.15450
    close(ADVANTAGES["grpo"](r)[0, 0], (2 / 3) / (math.sqrt(1 / 3) + 1e-4))


def test_methods_that_ignore_how():
    r = T(R_HAND)
    for how in ("group", "batch", "none"):
        close(ADVANTAGES["dr_grpo"](r, how=how), ADV_HAND["dr_grpo"])
        close(ADVANTAGES["reinforce_pp"](r, how=how, eps=0.0), ADV_HAND["reinforce_pp"])


def test_rloo_with_two_completions():
    # n = 2: the other's reward is the baseline: [1 - 0, 0 - 1] and [3 - 3, 3 - 3]
    close(ADVANTAGES["rloo"](T([[1.0, 0.0], [3.0, 3.0]])), [[1.0, -1.0], [0.0, 0.0]])
    # scaled by the group std: sqrt(0.5) = 0.70711 -> 1 / 0.70711 = 1.41421
    a = ADVANTAGES["rloo"](T([[1.0, 0.0]]), how="group", eps=0.0)
    close(a, [[math.sqrt(2), -math.sqrt(2)]])
    with pytest.raises(ValueError, match="at least 2"):
        ADVANTAGES["rloo"](T([[1.0], [0.0]]))


def test_reinforce_pp_normalises_by_the_batch():
    r = T([[1.0, 0.0], [0.0, 0.0]])
    # batch mean 0.25; centred [0.75, -0.25, -0.25, -0.25]; std sqrt((0.5625 + 3*0.0625)/3) = 0.5
    a = ADVANTAGES["reinforce_pp"](r, eps=0.0)
    close(a, [[1.5, -0.5], [-0.5, -0.5]])
    close(a.mean(), 0.0)
    close(a.std(), 1.0)  # whitened over the batch
    # baseline variant: group-centred c = [[0.5, -0.5], [0, 0]], whitened by the std of c:
    # sqrt((0.25 + 0.25) / 3) = 0.40825 -> 0.5 / 0.40825 = 1.22474
    s = math.sqrt(0.5 / 3)
    close(ADVANTAGES["reinforce_pp_baseline"](r, eps=0.0), [[0.5 / s, -0.5 / s], [0.0, 0.0]])


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_constant_rewards_give_zero_advantages(name):
    # every std is 0: 0 / (0 + 1e-4) = 0 with the default eps, never NaN
    for r in (T([[1.0, 1.0], [1.0, 1.0]]), T([[0.0, 0.0, 0.0]])):
        a = ADVANTAGES[name](r)
        assert torch.isfinite(a).all()
        close(a, torch.zeros_like(r))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
@pytest.mark.parametrize("how", ["group", "batch", "none"])
def test_zero_variance_group_is_zero_in_a_mixed_batch(name, how):
    # group 0 is all-correct; group-baseline methods give it zero advantage (reinforce_pp's batch
    # baseline does not, by design)
    a = ADVANTAGES[name](T([[1.0, 1.0], [0.0, 1.0]]), how=how)
    assert torch.isfinite(a).all()
    close(a[0], [0.0, 0.0])
    assert (a[1] != 0).all()


def test_single_completion_and_single_reward_scale_to_zero():
    close(scale(T([[0.0], [0.0]]), T([[1.0], [0.0]]), "group", 1e-4), [[0.0], [0.0]])
    close(scale(T([[0.0]]), T([[1.0]]), "batch", 1e-4), [[0.0]])


# ---- policy losses -------------------------------------------------------------------------
# old = 0, so ratio = exp(logp) and logp = log(ratio). Band [1 - 0.2, 1 + 0.28] = [0.8, 1.28].


def _ratios(values):
    logp = torch.log(T(values)).requires_grad_()
    return logp, torch.zeros_like(logp), torch.ones_like(logp)


def test_ppo_clip_by_hand():
    logp, old, mask = _ratios([[1.1, 1.5, 0.7], [1.1, 1.5, 0.7]])
    adv = T([1.0, -1.0])
    out = POLICY_LOSSES["ppo_clip"](logp, old, adv, mask, CLIP)
    # A = +1: 1.1 in band -> -1.1; 1.5 -> min(1.5, 1.28) = 1.28 (clip-high) -> -1.28;
    #         0.7 -> min(0.7, 0.8) = 0.7: clip-low does not act on A > 0 -> -0.7
    # A = -1: 1.1 -> 1.1; 1.5 -> -min(-1.5, -1.28) = 1.5: clip-high does not act on A < 0;
    #         0.7 -> -min(-0.7, -0.8) = 0.8 (clip-low)
    close(out.loss, [[-1.1, -1.28, -0.7], [1.1, 1.5, 0.8]])
    assert out.clipped.tolist() == [[False, True, False], [False, False, True]]
    close(out.ratio, [[1.1, 1.5, 0.7], [1.1, 1.5, 0.7]])
    assert not out.ratio.requires_grad
    # d(-A r)/d logp = -A r where unclipped, 0 where clipped
    close(grad_of(out.loss.sum(), logp), [[-1.1, 0.0, -0.7], [1.1, 1.5, 0.0]])


def test_clip_higher_is_asymmetric():
    # DAPO: 1.25 is inside [0.8, 1.28] (a symmetric 0.2 would clip it); 0.78 is below 0.8
    logp, old, mask = _ratios([[1.25], [0.78]])
    out = POLICY_LOSSES["ppo_clip"](logp, old, T([1.0, -1.0]), mask, CLIP)
    # A = +1: -1.25 (not clipped); A = -1: -min(-0.78, -0.8) = 0.8 (clipped)
    close(out.loss, [[-1.25], [0.8]])
    assert out.clipped.tolist() == [[False], [True]]
    sym = POLICY_LOSSES["ppo_clip"](logp, old, T([1.0, -1.0]), mask, ClipParams(0.2, 0.2))
    close(sym.loss, [[-1.2], [0.8]])  # symmetric: 1.25 -> 1.2


def test_dual_clip_by_hand():
    logp, old, mask = _ratios([[5.0, 2.0, 0.5], [5.0, 2.0, 0.5]])
    adv = T([-1.0, 1.0])
    out = POLICY_LOSSES["dual_clip"](logp, old, adv, mask, CLIP)
    # A = -1, c = 3: ppo losses 5, 2, 0.8 (0.5 clip-low) -> capped at -c A = 3: 3, 2, 0.8
    # A = +1: dual clip does nothing: -min(5, 1.28) = -1.28, -1.28, -0.5
    close(out.loss, [[3.0, 2.0, 0.8], [-1.28, -1.28, -0.5]])
    assert out.clipped.tolist() == [[True, False, True], [True, True, False]]
    # gradient: only the unclipped tokens: -A r = 2 (A=-1, r=2) and -0.5 (A=+1, r=0.5)
    close(grad_of(out.loss.sum(), logp), [[0.0, 2.0, 0.0], [0.0, 0.0, -0.5]])
    ppo = POLICY_LOSSES["ppo_clip"](logp, old, adv, mask, CLIP)
    close(out.loss[1], ppo.loss[1])  # positive advantage: identical to ppo_clip
    with pytest.raises(ValueError, match="dual_clip"):
        POLICY_LOSSES["dual_clip"](logp, old, adv, mask, ClipParams(dual_clip=1.0))


def test_gspo_sequence_ratio_by_hand():
    logp = T([[0.1, 0.3, 5.0], [0.3, 0.3, 0.3]]).requires_grad_()
    old = torch.zeros_like(logp)
    mask = T([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # the 5.0 is padding: must not count
    out = POLICY_LOSSES["gspo"](logp, old, T([1.0, 1.0]), mask, CLIP)
    # seq 0: mean log-ratio (0.1 + 0.3) / 2 = 0.2 -> s = e^0.2 = 1.22140 < 1.28 -> loss -1.22140
    # seq 1: mean 0.3 -> s = e^0.3 = 1.34986 > 1.28, A > 0 -> clipped -> loss -1.28
    s0 = math.exp(0.2)
    close(out.ratio, [[s0] * 3, [math.exp(0.3)] * 3])
    close(out.loss, [[-s0] * 3, [-1.28] * 3])  # one value per sequence, broadcast to its tokens
    assert out.clipped.tolist() == [[False] * 3, [True] * 3]
    # token_mean over the 5 loss tokens: (2 * -1.22140 + 3 * -1.28) / 5 = -1.25656
    agg = AGGREGATIONS["token_mean"](out.loss, mask, Norm.of(mask, 3))
    close(agg, (2 * -s0 + 3 * -1.28) / 5)
    # d agg / d logp_0t = 2 tokens * (-s0 * 1/2) / 5 = -s0 / 5 = -0.24428 on seq 0's loss tokens;
    # 0 on the padding and on the clipped seq 1
    close(grad_of(agg, logp), [[-s0 / 5, -s0 / 5, 0.0], [0.0, 0.0, 0.0]])


def test_gspo_negative_advantage_and_empty_sequence():
    logp = T([[0.3, 0.3], [7.0, -7.0]])
    mask = T([[1.0, 1.0], [0.0, 0.0]])
    out = POLICY_LOSSES["gspo"](logp, torch.zeros_like(logp), T([-1.0, 1.0]), mask, CLIP)
    # seq 0: s = e^0.3 = 1.34986 above the band but A < 0 -> not clipped -> loss +1.34986
    # seq 1: no loss tokens -> mean log-ratio 0 / max(0, 1) = 0 -> s = 1 -> loss -1
    close(out.loss, [[math.exp(0.3)] * 2, [-1.0] * 2])
    assert not out.clipped.any()


def test_cispo_keeps_gradient_on_clipped_tokens():
    logp, old, mask = _ratios([[1.1, 1.5, 0.5]])
    out = POLICY_LOSSES["cispo"](logp, old, T([2.0]), mask, CLIP)
    # w = sg(clamp(r, 0.8, 1.28)) = [1.1, 1.28, 0.8]; loss = -w A logp
    # -1.1*2*ln1.1 = -0.20968; -1.28*2*ln1.5 = -1.03799; -0.8*2*ln0.5 = +1.10904
    close(out.loss, [[-2.2 * math.log(1.1), -2.56 * math.log(1.5), -1.6 * math.log(0.5)]])
    assert out.clipped.tolist() == [[False, True, True]]
    # d/dlogp = -w A (w is a constant): [-2.2, -2.56, -1.6], nonzero on the clipped tokens too
    close(grad_of(out.loss.sum(), logp), [[-2.2, -2.56, -1.6]])
    ppo = POLICY_LOSSES["ppo_clip"](logp, old, T([2.0]), mask, CLIP)
    close(grad_of(ppo.loss.sum(), logp), [[-2.2, 0.0, -1.0]])  # ppo drops the 1.5 token
    # clip_low = 1.0 drops the lower bound (MiniMax-M1): w = 0.5 -> grad -0.5 * 2 = -1
    no_low = POLICY_LOSSES["cispo"](logp, old, T([2.0]), mask, ClipParams(clip_low=1.0))
    close(grad_of(no_low.loss.sum(), logp)[0, 2], -1.0)


# ---- aggregation ---------------------------------------------------------------------------
X_AGG = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
MASK_AGG = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # 3 loss tokens, 3 sequences
AGG_HAND = {
    "token_mean": 7 / 3,  # (1 + 2 + 4) / 3 tokens
    "seq_mean_token_mean": (1.5 + 4.0 + 0.0) / 3,  # per-seq means 1.5, 4, empty -> 0; / 3 seqs
    "seq_mean_token_sum_norm": 7 / (3 * 4),  # token sum 7 / (3 seqs x max_tokens 4) = 0.58333
}


def test_norm_of():
    assert Norm.of(T(MASK_AGG), 4) == Norm(tokens=3.0, seqs=3.0, max_tokens=4.0)


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_aggregation_by_hand(name):
    mask = T(MASK_AGG)
    close(AGGREGATIONS[name](T(X_AGG), mask, Norm.of(mask, 4)), AGG_HAND[name])


def test_dr_grpo_denominator_is_a_constant():
    # a token sum of 6 in one token or over three: Dr. GRPO gives 6 / (1 seq x 4) = 1.5 both
    # times, whereas token_mean gives 6 / 1 and 6 / 3
    for x, m, token_mean in (([[6.0, 0, 0]], [[1.0, 0, 0]], 6.0), ([[2.0] * 3], [[1.0] * 3], 2.0)):
        norm = Norm.of(T(m), 4)
        close(AGGREGATIONS["seq_mean_token_sum_norm"](T(x), T(m), norm), 1.5)
        close(AGGREGATIONS["token_mean"](T(x), T(m), norm), token_mean)


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
@pytest.mark.parametrize("seed", SEEDS)
def test_micro_batches_sum_to_the_batch(name, seed):
    x, mask = _rand_values(seed), _rand_mask(seed)
    norm = Norm.of(mask, T_LEN)
    whole = AGGREGATIONS[name](x, mask, norm)
    for cut in (1, 3, 5):
        head = AGGREGATIONS[name](x[:cut], mask[:cut], norm)
        tail = AGGREGATIONS[name](x[cut:], mask[cut:], norm)
        close(head + tail, whole)


# ---- KL ------------------------------------------------------------------------------------
# pi = 0.5, ref = 0.25: log(pi/ref) = ln 2 = 0.69315
#   k1 = 0.69315; k2 = 0.69315^2 / 2 = 0.24023; k3 = ref/pi - ln(ref/pi) - 1 = 0.5 + 0.69315 - 1 = 0.19315
# pi = 0.25, ref = 0.5: k1 = -0.69315; k2 = 0.24023; k3 = 2 - 0.69315 - 1 = 0.30685
# pi = ref: all zero
KL_HAND = {
    "k1": [LN2, -LN2, 0.0],
    "k2": [LN2**2 / 2, LN2**2 / 2, 0.0],
    "k3": [0.5 + LN2 - 1, 2 - LN2 - 1, 0.0],
}


@pytest.mark.parametrize("name", sorted(KL_ESTIMATORS))
def test_kl_by_hand(name):
    logp = torch.log(T([[0.5, 0.25, 0.3]]))
    ref = torch.log(T([[0.25, 0.5, 0.3]]))
    close(KL_ESTIMATORS[name](logp, ref), [KL_HAND[name]])


def test_kl_in_reward_by_hand():
    kl = T([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    mask = T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # 1 - 0.1 * (0.1 + 0.2) = 0.97; 0 - 0.1 * 0.5 = -0.05 (masked KL left out)
    close(kl_penalised_rewards(T([1.0, 0.0]), kl, mask, beta=0.1), [0.97, -0.05])
    close(kl_penalised_rewards(T([1.0, 0.0]), kl, mask, beta=0.0), [1.0, 0.0])


# ---- train/inference mismatch --------------------------------------------------------------
# sampler = 0, old = log(w): token weights w; band [low, cap] = [0.5, 2]
#   seq 0: [3, 1.5, 0.6] -> product 2.7
#   seq 1: [0.8, 0.5, (padding) 10] -> product over loss tokens 0.4
#   seq 2: [1.2, 1.0, 0.9] -> product 1.08
W_MIS = [[3.0, 1.5, 0.6], [0.8, 0.5, 10.0], [1.2, 1.0, 0.9]]
MASK_MIS = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
FULL = MASK_MIS
MIS_HAND = {  # name -> (weights on loss tokens, kept mask); padding weights are not checked
    "none": ([[1.0] * 3] * 3, FULL),
    # min(w, 2)
    "token_truncate": ([[2.0, 1.5, 0.6], [0.8, 0.5, 1.0], [1.2, 1.0, 0.9]], FULL),
    # only w > 2 dropped (3); 0.5 kept: no lower bound; weights themselves unchanged
    "token_mask": (W_MIS, [[0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
    # min(2.7, 2) = 2; 0.4 (no lower bound when truncating); 1.08
    "sequence_truncate": ([[2.0] * 3, [0.4] * 3, [1.08] * 3], FULL),
    # 2.7 > 2 drops sequence 0 whole; 0.4 is kept (no lower bound); kept ones weigh w
    "sequence_mask": ([[2.7] * 3, [0.4] * 3, [1.08] * 3], [[0.0] * 3, [1.0, 1.0, 0.0], [1.0] * 3]),
    # the two-sided band [0.5, 2] per token (3 dropped; 0.5 kept: inclusive); kept tokens weigh w
    "icepop": (W_MIS, [[0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
}


@pytest.mark.parametrize("name", sorted(MISMATCH_CORRECTIONS))
def test_mismatch_by_hand(name):
    old, sampler, mask = torch.log(T(W_MIS)), torch.zeros(3, 3, dtype=torch.float64), T(MASK_MIS)
    w, keep = MISMATCH_CORRECTIONS[name](old, sampler, mask, MIS)
    want_w, want_keep = MIS_HAND[name]
    assert w.shape == keep.shape == (3, 3)
    assert torch.isfinite(w).all()
    close(w * mask, T(want_w) * mask)
    close(keep, want_keep)


@pytest.mark.parametrize("name", sorted(MISMATCH_CORRECTIONS))
def test_mismatch_weights_are_detached(name):
    old = torch.log(T(W_MIS)).requires_grad_()
    sampler = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    w, keep = MISMATCH_CORRECTIONS[name](old, sampler, T(MASK_MIS), MIS)
    assert not w.requires_grad and not keep.requires_grad


def _floats(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    assert all(v.dim() == 0 for v in stats.values())  # read by the trainer once per update
    return {k: float(v) for k, v in stats.items()}


def test_mismatch_stats_by_hand():
    # loss tokens: log(trainer/sampler) d = ln2, 0, -ln2, 0 (the ln4 is padding); w = 2, 1, 0.5, 1
    old = T([[LN2, 0.0, -LN2], [0.0, math.log(4.0), 0.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    s = _floats(mismatch_stats(old, torch.zeros_like(old), mask))
    # kl = mean(w - d - 1) = ((2 - 0.69315 - 1) + 0 + (0.5 + 0.69315 - 1) + 0) / 4 = 0.5 / 4
    assert s["kl"] == pytest.approx(0.125, abs=1e-9)
    assert s["k1"] == pytest.approx(0.0, abs=1e-9)  # -(ln2 + 0 - ln2 + 0) / 4
    assert s["max_ratio"] == pytest.approx(2.0)
    assert s["min_ratio"] == pytest.approx(0.5)
    assert s["abs_logp_diff_max"] == pytest.approx(LN2)  # not ln4: padding is masked
    # k1 sign: sampler more confident than trainer -> KL(sampler || trainer) estimate > 0
    s = _floats(mismatch_stats(T([[-LN2]]), T([[0.0]]), T([[1.0]])))
    assert s["k1"] == pytest.approx(LN2) and s["kl"] == pytest.approx(0.5 + LN2 - 1)


def test_mismatch_stats_empty_mask():
    s = _floats(mismatch_stats(T([[1.0, 2.0]]), T([[0.0, 0.0]]), T([[0.0, 0.0]])))
    assert s == {"kl": 0.0, "k1": 0.0, "max_ratio": 1.0, "min_ratio": 1.0, "abs_logp_diff_max": 0.0}


# =============================================================================================
# Part 2: plain-loop references on random inputs
# =============================================================================================

G_GROUPS, N_PER, T_LEN = 2, 3, 7
N_SEQ = G_GROUPS * N_PER
CLIP_RAND = ClipParams(clip_low=0.2, clip_high=0.28, dual_clip=1.5)  # c = 1.5: dual clip often acts


def _gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 * seed + salt)


def _rand_mask(seed: int) -> torch.Tensor:
    """Right-padded (N, T) mask; lengths 0..T (one sequence empty for seed 0)."""
    lengths = torch.randint(1, T_LEN + 1, (N_SEQ,), generator=_gen(seed, 1))
    if seed == 0:
        lengths[2] = 0
    return (torch.arange(T_LEN)[None, :] < lengths[:, None]).to(torch.float64)


def _rand_values(seed: int, salt: int = 2, std: float = 1.0) -> torch.Tensor:
    return torch.randn(N_SEQ, T_LEN, generator=_gen(seed, salt), dtype=torch.float64) * std


def _rand_rewards(seed: int) -> torch.Tensor:
    if seed == 0:  # binary rewards with one all-correct group
        r = torch.randint(0, 2, (G_GROUPS, N_PER), generator=_gen(seed, 3)).to(torch.float64)
        r[0] = 1.0
        return r
    return torch.randn(G_GROUPS, N_PER, generator=_gen(seed, 3), dtype=torch.float64)


def _policy_inputs(seed: int):
    old = _rand_values(seed, 4, 0.5) - 1.0
    logp = old + _rand_values(seed, 5, 0.6)  # log-ratios ~ N(0, 0.6): all clip regimes occur
    adv = torch.randn(N_SEQ, generator=_gen(seed, 6), dtype=torch.float64)
    return logp, old, adv, _rand_mask(seed)


# ---- reference advantages --------------------------------------------------------------------


def ref_mean(xs):
    return sum(xs) / len(xs)


def ref_std(xs):
    if len(xs) < 2:
        return 0.0
    m = ref_mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def ref_scale(centred, r, how, eps):
    flat = [x for group in r for x in group]
    out = []
    for c_group, r_group in zip(centred, r):
        if how == "none":
            d = 1.0
        elif how == "group":
            d = ref_std(r_group) + eps
        else:
            d = ref_std(flat) + eps
        out.append([c / d for c in c_group])
    return out


def ref_group_centred(r):
    return [[x - ref_mean(group) for x in group] for group in r]


def ref_rloo(r, how, eps):
    centred = []
    for group in r:
        row = []
        for i, x in enumerate(group):
            others = [y for j, y in enumerate(group) if j != i]
            row.append(x - ref_mean(others))
        centred.append(row)
    return ref_scale(centred, r, how, eps)


def ref_reinforce_pp(r, how, eps):
    m = ref_mean([x for group in r for x in group])
    return ref_scale([[x - m for x in group] for group in r], r, "batch", eps)


REF_ADVANTAGES = {
    "grpo": lambda r, how, eps: ref_scale(ref_group_centred(r), r, how, eps),
    "dr_grpo": lambda r, how, eps: ref_group_centred(r),
    "rloo": ref_rloo,
    "reinforce_pp": ref_reinforce_pp,
    "reinforce_pp_baseline": lambda r, how, eps: ref_scale(
        ref_group_centred(r), ref_group_centred(r), "batch", eps),
}


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
@pytest.mark.parametrize("how", ["group", "batch", "none"])
@pytest.mark.parametrize("seed", SEEDS)
def test_advantage_matches_loop(name, how, seed):
    r = _rand_rewards(seed)
    close(ADVANTAGES[name](r, how=how), REF_ADVANTAGES[name](r.tolist(), how, 1e-4))


# ---- reference policy losses (0-d tensors in loops, so autograd gives the gradient) ------------


def ref_clip_token(ratio, a, p):
    """-min(r A, clip(r) A) and whether the clipped branch was taken."""
    clipped_ratio = min(max(ratio, 1 - p.clip_low), 1 + p.clip_high)  # float when clamped
    loss = -min(ratio * a, clipped_ratio * a)
    is_clipped = (a < 0 and ratio < 1 - p.clip_low) or (a > 0 and ratio > 1 + p.clip_high)
    return loss, bool(is_clipped)


def ref_ppo_clip(logp, old, adv, mask, p):
    loss, clipped = [], []
    for i in range(len(logp)):
        a = float(adv[i])
        row_l, row_c = [], []
        for t in range(len(logp[i])):
            token_loss, c = ref_clip_token(torch.exp(logp[i][t] - old[i][t]), a, p)
            row_l.append(token_loss)
            row_c.append(c)
        loss.append(row_l)
        clipped.append(row_c)
    return loss, clipped


def ref_dual_clip(logp, old, adv, mask, p):
    loss, clipped = ref_ppo_clip(logp, old, adv, mask, p)
    for i in range(len(logp)):
        a = float(adv[i])
        for t in range(len(logp[i])):
            if a < 0 and loss[i][t] > -p.dual_clip * a:
                loss[i][t] = -p.dual_clip * a  # a constant: no gradient
                clipped[i][t] = True
    return loss, clipped


def ref_gspo(logp, old, adv, mask, p):
    loss, clipped = [], []
    for i in range(len(logp)):
        total, count = 0.0, 0
        for t in range(len(logp[i])):
            if mask[i][t]:
                total = total + (logp[i][t] - old[i][t])
                count += 1
        s = torch.exp(torch.as_tensor(total / max(count, 1)))
        token_loss, c = ref_clip_token(s, float(adv[i]), p)
        loss.append([token_loss] * len(logp[i]))
        clipped.append([c] * len(logp[i]))
    return loss, clipped


def ref_cispo(logp, old, adv, mask, p):
    loss, clipped = [], []
    for i in range(len(logp)):
        row_l, row_c = [], []
        for t in range(len(logp[i])):
            r = math.exp(float(logp[i][t].detach()) - float(old[i][t]))
            w = min(max(r, 1 - p.clip_low), 1 + p.clip_high)  # a float: stop-gradient
            row_l.append(-w * float(adv[i]) * logp[i][t])
            row_c.append(r < 1 - p.clip_low or r > 1 + p.clip_high)
        loss.append(row_l)
        clipped.append(row_c)
    return loss, clipped


REF_POLICY_LOSSES = {
    "ppo_clip": ref_ppo_clip,
    "dual_clip": ref_dual_clip,
    "gspo": ref_gspo,
    "cispo": ref_cispo,
}


# ---- reference aggregations: a (N, T) nested list of numbers or 0-d tensors -> scalar ----------


def ref_token_mean(x, mask, norm):
    total = 0.0
    for i in range(len(x)):
        for t in range(len(x[i])):
            total = total + x[i][t] * float(mask[i][t])
    return total / max(norm.tokens, 1.0)


def ref_seq_mean_token_mean(x, mask, norm):
    total = 0.0
    for i in range(len(x)):
        seq_sum, seq_len = 0.0, 0.0
        for t in range(len(x[i])):
            seq_sum = seq_sum + x[i][t] * float(mask[i][t])
            seq_len += float(mask[i][t])
        total = total + seq_sum / max(seq_len, 1.0)
    return total / max(norm.seqs, 1.0)


def ref_seq_mean_token_sum_norm(x, mask, norm):
    total = 0.0
    for i in range(len(x)):
        for t in range(len(x[i])):
            total = total + x[i][t] * float(mask[i][t])
    return total / max(norm.seqs * norm.max_tokens, 1.0)


REF_AGGREGATIONS = {
    "token_mean": ref_token_mean,
    "seq_mean_token_mean": ref_seq_mean_token_mean,
    "seq_mean_token_sum_norm": ref_seq_mean_token_sum_norm,
}


def _stack(rows) -> torch.Tensor:
    return torch.stack(
        [torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in r]) for r in rows]
    )


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("seed", SEEDS)
def test_policy_loss_matches_loop(name, seed):
    logp, old, adv, mask = _policy_inputs(seed)
    out = POLICY_LOSSES[name](logp, old, adv, mask, CLIP_RAND)
    ref_loss, ref_clipped = REF_POLICY_LOSSES[name](logp, old, adv, mask, CLIP_RAND)
    close(out.loss, _stack(ref_loss))
    assert out.clipped.tolist() == ref_clipped
    assert not out.ratio.requires_grad


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
@pytest.mark.parametrize("seed", SEEDS)
def test_policy_gradient_matches_loop(name, agg, seed):
    logp, old, adv, mask = _policy_inputs(seed)
    norm = Norm.of(mask, T_LEN)
    x = logp.clone().requires_grad_()
    loss = AGGREGATIONS[agg](POLICY_LOSSES[name](x, old, adv, mask, CLIP_RAND).loss, mask, norm)
    x_ref = logp.clone().requires_grad_()
    rows = [[x_ref[i, t] for t in range(T_LEN)] for i in range(N_SEQ)]  # 0-d views, one per token
    ref_loss, _ = REF_POLICY_LOSSES[name](rows, old, adv, mask, CLIP_RAND)
    ref = torch.as_tensor(REF_AGGREGATIONS[agg](ref_loss, mask, norm))
    close(loss, ref)
    g, g_ref = grad_of(loss, x), grad_of(ref, x_ref)
    close(g, g_ref)
    close(g * (1 - mask), torch.zeros_like(g))  # padding never receives gradient
    if name != "cispo":  # clipped tokens carry no gradient (cispo keeps it: see the hand test)
        clipped = POLICY_LOSSES[name](logp, old, adv, mask, CLIP_RAND).clipped
        close(g[clipped], torch.zeros_like(g[clipped]))


def test_random_policy_inputs_reach_every_clip_regime():
    """The random inputs above are only a good check if they clip both ways and dual-clip."""
    seen = set()
    for seed in SEEDS:
        logp, old, adv, mask = _policy_inputs(seed)
        ratio, a, on = torch.exp(logp - old), adv[:, None].expand(-1, T_LEN), mask.bool()
        seen |= {"high"} if ((ratio > 1.28) & (a > 0) & on).any() else set()
        seen |= {"low"} if ((ratio < 0.8) & (a < 0) & on).any() else set()
        seen |= {"dual"} if ((ratio > 1.5) & (a < 0) & on).any() else set()
    assert seen == {"high", "low", "dual"}


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
@pytest.mark.parametrize("seed", SEEDS)
def test_aggregation_matches_loop(name, seed):
    x, mask = _rand_values(seed).requires_grad_(), _rand_mask(seed)
    norm = Norm.of(mask, T_LEN)
    value = AGGREGATIONS[name](x, mask, norm)
    close(value, REF_AGGREGATIONS[name](x.tolist(), mask.tolist(), norm))
    x_ref = x.detach().clone().requires_grad_()
    rows = [[x_ref[i, t] for t in range(T_LEN)] for i in range(N_SEQ)]
    ref = torch.as_tensor(REF_AGGREGATIONS[name](rows, mask.tolist(), norm))
    close(grad_of(value, x), grad_of(ref, x_ref))


# ---- reference KL: value and d/d logp, element by element ------------------------------------


def ref_k1(lp, rf):
    return lp - rf, 1.0


def ref_k2(lp, rf):
    return 0.5 * (lp - rf) ** 2, lp - rf


def ref_k3(lp, rf):
    d = rf - lp
    return math.exp(d) - d - 1, -math.exp(d) + 1  # d/dlp of e^(rf-lp) - (rf-lp) - 1


REF_KL = {"k1": ref_k1, "k2": ref_k2, "k3": ref_k3}


@pytest.mark.parametrize("name", sorted(KL_ESTIMATORS))
@pytest.mark.parametrize("seed", SEEDS)
def test_kl_matches_loop(name, seed):
    logp = (_rand_values(seed, 7, 0.5) - 1.0).requires_grad_()
    ref, mask = _rand_values(seed, 8, 0.5) - 1.0, _rand_mask(seed)
    rewards = torch.randn(N_SEQ, generator=_gen(seed, 9), dtype=torch.float64)
    values, grads, penalised = [], [], []
    for i in range(N_SEQ):
        value_row, grad_row, masked_sum = [], [], 0.0
        for t in range(T_LEN):
            v, g = REF_KL[name](logp[i, t].item(), ref[i, t].item())
            value_row.append(v)
            grad_row.append(g)
            masked_sum += v if mask[i, t] else 0.0
        values.append(value_row)
        grads.append(grad_row)
        penalised.append(rewards[i].item() - 0.05 * masked_sum)
    kl = KL_ESTIMATORS[name](logp, ref)
    close(kl, values)
    close(grad_of(kl.sum(), logp), grads)
    if name == "k3":
        assert (kl >= 0).all()
    # folded into the reward: r_i - beta * sum of the loss tokens' KL
    close(kl_penalised_rewards(rewards, kl.detach(), mask, 0.05), penalised)


# ---- reference mismatch corrections: one sequence at a time ---------------------------------
# Each entry maps (token weights, sequence weight, mask row, params) to (weights, kept) rows.


def _band(w, p):
    return p.low <= w <= p.cap


REF_MISMATCH = {
    "none": lambda tok, seq, m, p: ([1.0] * len(m), m),
    "token_truncate": lambda tok, seq, m, p: ([min(w, p.cap) for w in tok], m),
    "token_mask": lambda tok, seq, m, p: (tok, [k if w <= p.cap else 0.0 for w, k in zip(tok, m)]),
    "sequence_truncate": lambda tok, seq, m, p: ([min(seq, p.cap)] * len(m), m),
    "sequence_mask": lambda tok, seq, m, p: (
        [seq] * len(m),
        [k if seq <= p.cap else 0.0 for k in m],
    ),
    "icepop": lambda tok, seq, m, p: (
        tok,
        [k if _band(w, p) else 0.0 for w, k in zip(tok, m)],
    ),
}


def ref_mismatch(name, old, sampler, mask, p):
    weights, kept = [], []
    for o_row, s_row, m_row in zip(old, sampler, mask):
        tok, seq = [], 1.0
        for o, s, m in zip(o_row, s_row, m_row):
            tok.append(math.exp(o - s) if m else 1.0)  # padding weighs 1
            seq *= tok[-1]  # the sequence weight is the product over its loss tokens
        w_row, k_row = REF_MISMATCH[name](tok, seq, m_row, p)
        weights.append(w_row)
        kept.append(k_row)
    return weights, kept


def _mismatch_inputs(seed):
    sampler = _rand_values(seed, 10, 0.5) - 1.0
    mask = _rand_mask(seed)
    # token log-weights ~ N(0, 0.5): some tokens outside [0.5, 2]; a few sequences inside the band
    old = sampler + _rand_values(seed, 11, 0.5) / (1.0 + 2.0 * (torch.arange(N_SEQ)[:, None] % 2))
    return old, sampler, mask


@pytest.mark.parametrize("name", sorted(MISMATCH_CORRECTIONS))
@pytest.mark.parametrize("seed", SEEDS)
def test_mismatch_matches_loop(name, seed):
    old, sampler, mask = _mismatch_inputs(seed)
    w, keep = MISMATCH_CORRECTIONS[name](old, sampler, mask, MIS)
    ref_w, ref_keep = ref_mismatch(name, old.tolist(), sampler.tolist(), mask.tolist(), MIS)
    close(w * mask, T(ref_w) * mask)
    close(keep, ref_keep)
    assert torch.isfinite(w).all()


def test_random_mismatch_inputs_drop_and_keep_sequences():
    seq_mask = MISMATCH_CORRECTIONS["sequence_mask"]
    kept = torch.cat([seq_mask(*_mismatch_inputs(s), MIS)[1].sum(-1) for s in SEEDS])
    assert (kept > 0).any() and (kept == 0).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_mismatch_stats_match_loop(seed):
    old, sampler, mask = _mismatch_inputs(seed)
    k3, k1, ratios, n = 0.0, 0.0, [], 0
    for i in range(N_SEQ):
        for t in range(T_LEN):
            if mask[i, t]:
                d = old[i, t].item() - sampler[i, t].item()
                k3 += math.exp(d) - d - 1
                k1 += -d
                ratios.append(math.exp(d))
                n += 1
    s = _floats(mismatch_stats(old, sampler, mask))
    assert s["kl"] == pytest.approx(k3 / n, rel=1e-9)
    assert s["k1"] == pytest.approx(k1 / n, rel=1e-9)
    assert s["max_ratio"] == pytest.approx(max(ratios))
    assert s["min_ratio"] == pytest.approx(min(ratios))
    assert s["abs_logp_diff_max"] == pytest.approx(max(abs(math.log(r)) for r in ratios))


# ---- every table entry has a hand test and a reference ---------------------------------------


@pytest.mark.parametrize(
    "table, covered",
    [
        (ADVANTAGES, [ADV_HAND, REF_ADVANTAGES]),
        (POLICY_LOSSES, [REF_POLICY_LOSSES]),
        (AGGREGATIONS, [AGG_HAND, REF_AGGREGATIONS]),
        (KL_ESTIMATORS, [KL_HAND, REF_KL]),
        (MISMATCH_CORRECTIONS, [MIS_HAND, REF_MISMATCH]),
    ],
    ids=["advantages", "policy_losses", "aggregations", "kl", "mismatch"],
)
def test_every_table_entry_is_tested(table, covered):
    for names in covered:
        assert set(names) == set(table)


def test_every_policy_loss_has_a_hand_test():
    # the hand tests above are named test_<entry>_...
    for name in POLICY_LOSSES:
        assert any(n.startswith(f"test_{name}_") for n in globals()), name


# ---------------------------------------------------------------------------------------------
# topk_forward_kl: the teacher's top-k plus one rest-of-vocabulary bucket


def _topk_case(vocab: int, k: int, seed: int, dtype=torch.float64):
    """Student logits (requires grad), its full log-probs, the teacher's full log-probs and
    the teacher's top-k ids; 2 sequences x 3 positions."""
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(2, 3, vocab, generator=g, dtype=dtype)).requires_grad_(True)
    teacher = (2 * torch.randn(2, 3, vocab, generator=g, dtype=dtype)).log_softmax(-1)
    ids = teacher.topk(k, dim=-1).indices  # (2, 3, k)
    return logits, teacher, ids


@pytest.mark.parametrize("k", [1, 2, 5, 17, 48])
def test_topk_forward_kl_is_zero_with_zero_gradient_at_a_perfect_copy(k):
    # Student = teacher on the full vocabulary of 64; only the top-k are shown to the loss.
    # Cross-entropy on the renormalised top-k would give -log(top-k mass) > 0 here, with a
    # gradient that sharpens the student.
    _, teacher, ids = _topk_case(64, k, seed=k)
    logits = teacher.clone().requires_grad_(True)
    s = logits.log_softmax(-1).gather(-1, ids)
    loss = topk_forward_kl(s, teacher.gather(-1, ids))
    loss.sum().backward()
    assert float(1 - teacher.gather(-1, ids).exp().sum(-1).max()) > 1e-4  # the bucket counts
    assert_close(loss, torch.zeros(2, 3, dtype=loss.dtype), atol=1e-6, rtol=0)
    assert float(logits.grad.abs().max()) < 1e-6


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_topk_forward_kl_at_k_equal_v_is_the_full_forward_kl(dtype, tol):
    logits, teacher, ids = _topk_case(50, 50, seed=1, dtype=dtype)
    logp = logits.log_softmax(-1)
    got = topk_forward_kl(logp.gather(-1, ids), teacher.gather(-1, ids))  # (2, 3)
    (got_grad,) = torch.autograd.grad(got.sum(), logits, retain_graph=True)
    want = (teacher.exp() * (teacher - logp)).sum(-1)  # KL(q || p) over the vocabulary
    (want_grad,) = torch.autograd.grad(want.sum(), logits)
    assert_close(got.double(), want.detach().double(), atol=tol, rtol=0)
    assert_close(got_grad, want_grad, atol=tol, rtol=0)
    # d KL / d logits = p - q, worked out by hand.
    assert_close(want_grad, logp.exp().detach() - teacher.exp(), atol=1e-6, rtol=0)


def test_topk_forward_kl_is_the_kl_over_the_top_k_and_the_rest():
    # Vocabulary of 4, top-2: teacher (.5, .3 | .2 rest), student (.2, .2 | .6 rest):
    # .5 log(.5/.2) + .3 log(.3/.2) + .2 log(.2/.6) = 0.45815 + 0.12164 - 0.21972 = 0.36006.
    q, p = torch.tensor([[[0.5, 0.3]]]).log(), torch.tensor([[[0.2, 0.2]]]).log()
    want = 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.2) + 0.2 * math.log(0.2 / 0.6)
    assert math.isclose(float(topk_forward_kl(p, q)), want, rel_tol=1e-6)
    # A student that copies the teacher's shape on the top-k but puts twice the teacher's
    # mass elsewhere is penalised (renormalising the student over the top-k would score it 0):
    # .8 log(.8 / .6) + .2 log(.2 / .4) = 0.23014 - 0.13863 = 0.09151.
    leaky = torch.tensor([[[0.375, 0.225]]]).log()
    want = 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.4)
    assert math.isclose(float(topk_forward_kl(leaky, q)), want, rel_tol=1e-5)
    # Below the full KL of any completion of the vocabulary (merging outcomes lowers a KL):
    # the rest split (.1, .1) vs (.5, .1) adds .1 log(.1/.5) + .1 log(.1/.1) < 0 ... to the
    # bucket's .2 log(.2/.6); the full KL is larger: .5 log(2.5) + .3 log(1.5) + .1 log(.2) + 0.
    full = 0.5 * math.log(2.5) + 0.3 * math.log(1.5) + 0.1 * math.log(0.1 / 0.5) + 0.1 * 0
    assert float(topk_forward_kl(p, q)) <= full + 1e-9
