"""One GRPO update of the tiny MoE on a fixed batch, on however many ranks launched it.

Run by ``tests/test_parallel.py``: ``python tests/parallel_worker.py MODEL OUT STRATEGY
[full|lora]`` for one process, ``torchrun --nproc_per_node 2 tests/parallel_worker.py ...`` for
two (gloo on CPU).
Rank 0 writes the reduced gradients, the weights after the optimiser step and the update's
statistics to OUT (a ``torch.save`` file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# float64 weights: the one-process and two-process sums then differ by rounding near 1e-16,
# so a 1e-6 tolerance can only be met by the same update (float32 rounding of a 1e-9 gradient,
# amplified by AdamW's g / (|g| + eps) on its first step, reaches about 1e-6 by itself).
DTYPE = torch.float64


def fixed_batch(vocab: int, rows: int = 12, seed: int = 0):
    """Ragged prompts and completions, per-sequence advantages and sampler log-probs, seeded."""
    from grpo.batch import TrainBatch, pad_rows

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (int(torch.randint(3, 9, (1,), generator=g)),),
                             generator=g).tolist() for _ in range(rows)]
    comps = [torch.randint(3, vocab, (int(torch.randint(2, 14, (1,), generator=g)),),
                           generator=g).tolist() for _ in range(rows)]
    width = max(len(c) for c in comps)
    ones = pad_rows([[1.0] * len(c) for c in comps], width)
    sampler = pad_rows([(-torch.rand(len(c), generator=g) * 3).tolist() for c in comps], width)
    return TrainBatch(prompt_ids=prompts, completion_ids=comps, sampler_logp=sampler,
                      mask=ones.clone(), token_mask=ones, advantages=torch.randn(rows, generator=g),
                      rewards=torch.zeros(rows), truncated=torch.zeros(rows, dtype=torch.bool),
                      routed=[None] * rows)


def main(model_path: str, out: str, strategy: str, lora: str = "full") -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.parallel import Parallel
    from grpo.trainer import GRPOTrainer, Parts, ProblemStream
    from grpo.update import Objective
    from r1kit.config import load_config
    from r1kit.train import make_optimizer, recorder_factory

    par = Parallel.from_environment(strategy)
    torch.manual_seed(0)
    cfg = load_config(None, ["train.token_budget=48", "train.minibatches=1",
                                     "train.max_grad_norm=0", "train.lr=1e-3",
                                     "algo.policy_loss=ppo_clip", "algo.mismatch=token_truncate"])
    policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPE,
                                                  experts_implementation="eager")
    tok = AutoTokenizer.from_pretrained(model_path)
    if lora == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(1)  # LoRA's B starts at 0: perturb it so A gets a gradient too
        policy = get_peft_model(policy, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                   target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for n, p in policy.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
    par.wrap(policy)
    opt, sched = make_optimizer(cfg, policy)  # after wrapping: FSDP2 swaps in sharded params
    parts = Parts(cfg=cfg, policy=policy, tokenizer=tok, engine=None, scorer=None,
                  optimizer=opt, scheduler=sched, data=ProblemStream([object()], 0),
                  prompt_fn=str, objective=Objective.from_config(cfg.algo, cfg.train, 16,
                                                                 "token_truncate"),
                  recorder_fn=recorder_factory(policy, False), parallel=par)
    trainer = GRPOTrainer(parts)
    batch = fixed_batch(policy.config.vocab_size)
    batch.old_logp = batch.sampler_logp + 0.05  # a mismatch weight that is not all ones
    stats = trainer.update(batch)

    def full(t):
        return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2: every rank gathers

    grads = {n: full(p.grad).detach().clone() for n, p in policy.named_parameters()
             if p.grad is not None}
    weights = {n: full(p).detach().clone() for n, p in policy.named_parameters()}
    if par.is_main:
        torch.save({"grads": grads, "weights": weights, "stats": stats, "world": par.world}, out)
    if par.active:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
