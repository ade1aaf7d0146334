"""r1kit's GRPO objective against TRL's ``GRPOTrainer`` on the same batch, to 1e-5.

One batch of the tiny Qwen3-MoE (3 prompts of different lengths x a group of 4, completions of 3
to 12 tokens, some ending in EOS, the rest right-padded), the same advantages, the same old
log-probs (perturbed so that ratios differ from 1 and some clip) and reference log-probs. For each
TRL ``loss_type`` (grpo, dr_grpo, dapo) x beta (0, 0.04: k3 in the loss) x
``importance_sampling_level`` (token, sequence), the loss and the gradient of every parameter from
``grpo.update.microbatch_loss`` equal those of TRL's ``compute_loss`` on the inputs dict TRL's own
``_generate_and_score_completions`` produces (prompts left-padded, completions right-padded).

Name mapping: TRL grpo = ``seq_mean_token_mean``, dr_grpo = ``seq_mean_token_sum_norm`` with
``max_tokens = max_completion_length``, dapo = ``token_mean``; importance_sampling_level token =
``ppo_clip``, sequence = ``gspo``; epsilon / epsilon_high = ``clip_low`` / ``clip_high``.

TRL's advantages are checked by running its real ``_generate_and_score_completions`` (generation
with the tiny model, a reward function returning fixed rewards) for scale_rewards group, batch
and none, against ``ADVANTAGES["grpo"]``.

A difference found: for MoE models TRL adds the router load-balancing loss by default
(``router_aux_loss_coef`` None -> the model config's, 0.001 for Qwen3-MoE), r1kit does not
(``algo.aux_loss_coef`` 0). The loss cases turn TRL's off; ``test_router_aux_loss_matches_trl``
checks TRL's default against r1kit's ``aux_loss_coef = 0.001``. And with beta > 0, TRL's default
``use_bias_correction_kl=True`` multiplies the k3 term by the (differentiable) importance ratio
(DeepSeek-V3.2's unbiased KL gradient); r1kit has no such option and adds plain k3 (DeepSeekMath),
so the cases set it False (with it on, the loss differs by ~2e-4 and gradients by ~9e-4 here).

One piece of TRL state is set by hand: ``current_gradient_accumulation_steps`` (which
``transformers.Trainer`` sets inside its training loop) is 1, i.e. one micro-batch per step.
"""

from __future__ import annotations

import pytest
import torch

from grpo.batch import TrainBatch, make_micro_batch, pad_rows
from grpo.logprobs import completion_logprobs
from grpo.losses import ADVANTAGES, ClipParams, Norm
from grpo.update import Objective, Sums, microbatch_loss

pytestmark = pytest.mark.slow  # 17-27 s alone: importing TRL, building the tiny model
trl = pytest.importorskip("trl")

GROUPS, GROUP_SIZE, MAX_COMPLETION = 3, 4, 12
CLIP_LOW, CLIP_HIGH, BETA = 0.2, 0.28, 0.04
TOL = 1e-5
AGGREGATION = {"grpo": "seq_mean_token_mean", "dr_grpo": "seq_mean_token_sum_norm",
               "dapo": "token_mean"}
POLICY = {"token": "ppo_clip", "sequence": "gspo"}


@pytest.fixture(scope="module")
def tiny(tiny_qwen):
    from transformers import AutoTokenizer

    return tiny_qwen, AutoTokenizer.from_pretrained(tiny_qwen)


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _trainer(model, tok, out_dir, rewards=None, **overrides):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    settings = {
        "output_dir": str(out_dir), "report_to": "none", "use_vllm": False, "use_cpu": True,
        "bf16": False, "temperature": 1.0, "num_generations": GROUP_SIZE,
        "per_device_train_batch_size": GROUPS * GROUP_SIZE,
        "max_completion_length": MAX_COMPLETION, "epsilon": CLIP_LOW, "epsilon_high": CLIP_HIGH,
        "save_strategy": "no", "logging_steps": 1,
        "router_aux_loss_coef": 0.0,  # TRL's MoE default adds the load-balancing loss: own test
        "use_bias_correction_kl": False,  # TRL's default weights the KL by the ratio: see above
        **overrides}

    def fixed_reward(completions, **_):
        return list(rewards) if rewards is not None else [0.0] * len(completions)

    trainer = GRPOTrainer(model=model, reward_funcs=fixed_reward, args=GRPOConfig(**settings),
                          train_dataset=Dataset.from_dict({"prompt": ["1 + 1 ="] * 4}),
                          processing_class=tok)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; one micro-batch
    return trainer


