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
from pathlib import Path

from bench.harness import parser, table, timed, write_result

KEYS = ("ratio_std", "clip_frac", "ratio_max", "ratio_min", "mismatch/kl", "router/topk_changed",
        "reward")


def run(replay: bool, args: argparse.Namespace, out_dir: Path) -> dict[str, float]:
    from r1kit.config import load_config, validate_training
    from r1kit.train import build_trainer

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
    ap = parser("r1kit bench replay", __doc__, out="runs/bench_replay.json")
    ap.add_argument("--family", default="qwen3_moe", choices=["qwen3_moe", "deepseek_v3"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=2, help="update epochs per batch (mu)")
    ap.add_argument("--minibatches", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be >= 2: with one epoch the update is on-policy")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for replay in (False, True):
            results["replay" if replay else "no_replay"], seconds = timed(
                run, replay, args, Path(tmp) / ("on" if replay else "off"))
            print(f"{'replay' if replay else 'no replay'}: {seconds:.1f} s", file=sys.stderr)
    rows = [(k, f"{results['no_replay'][k]:.6g}", f"{results['replay'][k]:.6g}") for k in KEYS]
    print(table(("metric", "no replay", "replay"), rows, widths=(22, 14, 14), sep="", rule=True))
    report = {"family": args.family, "steps": args.steps, "epochs": args.epochs,
              "minibatches": args.minibatches, "lr": args.lr, "max_tokens": args.max_tokens,
              "results": results}
    write_result(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
