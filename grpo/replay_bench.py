"""``r1kit bench replay``: what routing replay (R3) does to an off-policy MoE update.

Two GRPO runs of the tiny Qwen3-MoE (or DeepSeek-V3), identical but for ``algo.routing_replay``,
with ``train.epochs`` >= 2 and several minibatches, so most optimiser steps see samples whose
routing the previous steps have already moved. The HF engine records the sampler's routing in
both runs; the run without replay uses it only to count how many tokens' top-k expert sets
changed by the last epoch (``router/topk_changed``). Reported per run, averaged over steps:
the importance-ratio spread (``ratio_std``: RMS of ratio - 1 over loss tokens), the clip fraction,
the extreme ratios, the sampler/trainer mismatch KL, and the reward.

Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from r1kit.benchio import write_result

KEYS = ("ratio_std", "clip_frac", "ratio_max", "ratio_min", "mismatch/kl", "router/topk_changed",
        "reward")


def run(replay: bool, args: argparse.Namespace, out_dir: Path) -> dict[str, float]:
    from grpo.setup import build_trainer
    from r1kit.config import load_config, validate_training

    cfg = load_config(None, [
        f"model.path=tiny:{args.family}", "rollout.engine=hf", "rollout.n=8",
        f"rollout.max_tokens={args.max_tokens}", "data.num_prompts=64",
        "reward.funcs=[rewards.toy:digit_share]", "reward.weights=[1.0]", "reward.workers=1",
        "algo.mask_truncated=false", f"algo.routing_replay={str(replay).lower()}",
        f"train.epochs={args.epochs}", f"train.minibatches={args.minibatches}",
        f"train.lr={args.lr}", "train.prompts_per_step=4", f"train.steps={args.steps}",
        "train.save_every=0", "train.tensorboard=false", "train.sample_every=0",
        f"log.out_dir={out_dir}"])
    validate_training(cfg)
    trainer = build_trainer(cfg, show_progress=False)
    trainer.p.engine.record_routing = True  # both runs record; only one replays
    rows = []
    try:
        while trainer.step < cfg.train.steps:
            rows.append(trainer.run_step())
    finally:
        trainer.p.close()
    return {k: sum(r.get(k, float("nan")) for r in rows) / len(rows) for k in KEYS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="r1kit bench replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="qwen3_moe", choices=["qwen3_moe", "deepseek_v3"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=2, help="update epochs per batch (mu)")
    ap.add_argument("--minibatches", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", default="runs/bench_replay.json")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be >= 2: with one epoch the update is on-policy")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for replay in (False, True):
            t0 = time.perf_counter()
            results["replay" if replay else "no_replay"] = run(
                replay, args, Path(tmp) / ("on" if replay else "off"))
            print(f"{'replay' if replay else 'no replay'}: {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
    header = f"{'metric':<22}{'no replay':>14}{'replay':>14}"
    lines = [header, "-" * len(header)]
    for k in KEYS:
        lines.append(f"{k:<22}{results['no_replay'][k]:>14.6g}{results['replay'][k]:>14.6g}")
    print("\n".join(lines))
    report = {"family": args.family, "steps": args.steps, "epochs": args.epochs,
              "minibatches": args.minibatches, "lr": args.lr, "max_tokens": args.max_tokens,
              "results": results}
    write_result(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
