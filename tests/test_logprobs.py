"""Chunked completion log-probs and entropies against a plain full-logits forward, on the real
tiny Qwen3-MoE and DeepSeek-V3: values, gradients (LoRA included), and the micro-batch split."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpo.batch import TrainBatch, make_micro_batch, plan_micro_batches
from grpo.logprobs import chunked_head_logprobs, completion_logprobs, split_model
from grpo.losses import Norm
from grpo.update import Objective, Sums, micro_batches, microbatch_loss
from r1kit.tiny import build_tiny


@pytest.fixture(scope="module", params=["qwen3_moe", "deepseek_v3"])
def model(request):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(build_tiny(request.param))


def _rows(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompt_lens, comp_lens = [5, 3, 7], [9, 4, 6]
    prompts = [torch.randint(0, vocab, (p,), generator=g).tolist() for p in prompt_lens]
    comps = [torch.randint(0, vocab, (c,), generator=g).tolist() for c in comp_lens]
    return prompts, comps


def _padded(prompts, comps):
    width = max(len(p) + len(c) for p, c in zip(prompts, comps))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompts, comps)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        att[i, : len(p) + len(c)] = 1
    return ids, att, torch.tensor([len(p) for p in prompts]), torch.tensor([len(c) for c in comps])


def _reference(model, ids, att, plens, clens):
    """Log-probs and entropies from the model's full (B, T, V) logits, token by token."""
    logits = model(input_ids=ids, attention_mask=att).logits.float()
    logp_all = torch.log_softmax(logits, -1)
    ent_all = -(logp_all.exp() * logp_all).sum(-1)
    c = int(clens.max())
    logp, ent = torch.zeros(len(ids), c), torch.zeros(len(ids), c)
    for b in range(len(ids)):
        for j in range(int(clens[b])):
            pos = int(plens[b]) + j
            logp[b, j] = logp_all[b, pos - 1, ids[b, pos]]
            ent[b, j] = ent_all[b, pos - 1]
    return logp, ent


@pytest.mark.parametrize("chunk", [1, 4, 1024])
def test_values_match_the_full_forward(model, chunk):
    ids, att, plens, clens = _padded(*_rows(model.config.vocab_size))
    out = completion_logprobs(model, ids, att, plens, clens, chunk_tokens=chunk)
    ref_logp, ref_ent = _reference(model, ids, att, plens, clens)
    torch.testing.assert_close(out.logp, ref_logp, atol=2e-5, rtol=0)
    torch.testing.assert_close(out.entropy * out.mask, ref_ent, atol=2e-5, rtol=0)
    assert out.mask.sum() == clens.sum()


def test_gradients_match_the_full_forward_with_entropy_bonus(model):
    ids, att, plens, clens = _padded(*_rows(model.config.vocab_size, seed=1))

    def grads(fn):
        model.zero_grad(set_to_none=True)
        logp, ent = fn()
        (logp.sum() - 0.1 * ent.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def chunked():
        out = completion_logprobs(model, ids, att, plens, clens, chunk_tokens=3)
        return out.logp, out.entropy * out.mask

    got = grads(chunked)
    want = grads(lambda: _reference(model, ids, att, plens, clens))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)


def test_lora_adapter_gets_the_same_gradient_as_the_full_forward():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(build_tiny("qwen3_moe"))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"],
                                            init_lora_weights=False))
    ids, att, plens, clens = _padded(*_rows(model.config.vocab_size, seed=2))
    model.zero_grad()
    completion_logprobs(model, ids, att, plens, clens, chunk_tokens=2).logp.sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    _reference(model, ids, att, plens, clens)[0].sum().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(got[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    assert any("lm_head" in n and g.abs().sum() > 0 for n, g in got.items())


def test_head_chunks_are_recomputed_not_stored():
    # With gradients on, each chunk runs under activation checkpointing: the autograd graph
    # holds no (chunk, V) logits, only the (M, H) hidden states and the outputs.
    head = torch.nn.Linear(8, 50_000, bias=False)
    hidden = torch.randn(64, 8, requires_grad=True)
    targets = torch.randint(0, 50_000, (64,))
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp, _ = chunked_head_logprobs(head, hidden, targets, chunk_tokens=16)
    assert max(saved) < 16 * 50_000  # no chunk's logits kept for backward
    logp.sum().backward()
    assert hidden.grad is not None and head.weight.grad is not None


def test_models_that_post_process_logits_are_refused():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                       final_logit_softcapping=30.0)
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        split_model(Gemma2ForCausalLM(cfg))


def _train_batch(model, n=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    plens = torch.randint(2, 8, (n,), generator=g).tolist()
    clens = torch.randint(1, 10, (n,), generator=g).tolist()
    width = max(clens)
    mask = torch.zeros(n, width)
    for i, c in enumerate(clens):
        mask[i, :c] = 1
    return TrainBatch(
        prompt_ids=[torch.randint(0, vocab, (p,), generator=g).tolist() for p in plens],
        completion_ids=[torch.randint(0, vocab, (c,), generator=g).tolist() for c in clens],
        sampler_logp=-torch.rand(n, width, generator=g) * mask - 3 * mask,
        mask=mask, token_mask=mask.clone(), advantages=torch.randn(n, generator=g),
        rewards=torch.zeros(n), truncated=torch.zeros(n, dtype=torch.bool),
        routed=[None] * n,
        old_logp=-torch.rand(n, width, generator=g) * mask - 3 * mask)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean",
                                         "seq_mean_token_sum_norm"])
