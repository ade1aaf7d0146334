"""Distillation, unit level: the SFT loss on a packed batch, the reverse-KL advantage and loss on a
tiny vocabulary, rejection sampling with the real scorer and rewards, the dataset's reuse rule,
and the vocabulary check, each against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from distill.on_policy import VocabularyMismatch, check_vocabularies, reverse_kl_advantages
from distill.sft import SFTExample, collate, token_logprobs
from distill.traces import Trace, read_dataset, sample_traces, select_verified, write_dataset
from grpo.losses import AGGREGATIONS, POLICY_LOSSES, ClipParams, Norm, topk_forward_kl


@pytest.fixture(scope="module")
def dense(tiny_cache):
    from r1kit.tiny import build_tiny

    return build_tiny("qwen3_dense", cache_dir=tiny_cache)


def test_sft_loss_is_masked_to_completion_tokens_on_a_packed_batch(dense):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(dense, dtype=torch.float32).eval()
    e1, e2 = SFTExample([20, 21, 22], [30, 31]), SFTExample([23], [32, 33, 34])
    b = collate([[e1, e2]], pad_id=0)
    # Hand layout: row = 20 21 22 | 30 31 | 23 | 32 33 34; loss on 30 31 and 32 33 34 only.
    assert b.loss_mask.tolist() == [[False, False, False, True, True, False, True, True, True]]
    got = token_logprobs(model, b)  # (5,)
    # By hand: each example alone through the full model, log-softmax of the logits at the
    # position before each completion token.
    want = []
    for e in (e1, e2):
        ids = torch.tensor([e.prompt_ids + e.completion_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)  # (T, V)
        p = len(e.prompt_ids)
        want += [logp[p + j - 1, t] for j, t in enumerate(e.completion_ids)]
    torch.testing.assert_close(got, torch.stack(want), atol=2e-5, rtol=0)
    # The loss the trainer minimises: mean NLL over exactly those 5 tokens; prompt tokens and
    # the second example's prompt (23, which follows e1's completion) carry none.
    loss = -got.mean()
    assert math.isclose(float(loss.detach()), -float(torch.stack(want).mean()), abs_tol=2e-5)


def test_reverse_kl_advantage_and_loss_by_hand():
    # Tiny vocabulary of 3. Student p and teacher q at two positions; sampled tokens 0 then 1.
    p = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]])
    q = torch.tensor([[0.25, 0.5, 0.25], [0.1, 0.3, 0.6]])
    tokens = [0, 1]
    logits = p.log().clone().requires_grad_(True)  # (C, V) student logits (softmax = p)
    logp = torch.log_softmax(logits, -1)[[0, 1], tokens][None]  # (1, 2)
    teacher = q.log()[[0, 1], tokens][None]  # (1, 2)
    mask = torch.ones(1, 2)
    adv = reverse_kl_advantages(teacher, logp.detach(), mask)
    # log q - log p: log(.25/.5) = -log 2 and log(.3/.6) = -log 2.
    torch.testing.assert_close(adv, torch.tensor([[-math.log(2), -math.log(2)]]))
    out = POLICY_LOSSES["ppo_clip"](logp, logp.detach(), adv, mask, ClipParams())
    loss = AGGREGATIONS["token_mean"](out.loss, mask, Norm.of(mask, 2))
    # Ratio 1: loss = mean_t (log p - log q) = the per-token reverse-KL estimate = log 2.
    assert math.isclose(float(loss.detach()), math.log(2), rel_tol=1e-6)
    loss.backward()
    # d loss / d logits_t = -A_t / 2 * (onehot(x_t) - p_t) (the score-function gradient).
    want = torch.stack([-adv[0, t] / 2 * (torch.nn.functional.one_hot(
        torch.tensor(tokens[t]), 3) - p[t]) for t in range(2)])
    torch.testing.assert_close(logits.grad, want, atol=1e-6, rtol=0)
    # Padding gets no advantage.
    assert reverse_kl_advantages(teacher, logp.detach(), torch.tensor([[1.0, 0.0]]))[0, 1] == 0


def test_topk_forward_kl_by_hand():
    # Vocabulary of 3, one position: teacher q, student p = softmax(logits).
    q = torch.tensor([0.5, 0.3, 0.2])
    p = torch.tensor([0.2, 0.2, 0.6])
    logits = p.log().clone().requires_grad_(True)
    student = torch.log_softmax(logits, -1)
    # k = V: the exact KL(q || p) = sum q log(q / p).
    full = topk_forward_kl(student[None, None], q.log()[None, None])
    want = sum(float(qi * math.log(qi / pi)) for qi, pi in zip(q, p))
    assert math.isclose(float(full.detach()), want, rel_tol=1e-6)
    full.sum().backward()
    torch.testing.assert_close(logits.grad, p - q, atol=1e-6, rtol=0)  # d KL / d logits
    # k = 2 (tokens 0 and 1), token 2 in the rest bucket: teacher (.5, .3 | .2), student
    # (.2, .2 | .6): .5 log(.5 / .2) + .3 log(.3 / .2) + .2 log(.2 / .6).
    two = topk_forward_kl(student.detach()[None, None, :2], q.log()[None, None, :2])
    want2 = 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.2) + 0.2 * math.log(0.2 / 0.6)
    assert math.isclose(float(two), want2, rel_tol=1e-6)
    # A perfect copy scores 0, whatever k.
    for k in (1, 2, 3):
        copy = q.log()[None, None, :k]
        assert abs(float(topk_forward_kl(copy, copy))) < 1e-7


def test_forward_kl_update_equals_the_full_logit_kl(dense):
    """Teacher.prepare (k = V) then the trainer's micro-batch loss equals, to 1e-5, the forward
    KL worked out from both models' full logits, in value and in gradient."""
    from transformers import AutoModelForCausalLM

    from distill.on_policy import Teacher
    from grpo.batch import TrainBatch, pad_rows
    from grpo.update import Objective, Sums, micro_batches, microbatch_loss

    student = AutoModelForCausalLM.from_pretrained(dense, dtype=torch.float32)
    other = AutoModelForCausalLM.from_pretrained(dense, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a different teacher on the same vocabulary
        for prm in other.parameters():
            prm.add_(0.3 * prm.std().nan_to_num() * torch.randn(prm.shape, generator=g))
    vocab = other.get_output_embeddings().weight.shape[0]
    teacher = Teacher(other, loss="forward_kl", top_k=vocab + 5)  # clamped to V
    assert teacher.top_k == vocab
    prompts, comps = [[20, 21, 22], [23, 24]], [[30, 31, 32], [33]]
    batch = TrainBatch(prompt_ids=prompts, completion_ids=comps,
                       sampler_logp=pad_rows([[-1.0] * 3, [-1.0]], 3),
                       mask=pad_rows([[1.0] * 3, [1.0]], 3),
                       token_mask=pad_rows([[1.0] * 3, [1.0]], 3),
                       advantages=torch.zeros(2), rewards=torch.zeros(2),
                       truncated=torch.zeros(2, dtype=torch.bool), routed=[None, None])
    teacher.prepare(batch, 64, 0, 4, "cpu")
    assert batch.advantages.abs().sum() == 0 and batch.teacher_ids.shape == (2, 3, vocab)
    assert batch.stats["distill/teacher_topk_mass"] == pytest.approx(1.0, abs=1e-5)
    obj = Objective(max_tokens=3, logprob_chunk=2)
    norm = Norm.of(batch.mask, 3)
    (mb,) = micro_batches(batch, [0, 1], 64, 0, "cpu")
    loss = microbatch_loss(student, batch, mb, obj, norm, Sums()).loss
    loss.backward()
    got_grad = student.lm_head.weight.grad.clone()
    student.zero_grad()
    # By hand: each row through both models, KL(q || p) at the 4 completion positions, mean.
    terms = []
    for pr, co in zip(prompts, comps):
        ids = torch.tensor([pr + co])
        lp = torch.log_softmax(student(ids).logits[0].float(), -1)
        with torch.no_grad():
            lq = torch.log_softmax(other(ids).logits[0].float(), -1)
        for j in range(len(co)):
            t = len(pr) + j - 1
            terms.append((lq[t].exp() * (lq[t] - lp[t])).sum())
    want = torch.stack(terms).mean()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), abs=1e-5)
    want.backward()
    torch.testing.assert_close(got_grad, student.lm_head.weight.grad, atol=1e-5, rtol=1e-4)


