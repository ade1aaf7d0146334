"""``r1kit bench ranks``: a training rollout's wall time on 2 ranks, every rank sampling vs rank 0.

The rollout of ``r1kit train`` (``GRPOTrainer.rollout``: sample with the HF engine, score) of
``recipes/tiny_grpo_hf.yaml`` on ``bench.shard``'s 27M-parameter Qwen3-MoE (random init, the
embedded tokenizer; ``--model tiny`` keeps the recipe's 1M-parameter one, whose decode steps
cost mostly per-call overhead, which two ranks do not split), ``--prompts`` prompts x ``--n``
completions of exactly ``--tokens`` tokens
(``rollout.min_tokens`` = ``max_tokens``: both modes do the same work), the ``digit_share`` toy
reward, one thread per rank. Two contenders, each one ``torchrun --nproc_per_node 2`` launch,
taking turns for ``--rounds`` rounds (``bench.harness.interleaved``):

- ``every_rank`` (``rollout.sample_on``'s default): each rank samples and scores its contiguous
  share of the prompts on its own engine; the pieces are gathered (``grpo.parallel.gather``).
- ``rank0``: rank 0 samples and scores everything and broadcasts the rollout (what ``r1kit
  train`` did before every rank sampled).

Each launch builds the trainer as ``r1kit train`` does, runs one untimed rollout (the first pays
one-off costs: the reward workers' start, first-touch allocations), then times ``--steps``
rollouts on rank 0 from a barrier until every rank holds the rollout. Reported: the median of
those per launch, then the median over rounds, and ``every_rank / rank0`` (target < 0.65).
Both ranks hold the rollout at the end either way, so the comparison includes the gather or
broadcast. ``tests/test_parallel.py`` runs the worker (``--worker``) to check that the two ranks'
rollout equals the one-process rollout token for token.

Run: ``r1kit bench ranks [--rounds 3] [--prompts 16] [--n 4] [--tokens 48] [--model 27m]
[--out runs/bench_ranks.json]`` (also ``python -m bench.ranks``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import interleaved, machine, parser, table, write_result

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny_grpo_hf.yaml"
TARGET = 0.65  # every_rank / rank0 wall time of a rollout


def worker(out: str, steps: int, recipe: str, *overrides: str) -> None:
    """Under torchrun (or alone): build the trainer, save step 0's rollout as this rank holds
    it (``OUT/rank{r}.pt``), then time ``steps`` more rollouts (rank 0 writes ``times``)."""
    import torch

    from r1kit.config import load_config, validate_training
    from r1kit.train import build_trainer

    cfg = load_config(recipe, list(overrides))
    validate_training(cfg)
    trainer = build_trainer(cfg, show_progress=False)
    par = trainer.p.parallel
    every = cfg.rollout.every_rank_samples(par.world)

    def rollout(step: int):
        if every or not par.active:
            return trainer.rollout(step)
        return par.share(trainer.rollout(step) if par.is_main else None)

    try:
        ro = rollout(0)
        torch.save({"tokens": [[c.token_ids for c in g.completions] for g in ro.groups],
                    "logprobs": [[c.logprobs for c in g.completions] for g in ro.groups],
                    "questions": [p.question for p in ro.problems],
                    "rewards": ro.rewards, "stats": ro.stats}, Path(out) / f"rank{par.rank}.pt")
        times = []
        for step in range(1, steps + 1):
            par.barrier()
            t0 = time.perf_counter()
            rollout(step)
            times.append(time.perf_counter() - t0)
        if par.is_main:
            torch.save({"times": times}, Path(out) / "times.pt")
    finally:
        trainer.close()
        trainer.p.close()
        par.close()


def build_model(out: Path) -> Path:
    """``bench.shard``'s 27M Qwen3-MoE with the embedded tokenizer, saved into ``out``."""
    from bench.shard import build_model as build_moe
    from r1kit.tiny import build_tokenizer

    build_moe(out)
    build_tokenizer(0).save_pretrained(out)
    return out


def launch(out: Path, mode: str, steps: int, prompts: int, n: int, tokens: int,
           cache: str | None, model: Path | None) -> list[float]:
    """One 2-rank launch of ``worker`` with ``rollout.sample_on=mode``: rank 0's timings."""
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if cache:
        env["R1KIT_CACHE"] = cache
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "bench.ranks", "--worker", str(out), str(steps), str(RECIPE),
           "reward.funcs=[rewards.toy:digit_share]", "reward.weights=[1.0]",
           f"train.prompts_per_step={prompts}", f"rollout.n={n}", f"rollout.max_tokens={tokens}",
           f"rollout.min_tokens={tokens}", "rollout.max_model_len=256", "reward.workers=1",
           f"rollout.batch_size={prompts * n}", "train.tensorboard=false",
           f"rollout.sample_on={mode}", f"log.out_dir={out}"]
    if model is not None:
        cmd.append(f"model.path={model}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                          timeout=900)
    if proc.returncode:
        raise RuntimeError(f"{mode} launch failed:\n{proc.stderr[-3000:]}")
    return torch.load(out / "times.pt")["times"]


def run(rounds: int, steps: int, prompts: int, n: int, tokens: int,
        model: str) -> dict[str, Any]:
    modes = ("every_rank", "rank0")
    per: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp) / "moe27m") if model == "27m" else None
        for i, mode in interleaved(range(rounds), modes):
            times = launch(Path(tmp) / f"{mode}{i}", mode, steps, prompts, n, tokens,
                           os.environ.get("R1KIT_CACHE"), path)
            per[mode].append(statistics.median(times))
            print(f"round {i + 1}/{rounds} {mode}: {per[mode][-1]:.3f} s per rollout",
                  file=sys.stderr)
    med = {m: statistics.median(v) for m, v in per.items()}
    return {"settings": {"rounds": rounds, "steps": steps, "prompts": prompts, "n": n,
                         "tokens": tokens, "ranks": 2, "threads_per_rank": 1,
                         "model": model},
            "machine": machine(torch=True), "seconds": per, "median": med,
            "ratio": med["every_rank"] / med["rank0"], "target": TARGET}


def _table(res: dict[str, Any]) -> str:
    rows = [(m, f"{res['median'][m]:.3f}", " ".join(f"{x:.3f}" for x in res["seconds"][m]))
            for m in ("every_rank", "rank0")]
    ok = "meets" if res["ratio"] < TARGET else "misses"
    return (table(("rollout on 2 ranks", "median s", "per round"), rows)
            + f"\nevery_rank / rank0 = {res['ratio']:.2f} ({ok} the target < {TARGET})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        out, steps, recipe, *overrides = argv[1:]
        worker(out, int(steps), recipe, *overrides)
        return 0
    ap = parser("r1kit bench ranks", __doc__, out="runs/bench_ranks.json")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="timed rollouts per launch")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--model", choices=("27m", "tiny"), default="27m")
    args = ap.parse_args(argv)
    res = run(args.rounds, args.steps, args.prompts, args.n, args.tokens, args.model)
    print(_table(res))
    write_result(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