def test_token_budget_changes_memory_not_the_gradient(model, aggregation):
    batch = _train_batch(model)
    obj = Objective(aggregation=aggregation, mismatch="token_truncate", max_tokens=10,
                    logprob_chunk=5)
    rows = list(range(batch.rows))
    norm = Norm.of(batch.mask, obj.max_tokens)

    def grads(budget):
        model.zero_grad(set_to_none=True)
        parts = list(micro_batches(batch, rows, budget, pad_id=0, device="cpu"))
        total = sum(microbatch_loss(model, batch, mb, obj, norm, Sums()).loss for mb in parts)
        total.backward()
        return len(parts), float(total.detach()), {n: p.grad.clone() for n, p in model.named_parameters()
                                          if p.grad is not None}

    n_small, loss_small, g_small = grads(budget=20)
    n_one, loss_one, g_one = grads(budget=10_000)
    assert n_small > 1 and n_one == 1
    assert loss_small == pytest.approx(loss_one, abs=1e-6)
    for name in g_one:
        torch.testing.assert_close(g_small[name], g_one[name], atol=1e-6, rtol=1e-5, msg=name)


def test_micro_batch_plan_respects_the_budget():
    lengths = [30, 7, 12, 25, 3, 18]
    plans = plan_micro_batches(lengths, list(range(6)), token_budget=40)
    assert sorted(r for p in plans for r in p) == list(range(6))
    for p in plans:
        assert len(p) * max(lengths[r] for r in p) <= 40 or len(p) == 1


def test_micro_batch_is_right_padded_with_replay_positions():
    vocab = 50
    batch = TrainBatch(prompt_ids=[[1, 2], [3]], completion_ids=[[4, 5, 6], [7]],
                       sampler_logp=torch.zeros(2, 3), mask=torch.ones(2, 3),
                       token_mask=torch.ones(2, 3), advantages=torch.zeros(2),
                       rewards=torch.zeros(2), truncated=torch.zeros(2, dtype=torch.bool),
                       routed=[torch.full((4, 2, 2), 5, dtype=torch.int16),
                               torch.full((1, 2, 2), 6, dtype=torch.int16)])
    mb = make_micro_batch(batch, [0, 1], pad_id=vocab - 1, device="cpu")
    assert mb.input_ids.tolist() == [[1, 2, 4, 5, 6], [3, 7, 49, 49, 49]]
    assert mb.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    # routing recorded for every position the sampler ran forward on (not the last token)
    assert mb.routed_valid.tolist() == [[True] * 4 + [False], [True] + [False] * 4]
    assert mb.routed.shape == (2, 5, 2, 2) and int(mb.routed[1, 0, 0, 0]) == 6


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_aux_loss_coefficient_adds_the_router_balance_gradient(family):
    from grpo.routing import RoutingRecorder, load_balancing_loss, moe_routers

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(build_tiny(family))
    batch = _train_batch(model)
    rows = list(range(batch.rows))
    mb = next(micro_batches(batch, rows, 10_000, pad_id=0, device="cpu"))
    norm = Norm.of(batch.mask, 10)
    router = moe_routers(model)[0].weight

    def loss_and_router_grad(coef):
        model.zero_grad(set_to_none=True)
        rec = RoutingRecorder(model, keep_logits=True)
        out = microbatch_loss(model, batch, mb, Objective(aux_loss_coef=coef, max_tokens=10),
                              norm, Sums(), rec)
        out.loss.backward()
        return float(out.loss.detach()), router.grad.clone(), rec

    base_loss, base_grad, _ = loss_and_router_grad(0.0)
    aux_loss, aux_grad, rec = loss_and_router_grad(0.5)
    balance = load_balancing_loss(model, rec, mb.attention_mask.bool())
    # the whole micro-batch is the optimiser batch here, so the aux term enters with weight 1
    assert aux_loss == pytest.approx(base_loss + 0.5 * float(balance), rel=1e-5, abs=1e-6)
    assert not torch.allclose(aux_grad, base_grad)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "qwen3_dense"])
