"""``r1kit bench rollout``: tokens/s of the HF and vLLM engines and weight-sync time, in one run.

Both engines sample the same prompts from the same tiny policy over a grid of
(prompts x n x max_tokens); cells alternate between engines so that machine noise hits both
alike. Each cell is run once as warm-up, then timed. Weight sync is timed by pushing the live HF
policy into the vLLM engine (``update_weights``) several times. Prints a table and writes JSON.

Run: ``r1kit bench rollout [--family qwen3_moe] [--out bench_rollout.json] [--quick]``
(also ``python -m bench.rollout``).
"""

from __future__ import annotations

import itertools
import statistics
import sys

from bench.harness import interleaved, machine, parser, table, write_result

GRID = {"prompts": (4, 16), "n": (1, 8), "max_tokens": (32, 128)}
QUICK_GRID = {"prompts": (2,), "n": (2,), "max_tokens": (16,)}


def _prompts(count: int) -> list[str]:
    from r1kit.tasks import arithmetic_tasks
    from rollouts.prompts import r1_zero_prompt

    return [r1_zero_prompt(t.question) for t in arithmetic_tasks("heldout", count, seed=1)]


def _time_cell(engine, prompts: list[str], n: int, max_tokens: int) -> dict:
    from rollouts.types import Sampling

    # ignore_eos is not in the Protocol; a long max_tokens with a random-init policy rarely
    # stops early, and the figure counts the tokens actually produced.
    s = Sampling(max_tokens=max_tokens, temperature=1.0, seed=0)
    engine.generate(prompts, n, s)  # warm-up
    engine.generate(prompts, n, s)
    st = engine.last_stats
    return {"new_tokens": st.new_tokens, "seconds": round(st.seconds, 4),
            "tokens_per_s": round(st.tokens_per_s, 1),
            "peak_memory_mb": round(st.peak_memory_bytes / 2**20, 1)}


def run(family: str, grid: dict, sync_repeats: int, max_model_len: int = 512) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1kit.tiny import build_tiny
    from rollouts.hf import HFEngine
    from rollouts.vllm_engine import VLLMEngine

    path = build_tiny(family)
    tok = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    hf = HFEngine(policy, tok, batch_size=64, max_model_len=max_model_len)
    vllm = VLLMEngine(path, dtype="float32", max_model_len=max_model_len, seed=0)
    cells = []
    try:
        grid_cells = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
        rounds = [(cell, _prompts(cell["prompts"])) for cell in grid_cells]
        engines = (("hf", hf), ("vllm", vllm))
        for (cell, prompts), (name, engine) in interleaved(rounds, engines, rotate=False):
            res = _time_cell(engine, prompts, cell["n"], cell["max_tokens"])
            cells.append({"engine": name, **cell, **res})
            print(f"  {name:5s} prompts={cell['prompts']:3d} n={cell['n']:2d} "
                  f"max_tokens={cell['max_tokens']:4d}  {res['tokens_per_s']:9.1f} tok/s",
                  file=sys.stderr)
        sync = []
        for _ in range(sync_repeats):
            with torch.no_grad():
                next(policy.parameters()).add_(1e-4)  # a real change each time
            vllm.update_weights(policy)
            sync.append(vllm.last_sync_seconds)
    finally:
        vllm.close()
    n_params = sum(p.numel() for p in policy.parameters())
    return {
        "benchmark": "rollout",
        "family": family,
        "parameters": n_params,
        "machine": machine(torch=True),
        "cells": cells,
        "weight_sync_seconds": {"median": statistics.median(sync), "min": min(sync),
                                "max": max(sync), "repeats": len(sync)},
    }


def _table(result: dict) -> str:
    speed = {}  # (prompts, n, max_tokens) -> engine -> tokens/s
    for c in result["cells"]:
        speed.setdefault((c["prompts"], c["n"], c["max_tokens"]), {})[c["engine"]] = (
            c["tokens_per_s"])
    rows = [(p, n, mt, f"{e['hf']:.1f}", f"{e['vllm']:.1f}", f"{e['vllm'] / e['hf']:.2f}")
            for (p, n, mt), e in speed.items()]
    s = result["weight_sync_seconds"]
    return "\n".join([
        f"rollout benchmark: tiny {result['family']} ({result['parameters']:,} params)",
        table(("prompts", "n", "max_tok", "hf tok/s", "vllm tok/s", "vllm/hf"), rows,
              widths=(7, 3, 7, 10, 11, 8), align=">" * 6),
        (f"weight sync into vLLM: median {s['median'] * 1e3:.1f} ms "
         f"(min {s['min'] * 1e3:.1f}, max {s['max'] * 1e3:.1f}, {s['repeats']} runs)")])


def main(argv: list[str] | None = None) -> int:
    from r1kit.tiny import FAMILIES

    ap = parser("r1kit bench rollout", __doc__, out="bench_rollout.json",
                quick="one small cell (for smoke tests)")
    ap.add_argument("--family", choices=FAMILIES, default="qwen3_moe")
    ap.add_argument("--sync-repeats", type=int, default=5)
    args = ap.parse_args(argv)
    result = run(args.family, QUICK_GRID if args.quick else GRID, args.sync_repeats)
    print(_table(result))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
