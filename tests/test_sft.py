"""The supervised trainer: packing never lets examples see each other, the loss covers exactly
the completion tokens, and training fits a handful of examples."""

from __future__ import annotations

import pytest
import torch

from distill.sft import SFTConfig, SFTExample, collate, pack, token_logprobs, train_sft


@pytest.fixture(scope="module")
def model(tiny_qwen):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_qwen, dtype=torch.float32).eval()


def examples(n: int, seed: int = 0) -> list[SFTExample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p, c = torch.randint(3, 9, (2,), generator=g).tolist()
        ids = torch.randint(10, 400, (p + c,), generator=g).tolist()  # inside the vocabulary
        out.append(SFTExample(ids[:p], ids[p:]))
    return out


def test_packed_rows_give_each_example_its_own_logprobs(model):
    exs = examples(7)
    rows = pack(exs, row_tokens=40)
    assert len(rows) < len(exs)  # something really was packed
    packed = token_logprobs(model, collate(rows, pad_id=0))
    alone = torch.cat([token_logprobs(model, collate([[e]], pad_id=0))
                       for row in rows for e in row])
    assert packed.shape == alone.shape == (sum(len(e.completion_ids) for e in exs),)
    torch.testing.assert_close(packed, alone, atol=2e-5, rtol=0)
    # Without the position-id restarts the examples would see each other: a real difference.
    batch = collate(rows, pad_id=0)
    batch.position_ids = torch.arange(batch.input_ids.shape[1]).expand_as(batch.input_ids)
    assert (token_logprobs(model, batch) - alone).abs().max() > 1e-3


def test_loss_mask_is_exactly_the_completion_tokens():
    e1, e2 = SFTExample([5, 6, 7], [8, 9]), SFTExample([10], [11, 12, 13])
    b = collate([[e1, e2], [e2]], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13], [10, 11, 12, 13, 0, 0, 0, 0, 0]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 8]]
    assert b.input_ids[b.loss_mask].tolist() == [8, 9, 11, 12, 13, 11, 12, 13]
    assert b.tokens == 8


def test_bad_examples_are_refused():
    with pytest.raises(ValueError, match="does not fit row_tokens=4"):
        pack([SFTExample([1, 2, 3], [4, 5])], row_tokens=4)
    with pytest.raises(ValueError, match="no completion tokens"):
        pack([SFTExample([1, 2, 3], [])], row_tokens=8)


def test_training_fits_a_few_examples(tiny_qwen):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen, dtype=torch.float32)
    exs = examples(4, seed=1)
    before = -token_logprobs(model, collate(pack(exs, 64), 0)).mean().item()
    losses = train_sft(model, exs, SFTConfig(steps=60, lr=3e-3, row_tokens=64, rows_per_step=1,
                                             warmup_steps=5), pad_id=0)
    after = -token_logprobs(model, collate(pack(exs, 64), 0)).mean().item()
    assert len(losses) == 60 and all(map(torch.isfinite, torch.tensor(losses)))
    assert after < 0.25 * before, (before, after)