def test_shared_prompt_pass_equals_the_plain_pass(family):
    """train.share_prompts: rows sharing a prompt (groups of 3 over prompts of different lengths,
    ragged completions) give the plain pass's log-probs, entropies, teacher-style extra log-probs
    and top-k, gradients and recorded experts, to float64 rounding, from one prompt pass."""
    from grpo.batch import TrainBatch, make_micro_batch, pad_rows
    from grpo.logprobs import completion_hidden, completion_topk, split_model
    from grpo.routing import RoutingRecorder, moe_routers
    from grpo.update import forward_logprobs

    kw = {} if family == "qwen3_dense" else {"experts_implementation": "eager"}
    m = AutoModelForCausalLM.from_pretrained(build_tiny(family), dtype=torch.float64, **kw)
    g = torch.Generator().manual_seed(1)
    vocab = m.config.vocab_size
    prompts = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in (7, 4, 9)]
    rows = [(p, torch.randint(5, vocab, (2 + (3 * i + k) % 5,), generator=g).tolist())
            for i, p in enumerate(prompts) for k in range(3)]
    batch = TrainBatch([p for p, _ in rows], [c for _, c in rows],
                       pad_rows([[0.0] * len(c) for _, c in rows], 6),
                       pad_rows([[1.0] * len(c) for _, c in rows], 6),
                       pad_rows([[1.0] * len(c) for _, c in rows], 6), torch.zeros(9),
                       torch.zeros(9), torch.zeros(9, dtype=torch.bool), [None] * 9)
    mb = make_micro_batch(batch, list(range(9)), 0, "cpu")
    args = (mb.input_ids, mb.attention_mask, mb.prompt_lens, mb.completion_lens)
    assert completion_hidden(split_model(m)[0], *args, share_prompts=True)[-1] == 2
    extra = torch.randint(0, vocab, (9, 6, 3), generator=g)
    moe = bool(moe_routers(m)) if family != "qwen3_dense" else False
    got = []
    for share in (False, True):
        m.zero_grad()
        rec = RoutingRecorder(m) if moe else None
        tl = forward_logprobs(m, mb, 4, False, rec, extra_ids=extra, share=share)
        (tl.logp.sum() + 0.3 * tl.entropy.sum() + 0.1 * tl.extra_logp.sum()).backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        topk = completion_topk(m, *args, 4, chunk_tokens=4, share_prompts=share)
        got.append((tl, grads, rec, topk))
    (plain, g0, r0, k0), (shared, g1, r1, k1) = got
    for name in ("logp", "entropy", "mask", "extra_logp"):
        torch.testing.assert_close(getattr(shared, name), getattr(plain, name), atol=1e-6,
                                   rtol=0)
    assert float(plain.logp.detach().abs().sum()) > 0
    assert g0.keys() == g1.keys() and len(g0) == len(list(m.parameters()))
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-6, rtol=1e-6, msg=name)
    torch.testing.assert_close(k1[1], k0[1], atol=1e-6, rtol=0)
    assert torch.equal(k1[0][mb.completion_lens > 0], k0[0][mb.completion_lens > 0])
    if moe:  # the two passes are recorded as the one (B * T) call they stand for
        assert len(r0.calls) == len(r1.calls) == 1
        valid = mb.attention_mask.flatten().bool()
        for a, b in zip(r0.calls[0], r1.calls[0]):
            assert torch.equal(a[valid], b[valid])


def test_shared_prompt_pass_is_skipped_without_shared_prompts_or_for_other_models(model):
    from grpo.logprobs import completion_hidden, split_model

    prompts, comps = _rows(model.config.vocab_size)
    args = _padded(prompts, comps)  # three different prompts: nothing to share
    assert completion_hidden(split_model(model)[0], *args, share_prompts=True)[-1] == 1
    args = _padded([prompts[0]] * 3, comps)
    assert completion_hidden(split_model(model)[0], *args, share_prompts=True)[-1] == 2
    assert completion_hidden(split_model(model)[0], *args, share_prompts=False)[-1] == 1