def test_reward_weight_adds_the_outcome_advantage_to_every_token(dense):
    """distill.reward_weight: each real token's advantage is the teacher's reverse-KL term plus
    w x its sequence's reward-based advantage; padding stays 0. By hand against the teacher's
    own log-probs."""
    from transformers import AutoModelForCausalLM

    from distill.on_policy import Teacher
    from grpo.batch import TrainBatch, pad_rows
    from grpo.update import batch_logprobs

    model = AutoModelForCausalLM.from_pretrained(dense, dtype=torch.float32)

    def batch() -> TrainBatch:
        return TrainBatch(prompt_ids=[[20, 21, 22], [23, 24]], completion_ids=[[30, 31], [33]],
                          sampler_logp=pad_rows([[-1.0, -2.0], [-0.5]], 2),
                          mask=pad_rows([[1.0, 1.0], [1.0]], 2),
                          token_mask=pad_rows([[1.0, 1.0], [1.0]], 2),
                          advantages=torch.tensor([0.5, -0.5]), rewards=torch.tensor([1.0, 0.0]),
                          truncated=torch.zeros(2, dtype=torch.bool), routed=[None, None])

    plain, mixed = batch(), batch()
    q = batch_logprobs(model, plain, 64, 0, 4, "cpu")  # (2, 2) teacher log-probs
    Teacher(model).prepare(plain, 64, 0, 4, "cpu")
    Teacher(model, reward_weight=2.0).prepare(mixed, 64, 0, 4, "cpu")
    want_plain = torch.tensor([[q[0, 0] + 1.0, q[0, 1] + 2.0], [q[1, 0] + 0.5, 0.0]])
    torch.testing.assert_close(plain.advantages, want_plain)
    want_mixed = want_plain + torch.tensor([[1.0, 1.0], [-1.0, 0.0]])  # 2 x (0.5, -0.5)
    torch.testing.assert_close(mixed.advantages, want_mixed)
    # forward_kl: the teacher's term is in the loss, so the advantages are the outcome part only.
    fkl = batch()
    Teacher(model, loss="forward_kl", top_k=4, reward_weight=2.0).prepare(fkl, 64, 0, 4, "cpu")
    torch.testing.assert_close(fkl.advantages, torch.tensor([[1.0, 1.0], [-1.0, 0.0]]))