@pytest.fixture(scope="module")
def batch(tiny):
    """The same completions in r1kit's layout (TrainBatch) and TRL's (its inputs dict)."""
    path, tok = tiny
    g = torch.Generator().manual_seed(0)
    prompts = ["What is 3 + 4?", "Compute 12 * 7 - 5, show your work.", "2 - 9 ="]
    prompt_ids = [tok(p)["input_ids"] for p in prompts]
    n = GROUPS * GROUP_SIZE
    lengths = torch.randint(3, MAX_COMPLETION + 1, (n,), generator=g).tolist()
    lengths[0] = MAX_COMPLETION  # at least one full-length row
    completions = []
    for i, length in enumerate(lengths):
        ids = torch.randint(10, len(tok) - 8, (length,), generator=g).tolist()
        if i % 3 != 0 and length < MAX_COMPLETION:
            ids[-1] = tok.eos_token_id  # finished rows end in EOS (kept, as both trainers do)
        completions.append(ids)
    rows_prompt = [prompt_ids[i // GROUP_SIZE] for i in range(n)]
    c = max(lengths)
    mask = pad_rows([[1.0] * len(x) for x in completions], c)  # (N, C)

    with torch.no_grad():  # the current policy's log-probs, then perturbed into "old" ones
        mb_batch = TrainBatch(rows_prompt, completions, torch.zeros(n, c), mask, mask.clone(),
                              torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.bool),
                              [None] * n)
        mb = make_micro_batch(mb_batch, list(range(n)), tok.pad_token_id, "cpu")
        logp = completion_logprobs(_load(path), mb.input_ids, mb.attention_mask, mb.prompt_lens,
                                   mb.completion_lens).logp
    shift = 0.3 * torch.randn(n, 1, generator=g) + 0.2 * torch.randn(n, c, generator=g)
    old = (logp + shift) * mask  # per-sequence and per-token offsets: GSPO's ratios clip too
    ref = (logp + 0.3 * torch.randn(n, c, generator=g)) * mask
    adv = torch.randn(n, generator=g)
    ours = TrainBatch(rows_prompt, completions, sampler_logp=old.clone(), mask=mask,
                      token_mask=mask.clone(), advantages=adv, rewards=torch.zeros(n),
                      truncated=torch.zeros(n, dtype=torch.bool), routed=[None] * n,
                      old_logp=old, ref_logp=ref)

    # TRL's layout (see _generate_and_score_completions): prompts left-padded, completions
    # right-padded with the pad token, completion_mask 1 up to and including EOS.
    p = max(len(x) for x in prompt_ids)
    prompt = torch.full((n, p), tok.pad_token_id)
    prompt_mask = torch.zeros(n, p, dtype=torch.long)
    completion = torch.full((n, c), tok.pad_token_id)
    for i in range(n):
        prompt[i, p - len(rows_prompt[i]):] = torch.tensor(rows_prompt[i])
        prompt_mask[i, p - len(rows_prompt[i]):] = 1
        completion[i, : lengths[i]] = torch.tensor(completions[i])
    theirs = {"prompt_ids": prompt, "prompt_mask": prompt_mask, "completion_ids": completion,
              "completion_mask": mask.long(), "advantages": adv.clone(),
              "old_per_token_logps": old.clone(), "ref_per_token_logps": ref.clone(),
              "num_items_in_batch": mask.sum()}
    return ours, theirs


def _grads(model) -> dict[str, torch.Tensor]:
    out = {name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
           for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out


CASES = [(loss, beta, level) for loss in AGGREGATION for beta in (0.0, BETA)
         for level in POLICY]


def _compare(tiny, batch, tmp_path, obj, recorder_fn=None, **trl_settings):
    """Loss and every gradient, r1kit vs TRL, on one fresh copy of the tiny model."""
    path, tok = tiny
    ours, theirs = batch
    model = _load(path)
    model.train()
    trainer = _trainer(model, tok, tmp_path, **trl_settings)
    mb = make_micro_batch(ours, list(range(ours.rows)), tok.pad_token_id, "cpu")
    sums = Sums()
    rec = recorder_fn(model) if recorder_fn else None
    r1 = microbatch_loss(model, ours, mb, obj, Norm.of(ours.mask, MAX_COMPLETION), sums, rec)
    r1.loss.backward()
    g_r1 = _grads(model)

    inputs = dict(theirs)
    if not trainer.beta:
        inputs.pop("ref_per_token_logps")
    ref = trainer.compute_loss(model, inputs)
    ref.backward()
    g_trl = _grads(model)

    assert sums.resolved().clipped > 0, "the perturbation should clip some tokens"
    loss_diff = abs(float(r1.loss.detach()) - float(ref.detach()))
    grad_diff = {k: float((g_r1[k] - g_trl[k]).abs().max()) for k in g_r1}
    worst = max(grad_diff, key=grad_diff.get)
    print(f"loss {float(ref.detach()):.6f} |loss diff| {loss_diff:.2e} "
          f"max |grad diff| {grad_diff[worst]:.2e} ({worst})")
    assert loss_diff < TOL, (float(r1.loss.detach()), float(ref.detach()))
    assert grad_diff[worst] < TOL, f"{worst}: max |grad diff| {grad_diff[worst]:.3g}"
    assert max(float(g.abs().max()) for g in g_trl.values()) > 1e-3  # a real gradient


@pytest.mark.parametrize("loss_type,beta,level", CASES)
def test_loss_and_gradients_match_trl(tiny, batch, tmp_path, loss_type, beta, level):
    obj = Objective(policy_loss=POLICY[level], aggregation=AGGREGATION[loss_type],
                    clip=ClipParams(CLIP_LOW, CLIP_HIGH), beta=beta, kl_estimator="k3",
                    mismatch="none", max_tokens=MAX_COMPLETION, logprob_chunk=16,
                    share_prompts=True)  # the default (train.share_prompts): one prompt pass
    _compare(tiny, batch, tmp_path, obj, loss_type=loss_type, beta=beta,
             importance_sampling_level=level)


def test_router_aux_loss_matches_trl(tiny, batch, tmp_path):
    """TRL's MoE default (load-balancing loss at the config's 0.001) = r1kit's aux_loss_coef."""
    from grpo.routing import RoutingRecorder

    obj = Objective(aggregation="token_mean", clip=ClipParams(CLIP_LOW, CLIP_HIGH),
                    mismatch="none", max_tokens=MAX_COMPLETION, aux_loss_coef=0.001)
    _compare(tiny, batch, tmp_path, obj, lambda m: RoutingRecorder(m, keep_logits=True),
             loss_type="dapo", router_aux_loss_coef=None)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_trl(tiny, tmp_path, scale):
    """TRL's own ``_generate_and_score_completions`` (generation included) vs ADVANTAGES."""
    path, tok = tiny
    rewards = torch.tensor([[1.0, 0.0, 0.5, 0.0],  # mixed
                            [1.0, 1.0, 1.0, 1.0],  # zero variance: advantage 0 in both
                            [0.0, 2.0, -1.0, 0.25]])
    model = _load(path)
    model.train()
    trainer = _trainer(model, tok, tmp_path, rewards=rewards.flatten().tolist(),
                       scale_rewards=scale, max_completion_length=4)
    rows = [{"prompt": p} for p in ("1 + 1 =", "2 * 3 =", "9 - 4 =") for _ in range(GROUP_SIZE)]
    out = trainer._generate_and_score_completions(rows)
    ours = ADVANTAGES["grpo"](rewards, scale).flatten()
    assert torch.allclose(out["advantages"].float(), ours, atol=1e-6, rtol=0), (
        out["advantages"], ours)