def test_shared_prompt_pass_is_not_taken_for_sliding_windows_or_gradient_checkpointing(tmp_path):
    """transformers' sliding-window mask counts cache slots, which the padded prompt slots shift,
    and gradient checkpointing turns the cache off: both take the plain pass."""
    from transformers import AutoConfig

    from grpo.logprobs import completion_hidden, split_model

    path = build_tiny("qwen3_dense")
    prompts, comps = _rows(AutoConfig.from_pretrained(path).vocab_size)
    args = _padded([prompts[0]] * 2 + [prompts[1]], comps)
    m = AutoModelForCausalLM.from_pretrained(path, use_sliding_window=True, sliding_window=4,
                                             max_window_layers=0,
                                             layer_types=["sliding_attention"] * 2)
    assert "sliding_attention" in m.config.layer_types
    assert completion_hidden(split_model(m)[0], *args, share_prompts=True)[-1] == 1
    m = AutoModelForCausalLM.from_pretrained(path)
    assert completion_hidden(split_model(m)[0], *args, share_prompts=True)[-1] == 2
    m.gradient_checkpointing_enable()
    m.train()
    assert completion_hidden(split_model(m)[0], *args, share_prompts=True)[-1] == 1
    m.eval()  # the cache is on again outside training
    assert completion_hidden(split_model(m)[0], *args, share_prompts=True)[-1] == 2


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_aux_loss_with_the_shared_prompt_pass_equals_the_plain_pass(family):
    """algo.aux_loss_coef > 0 keeps train.share_prompts: the router's balance loss is computed
    from the two passes' routing merged into the (B * T) layout of the one pass they stand for,
    so the loss equals the plain pass's and so do the gradients, routers included, and the aux
    term's own share of them (coefficient 0.5 minus 0), to the shared pass's own agreement with
    the plain one in float64 (about 1e-8 relative, as without the aux loss)."""
    from grpo.batch import TrainBatch, make_micro_batch, pad_rows
    from grpo.routing import RoutingRecorder

    m = AutoModelForCausalLM.from_pretrained(build_tiny(family), dtype=torch.float64,
                                             experts_implementation="eager")
    g = torch.Generator().manual_seed(2)
    vocab = m.config.vocab_size
    prompts = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in (6, 3, 8)]
    rows = [(p, torch.randint(5, vocab, (2 + (2 * i + k) % 4,), generator=g).tolist())
            for i, p in enumerate(prompts) for k in range(3)]
    comps = [c for _, c in rows]
    batch = TrainBatch([p for p, _ in rows], comps, pad_rows([[-1.0] * len(c) for c in comps], 5),
                       pad_rows([[1.0] * len(c) for c in comps], 5),
                       pad_rows([[1.0] * len(c) for c in comps], 5),
                       torch.linspace(-1, 1, 9, dtype=torch.float64), torch.zeros(9),
                       torch.zeros(9, dtype=torch.bool), [None] * 9)
    mb = make_micro_batch(batch, list(range(9)), 0, "cpu")
    norm = Norm.of(batch.mask, 5)

    passes = []
    m.model.register_forward_hook(lambda *_: passes.append(1))  # decoder calls

    def run(coef: float, share: bool):
        m.zero_grad(set_to_none=True)
        passes.clear()
        obj = Objective(aux_loss_coef=coef, max_tokens=5, share_prompts=share)
        rec = RoutingRecorder(m, keep_logits=True)
        out = microbatch_loss(m, batch, mb, obj, norm, Sums(), rec)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        return out.loss.detach(), grads, (len(passes), len(rec.calls))

    (l0, g0, calls0), (l1, g1, calls1) = run(0.5, False), run(0.5, True)
    (_, b0, _), (_, b1, _) = run(0.0, False), run(0.0, True)
    # the shared pass ran (two decoder calls), recorded as the one (B * T) call it stands for
    assert calls0 == (1, 1) and calls1 == (2, 1)
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=1e-14)
    assert g0.keys() == g1.keys()
    routers = [n for n in g0 if "gate" in n and "proj" not in n]
    assert routers and all(float((g0[n] - b0[n]).abs().sum()) > 0 for n in routers)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(g1[name] - b1[name], g0[name] - b0[name], rtol=1e-6,
                                   atol=1e-7, msg=name)