def test_per_token_advantages_broadcast_like_per_sequence_ones():
    logp = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 4)
    a = torch.tensor([0.5, -1.0, 2.0])
    for name in ("ppo_clip", "dual_clip", "gspo", "cispo"):
        seq = POLICY_LOSSES[name](logp, logp - 0.1, a, mask, ClipParams())
        tok = POLICY_LOSSES[name](logp, logp - 0.1, a[:, None].expand(3, 4), mask, ClipParams())
        torch.testing.assert_close(seq.loss, tok.loss)


class FixedEngine:
    """Returns given completions per prompt (the teacher's traces), with token ids of the
    length each text has in words, so lengths are known by hand."""

    def __init__(self, outputs: dict[str, list[str]]):
        self.outputs, self.last_stats = outputs, None

    def generate(self, prompts, n, sampling):
        from rollouts.types import Completion, GenerationStats, Group

        groups = []
        for prompt in prompts:
            texts = self.outputs[prompt][:n]
            comps = [Completion(t, list(range(len(t.split()))), [0.0] * len(t.split()), "stop")
                     for t in texts]
            groups.append(Group(prompt, [1, 2, 3], comps))
        self.last_stats = GenerationStats(len(prompts), n * len(prompts), 0, 0.0, 0)
        return groups


def test_rejection_sampling_keeps_exactly_the_verified_traces():
    from grpo.problems import Problem
    from rewards.registry import RewardSpec
    from rewards.scorer import Scorer
    from rollouts.types import Sampling

    problems = [Problem("What is 2 + 3?", "5"), Problem("What is 4 * 2?", "8")]
    outputs = {
        "p0": [" 2 + 3 = 5, and I check it again: 5.</think> <answer>5</answer>",  # 1.5, long
               " 2 + 3 = 5.</think> <answer>5</answer>",  # 1.5, short: the one kept
               " 2 + 3 = 6.</think> <answer>6</answer>",  # 0.5: wrong
               " 2 + 3 = 5, then I check it once more."],  # 0: no tags, no answer stated
        "p1": [" 4 * 2 = 9.</think> <answer>9</answer>",  # 0.5
               " 4 * 2 = 8.</think> 8"],  # 0: untagged
    }
    with Scorer([RewardSpec("accuracy", 1.0), RewardSpec("format", 0.5)], workers=1) as scorer:
        traces, cost = sample_traces(FixedEngine(outputs), scorer, problems, ["p0", "p1"], 4,
                                     Sampling(max_tokens=48))
    assert [t.reward for t in traces] == [1.5, 1.5, 0.5, 0.0, 0.5, 0.0]
    kept = select_verified(traces, 1.5, "shortest")
    assert [t.completion for t in kept] == [outputs["p0"][1]]
    kept_all = select_verified(traces, 1.5, "all")
    assert [t.completion for t in kept_all] == outputs["p0"][:2]
    # threshold 1.0 also admits correct answers in any format; 0.5 admits the wrong ones too
    assert len(select_verified(traces, 0.5, "all")) == 4
    # Every sampled trace cost the teacher its prompt (3 tokens) and its completion, kept or not.
    words = sum(len(t.split()) for texts in outputs.values() for t in texts)
    assert cost == {"sampled": 6.0, "teacher_tokens": float(words + 3 * 6),
                    "generated_tokens": float(words)}


