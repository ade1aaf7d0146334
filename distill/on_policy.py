"""On-policy distillation: the student samples, the teacher scores every sampled token, and the
per-token advantage is the negative reverse KL (Agarwal et al. 2024, GKD, arXiv:2306.13649;
Thinking Machines, "On-Policy Distillation", 2025).

For a completion ``x`` sampled from the student ``p``, the single-sample estimate of the
reverse KL ``KL(p || q)`` to the teacher ``q`` at token ``t`` is
``log p(x_t | x_<t) - log q(x_t | x_<t)``. Its negative is a per-token reward, used directly as
the per-token advantage (no discounting, no baseline, as in the published recipe)::

    A_t = log q(x_t | x_<t) - log p_sampler(x_t | x_<t)

and trained with the GRPO trainer's policy loss: with one optimiser step per rollout the
PPO-clip ratio is 1, the per-token loss is ``-A_t * ratio_t`` and its gradient is
``-A_t * grad log p(x_t)``, the policy-gradient of the reverse KL (the score-function term; the
KL's own dependence on ``p`` through ``log p`` has zero expected gradient). ``p_sampler`` is
the log-prob the engine reported for the token (the raw distribution at temperature 1, as every
engine reports it); with the HF engine it is the trainer's own. Where this departs from GKD:
GKD also mixes in teacher-generated or fixed data and supports other divergences; here the
data is purely on-policy and the divergence is the reverse KL, as in the Thinking Machines
recipe.

The teacher's log-probs come from ``grpo.update.batch_logprobs``, the trainer's own chunked path
(no ``[B, T, V]`` logits), on the trainer's device. Both models must map every token the
student can emit to the same id: ``check_vocabularies`` says so in one line before any model is
loaded. A served teacher (vLLM prompt log-probs) is not built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from grpo.batch import TrainBatch
from grpo.logprobs import completion_topk
from grpo.update import autocast_to, batch_logprobs, micro_batches


class VocabularyMismatch(ValueError):
    """Student and teacher tokenise differently; on-policy distillation cannot compare them."""


def reverse_kl_advantages(teacher_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> Tensor:
    """Per-token advantage ``teacher_logp - sampler_logp`` on real tokens, 0 on padding.
    All (N, C).

    >>> reverse_kl_advantages(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-0.5, 0.0]]),
    ...                       torch.tensor([[1.0, 0.0]])).tolist()
    [[-0.5, 0.0]]
    """
    diff = teacher_logp - sampler_logp
    return torch.where(mask > 0, diff, torch.zeros_like(diff))


def check_vocabularies(student_tok: Any, teacher_tok: Any, student_vocab: int,
                       teacher_vocab: int) -> None:
    """Every token the student can emit (ids below ``student_vocab``, the size of its LM head)
    has the same id in the teacher's vocabulary, and the teacher's LM head covers them; raises
    ``VocabularyMismatch`` naming the first difference."""
    hint = "; use distill.method=sft, which works across tokenizers"
    if teacher_vocab < student_vocab:
        raise VocabularyMismatch(f"the student can emit {student_vocab} token ids but the "
                                 f"teacher's LM head has only {teacher_vocab}{hint}")
    theirs = teacher_tok.get_vocab()
    for token, i in sorted(student_tok.get_vocab().items(), key=lambda kv: kv[1]):
        if i < student_vocab and theirs.get(token) != i:
            where = "is missing" if token not in theirs else f"is id {theirs[token]}"
            raise VocabularyMismatch(f"token {token!r} is id {i} in the student's vocabulary "
                                     f"but {where} in the teacher's{hint}")


class Teacher:
    """A frozen teacher model that turns a student ``TrainBatch`` into its training signal; the
    trainer calls ``prepare`` from its own ``prepare`` when its parts hold a teacher.

    ``loss="reverse_kl"``: per-token advantages, the sampled reverse KL (module docstring).
    ``loss="forward_kl"``: the teacher's ``top_k`` most likely tokens and their log-probs at
    every sampled position go into the batch (``teacher_ids``, ``teacher_logp``) and the update
    adds the forward KL over those k tokens plus one bucket for the rest of the vocabulary
    (``grpo.losses.topk_forward_kl``: 0 at a perfect copy for any k, the full forward KL at
    k = V, a lower bound on it below); advantages are 0."""

    LOSSES = ("reverse_kl", "forward_kl")

    def __init__(self, model: nn.Module, compute_dtype: str | None = None,
                 loss: str = "reverse_kl", top_k: int = 64, student_vocab: int | None = None,
                 reward_weight: float = 0.0):
        if loss not in self.LOSSES:
            raise ValueError(f"distill.loss must be one of {self.LOSSES}, got {loss!r}")
        if top_k < 1:
            raise ValueError(f"distill.top_k must be >= 1, got {top_k}")
        self.model = model.eval().requires_grad_(False)
        self.compute_dtype = compute_dtype
        # Only ids the student can emit are candidates for the top-k (a larger teacher
        # vocabulary's extra ids are never picked; their mass falls in the rest bucket).
        vocab = model.get_output_embeddings().weight.shape[0]
        self.vocab = min(vocab, student_vocab or vocab)
        self.loss, self.top_k = loss, min(top_k, self.vocab)  # k = V: the full forward KL
        self.reward_weight = reward_weight

    @staticmethod
    def load(path: str, device: torch.device, dtype: str = "float32",
             compute_dtype: str | None = None, loss: str = "reverse_kl",
             top_k: int = 64, student_vocab: int | None = None,
             reward_weight: float = 0.0) -> Teacher:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        return Teacher(model.to(device), compute_dtype, loss, top_k, student_vocab,
                       reward_weight)

    def prepare(self, batch: TrainBatch, budget: int, pad_id: int, chunk: int,
                device: Any, share: bool = False) -> None:
        """Fill ``batch``'s advantages (and, for ``forward_kl``, the teacher's top-k) and the
        statistics to log: the mean sampled reverse KL per token, and the tokens the teacher's
        forward passes took in (prompt and completion of every row). ``batch.advantages`` holds
        the reward-based (N,) ones on entry; ``reward_weight`` x them is added to every token."""
        outcome = batch.advantages.reshape(-1, 1) * self.reward_weight  # (N, 1)
        if self.loss == "reverse_kl":
            teacher_logp = batch_logprobs(self.model, batch, budget, pad_id, chunk, device,
                                          compute_dtype=self.compute_dtype,
                                          share=share)  # (N, C)
            batch.advantages = reverse_kl_advantages(teacher_logp, batch.sampler_logp,
                                                     batch.token_mask)
            stats = {}
        else:
            teacher_logp, stats = self._topk(batch, budget, pad_id, chunk, device, share)
            batch.advantages = torch.zeros_like(batch.sampler_logp)
        if self.reward_weight:
            batch.advantages = batch.advantages + outcome * batch.token_mask  # (N, C)
        tokens = float(batch.token_mask.sum())
        forward = sum(len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids))
        batch.stats = {"distill/reverse_kl": float(((batch.sampler_logp - teacher_logp)
                                                    * batch.token_mask).sum()) / max(tokens, 1.0),
                       "distill/teacher_logp": float((teacher_logp * batch.token_mask).sum())
                       / max(tokens, 1.0),
                       "distill/teacher_tokens": float(forward), **stats}

    @torch.no_grad()
    def _topk(self, batch: TrainBatch, budget: int, pad_id: int, chunk: int,
              device: Any, share: bool = False) -> tuple[Tensor, dict[str, float]]:
        """Fills ``batch.teacher_ids`` / ``teacher_logp`` (N, C, K); returns the teacher's
        log-probs of the sampled tokens (N, C) and the share of its probability in the top-k."""
        n, c = batch.sampler_logp.shape
        k = self.top_k
        ids = torch.zeros(n, c, k, dtype=torch.long)
        logp = torch.zeros(n, c, k)  # padding stays 0 (finite; masked out of the loss)
        sampled = torch.zeros(n, c)
        for mb in micro_batches(batch, list(range(n)), budget, pad_id, device):
            with autocast_to(mb.input_ids.device, self.compute_dtype):
                ids_mb, logp_mb, sampled_mb = completion_topk(
                    self.model, mb.input_ids, mb.attention_mask, mb.prompt_lens,
                    mb.completion_lens, k, chunk_tokens=chunk, vocab_limit=self.vocab,
                    share_prompts=share)
            w = ids_mb.shape[1]
            ids[mb.rows, :w] = ids_mb.cpu()
            logp[mb.rows, :w] = logp_mb.cpu()
            sampled[mb.rows, :w] = sampled_mb.cpu()
        batch.teacher_ids, batch.teacher_logp = ids, logp
        m = batch.token_mask
        mass = (logp.exp().sum(-1) * m).sum() / max(float(m.sum()), 1.0)
        return sampled, {"distill/teacher_topk_mass": float(mass)}