def test_dataset_is_reused_only_with_the_same_settings(tmp_path):
    rows = [{"question": "q", "completion": "c", "reward": 1.5}]
    path = tmp_path / "traces.jsonl"
    write_dataset(path, rows, {"settings": {"n": 4, "teacher": "t"}, "kept": 1})
    assert read_dataset(path, {"n": 4, "teacher": "t"})[0] == rows
    assert read_dataset(path, {"n": 8, "teacher": "t"}) is None
    assert read_dataset(tmp_path / "other.jsonl", {"n": 4, "teacher": "t"}) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_vocabulary_check_names_the_first_difference(tiny_cache, dense):
    from transformers import AutoTokenizer

    from r1kit.tiny import build_tiny

    same = AutoTokenizer.from_pretrained(dense)
    other = AutoTokenizer.from_pretrained(build_tiny("qwen3_dense", seed=1, cache_dir=tiny_cache))
    check_vocabularies(same, same, 1024, 1024)  # identical: passes
    with pytest.raises(VocabularyMismatch, match=r"is id \d+ in the student.*distill.method=sft"):
        check_vocabularies(other, same, 1024, 1024)
    with pytest.raises(VocabularyMismatch, match="LM head has only 512"):
        check_vocabularies(same, same, 1024, 512)


def test_select_verified_rejects_an_unknown_rule():
    with pytest.raises(ValueError, match="keep must be"):
        select_verified([Trace(0, "a", 1, 1.0)], 1.0, "longest")


def test_reverse_kl_refuses_a_tempered_sampler_before_any_model_loads(tmp_path):
    # The sampled reverse KL needs x ~ student at temperature 1: log p_1(x) - log q(x) averaged
    # over a tempered sampler is not KL(p || q). forward_kl is unaffected (the positions are
    # only where the KL is taken).
    from r1kit.config import ConfigError, load_config, validate_distill
    from tests.conftest import REPO

    def config(*overrides: str):
        return load_config(REPO / "recipes" / "tiny_distill_on_policy.yaml",
                           [f"log.out_dir={tmp_path / 'out'}", "distill.teacher=tiny:qwen3_moe",
                            *overrides])

    for temperature in ("0.7", "0", "1.3"):
        with pytest.raises(ConfigError) as e:
            validate_distill(config("distill.loss=reverse_kl", f"rollout.temperature={temperature}"))
        (line,) = str(e.value).splitlines()
        assert "rollout.temperature: must be 1 with distill.loss=reverse_kl" in line
    validate_distill(config("distill.loss=reverse_kl", "rollout.temperature=1.0"))
    validate_distill(config("distill.loss=forward_kl", "rollout.temperature=0.7"))
    validate_distill(config("distill.method=sft", "rollout.temperature=0.7"))
    assert not (tmp_path / "out").exists()
