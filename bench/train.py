"""``r1kit bench train``: seconds per GRPO step and peak memory, r1kit against TRL, in one run.

Step time. Three contenders train the same tiny Qwen3-MoE (float32, the same number of OpenMP
threads: ``--threads``, 1 by default, see below) on the same synthetic arithmetic prompts: 4
prompts x a group of 8 = 32 completions of exactly 64 tokens per step, loss DAPO (token mean,
PPO-clip 0.2 / 0.28), beta 0, lr 1e-6, one optimiser step per generation batch, the same trivial
reward (``digit_reward``):

- ``trl_hf``: TRL's ``GRPOTrainer`` with transformers generation (``use_vllm=False``,
  generation_batch_size 32, ``router_aux_loss_coef=0`` so that it optimises what r1kit does:
  TRL's MoE default adds the router load-balancing loss, r1kit's ``algo.aux_loss_coef`` is 0).
- ``r1kit_hf``: ``r1kit.train.build_trainer`` + ``run_step`` with ``rollout.engine=hf``
  (``rollout.batch_size=32``: one generate call, as TRL; dynamic sampling and truncation masking
  off, as TRL's defaults).
- ``r1kit_vllm``: the same with the colocated vLLM engine (``VLLM_CPU_KVCACHE_SPACE=1``).
- ``r1kit_hf_v4``: ``r1kit_hf``'s run on the tiny DeepSeek-V4 (``tiny:deepseek_v4``: mHC, hash
  and top-k MoE, compressed attention) beside the tiny Qwen3-MoE, with ``rollout.batch_size=8``
  (one prompt's group per generate call: V4 must not be left-padded, docs/TRAINING.md). No TRL
  counterpart; the table gives its seconds per step and completion tokens per second next to
  ``r1kit_hf``'s.

Completions are forced to the full 64 tokens on every engine: ``min_new_tokens=64`` in TRL's
``generation_kwargs``, ``rollout.min_tokens=64`` for r1kit (``Sampling.min_tokens``, which the HF
engine's decode loop and vLLM's ``min_tokens`` honour). Each contender runs 1 warm-up step, then
K timed steps; a step is everything between two steps (generation, reward, advantages, loss,
backward, optimiser, weight sync, logging); the figure is the median. Peak RSS is the worker's
``ru_maxrss`` (reward worker processes not included).

Memory. A Qwen3-MoE as small as the tiny one but with Qwen's 151,936-token vocabulary (random
init, no tokenizer), 8 sequences x (512 prompt + 512 completion) tokens: one on-policy log-prob +
GRPO loss + backward through r1kit's ``grpo.update.microbatch_loss`` (chunked LM head,
the default ``train.logprob_chunk``) against TRL's ``compute_loss`` on a constructed trainer (its
``_get_per_token_logps_and_entropies``: the fused, tiled LM head TRL patches in; on CPU it scores
every position). The figure is the peak RSS increase over the RSS just before the call:
``ru_maxrss`` after the call minus the RSS before it (exact, as long as the call's peak is the
process's highest, which the worker checks), with a 1 ms psutil sampler as a cross-check.

``--async`` runs two other contenders instead: ``r1kit_server_sync`` and ``r1kit_server_async``,
``r1kit_hf``'s step with the ``vllm_server`` engine and ``train.async_steps`` 0 and 1, the
sampler's processes pinned to the last core and the trainer to the others (what each would have
with hardware of its own; vLLM's default binds its threads to every core). The table gives
seconds per step, the median generate, update and sync-plus-wait times that explain them, the
staleness, and the speedup of one-step-off over synchronous (target 1.3x).

``--grid`` runs ``r1kit_hf`` against ``trl_hf`` on rows of settings (a ``Row`` each): the tiny
Qwen3-MoE and the tiny DeepSeek-V3 (MLA, sigmoid routing with a shared expert) x beta 0 and 0.04
(KL to the reference, k3, in the loss) x router aux loss 0 and 0.001, both trainers given the same
prompt token ids (R1-Zero text). Per row, ``--pairs`` (3) interleaved pairs of fresh runs of
1 + ``--steps`` steps; per run the mean of all steps (the first included: what a short job pays)
and of steps 2-N; per row the median over pairs of each, and r1kit's ratio to TRL as the median of
the pairs' ratios (target <= 0.6 on both). The table lists the settings in which the two runs of a
row differ (``Row.differences``), and r1kit's scoring seconds in step 1 against later steps.

Every contender runs in a fresh subprocess (``python -m bench.train --worker NAME``), so one's
memory and threads never touch another's. What runs there (the contenders, the settings they
share, ``Row``, ``digit_reward``) is in ``bench.train_workers``; this module starts the workers
and tabulates their results. ``OMP_NUM_THREADS`` is set for each (default 1): on a small shared
machine, two spinning OpenMP threads per process made the same step 8x slower and swing from run
to run when other jobs were busy; one thread gives stable figures (the JSON records the 1-minute
load average around each contender). Prints a table and writes JSON.

Run: ``r1kit bench train [--steps 5] [--out runs/bench_train.json] [--no-vocab-bench] [--quick]``,
``r1kit bench train --grid [FAMILY,BETA,AUX ...] [--pairs 3]`` (also ``python -m bench.train``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.harness import interleaved, machine, parser, table, timed, write_result
from bench.train_workers import (  # also read from here: bench.train.Row, STEP_CONTENDERS, ...
    ASYNC_CONTENDERS,
    ASYNC_TARGET,
    COMMON_DIFFERENCES,
    DEFAULT_ROW,
    GRID,
    GRID_TARGET,
    GROUP,
    MAX_TOKENS,
    MEMORY_CONTENDERS,
    MEMORY_SHAPE,
    PROMPTS,
    STEP_CONTENDERS,
    TARGETS,
    VOCAB,
    WORKERS,
    Row,
)

# ---------------------------------------------------------------------------------------------
# The driver


def run_worker(name: str, steps: int, quick: bool, threads: int, timeout_s: float = 1800,
               row: Row | None = None) -> dict[str, Any]:
    """Run one contender in a fresh ``python -m bench.train --worker`` process (on ``row``'s
    configuration where the contender takes one, ``DEFAULT_ROW`` if None)."""
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.train", "--worker", name, "--steps", str(steps),
               "--result", str(result)] + (["--quick"] if quick else []) + (
               ["--row", row.arg] if row else [])
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get(
            "VLLM_CPU_KVCACHE_SPACE", "1"), "TOKENIZERS_PARALLELISM": "false"}
        env["TMPDIR"] = tmp  # run folders the worker makes are removed with this one
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        try:
            proc, wall = timed(subprocess.run, cmd, env=env, capture_output=True, text=True,
                               timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s"}
        if proc.returncode != 0 or not result.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
        return {**json.loads(result.read_text()), "worker_wall_s": wall}


def run(steps: int, vocab_bench: bool, quick: bool, threads: int = 1,
        async_mode: bool = False) -> dict[str, Any]:
    import torch

    names = list(STEP_CONTENDERS) + (list(MEMORY_CONTENDERS) if vocab_bench else [])
    if async_mode:
        names = list(ASYNC_CONTENDERS)
    results = {}
    load = [os.getloadavg()[0]]
    for name in names:
        print(f"  running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_worker(name, steps, quick, threads)
        load.append(os.getloadavg()[0])
        print(f"  {name}: {_brief(results[name])}", file=sys.stderr, flush=True)
    return {
        "benchmark": "train_async" if async_mode else "train",
        "settings": {"prompts": PROMPTS, "group": GROUP, "max_tokens": MAX_TOKENS,
                     "timed_steps": steps, "warmup_steps": 1, "quick": quick,
                     "memory_shape": MEMORY_SHAPE["quick" if quick else "full"],
                     "vocab": VOCAB, "dtype": "float32"},
        "machine": {**machine(torch=True), "threads": threads or torch.get_num_threads(),
                    "load_average_1min": load},
        "contenders": results,
        "ratios": _ratios(results),
        "targets": TARGETS,
    }


def _brief(r: dict[str, Any]) -> str:
    if "error" in r:
        return "ERROR " + r["error"]
    if "s_per_step" in r:
        return f"{r['s_per_step']:.2f} s/step, peak RSS {r['peak_rss_mb']:.0f} MB"
    return f"peak increase {r['peak_increase_mb']:.0f} MB"


def _ratios(results: dict[str, Any]) -> dict[str, float | None]:
    def ratio(name: str, base: str, key: str) -> float | None:
        a, b = results.get(name, {}), results.get(base, {})
        if key in a and key in b and b[key] > 0:
            return a[key] / b[key]
        return None

    out = {}
    for name in ("r1kit_hf", "r1kit_vllm"):
        out[f"{name}/time"] = ratio(name, "trl_hf", "s_per_step")
        out[f"{name}/rss"] = ratio(name, "trl_hf", "peak_rss_mb")
    out["r1kit_memory/memory"] = ratio("r1kit_memory", "trl_memory", "peak_increase_mb")
    if any(name in results for name in ASYNC_CONTENDERS):  # --async runs only these
        return {"async_speedup": ratio("r1kit_server_sync", "r1kit_server_async", "s_per_step")}
    return out


def _fmt(x: float | None, spec: str) -> str:
    """``x`` as ``spec`` formats it, or ``-`` where there is no finite number."""
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def _contender_rows(names: tuple[str, ...], res: dict[str, Any],
                    cells: Callable[[str, dict[str, Any]], list[str]]) -> list[list[str]]:
    """A table row per contender: its name, then ``cells(name, result)``, or its error (one
    cell over the columns left)."""
    return [[name, f"ERROR {res[name]['error'][:100]}"] if "error" in res.get(name, {})
            else [name, *cells(name, res.get(name, {}))] for name in names]


def _async_table(result: dict[str, Any]) -> str:
    """``--async``: synchronous against one-step-off training, with the parts of a step."""
    res, s = result["contenders"], result["settings"]
    rows = _contender_rows(ASYNC_CONTENDERS, res, lambda name, r: [
        _fmt(r.get(key), spec) for key, spec in (
            ("s_per_step", ".2f"), ("median_time_generate", ".2f"), ("median_time_update", ".2f"),
            ("median_time_sync", ".2f"), ("median_time_wait_rollout", ".2f"),
            ("median_staleness", ".0f"))])
    x = result["ratios"].get("async_speedup")
    return "\n".join([
        (f"async benchmark: vllm_server engine, tiny Qwen3-MoE, {s['prompts']} prompts x "
         f"{s['group']} of {s['max_tokens']} tokens, median of {s['timed_steps']} steps "
         f"after {s['warmup_steps']} warm-up; the parts are medians too"),
        table(("contender", "s/step", "generate", "update", "sync+wait", "wait ro", "staleness"),
              rows, widths=(19, 7, 9, 7, 10, 8, 9)),
        (f"speedup of one-step-off over synchronous: {_fmt(x, '.2f')}x "
         f"(target >= {ASYNC_TARGET}). generate: the engine's sampling of a rollout (in "
         "the background when async); sync+wait: waiting for it, then the weight sync; "
         "wait ro: a step's wait for its rollout")])


def _table(result: dict[str, Any]) -> str:
    res, rat, s = result["contenders"], result["ratios"], result["settings"]

    def target(name: str) -> str:
        return f"<= {TARGETS[name]}" if name in TARGETS else ""

    steps = _contender_rows(STEP_CONTENDERS, res, lambda name, r: [
        _fmt(r.get("s_per_step"), ".2f"),
        _fmt(rat.get(f"{name}/time", 1.0 if name == "trl_hf" else None), ".2f"),
        _fmt(r.get("peak_rss_mb"), ".0f"),
        _fmt(rat.get(f"{name}/rss", 1.0 if name == "trl_hf" else None), ".2f"), target(name)])
    lines = [(f"train benchmark: {s['prompts']} prompts x {s['group']} = "
              f"{s['prompts'] * s['group']} completions of {s['max_tokens']} tokens, median of "
              f"{s['timed_steps']} steps after {s['warmup_steps']} warm-up; "
              f"{result['machine']['threads']} thread(s) per contender, float32"),
             table(("contender", "s/step", "x TRL", "peak RSS MB", "x TRL", "target"), steps,
                   widths=(14, 8, 6, 12, 6, 7))]
    moe = [(n, res[n]) for n in ("r1kit_hf", "r1kit_hf_v4") if "s_per_step" in res.get(n, {})]
    if moe:
        lines.append("tiny MoE families, HF engine: " + "; ".join(
            f"{n} {r['s_per_step']:.2f} s/step, {r['tokens_per_s']:.0f} completion tokens/s"
            for n, r in moe))
    if "r1kit_memory" in res or "trl_memory" in res:
        b, p, c = s["memory_shape"]
        memory = _contender_rows(MEMORY_CONTENDERS, res, lambda name, r: [
            _fmt(r.get("peak_increase_mb"), ".0f"),
            _fmt(1.0 if name == "trl_memory" else rat.get("r1kit_memory/memory"), ".2f"),
            _fmt(r.get("peak_increase_mb_sampled"), ".0f"), _fmt(r.get("seconds"), ".2f"),
            target(name)])
        lines += [(f"memory: log-prob + loss + backward, vocab {s['vocab']:,}, {b} x "
                   f"({p} prompt + {c} completion) tokens; peak RSS increase over the "
                   "RSS before the call"),
                  table(("contender", "peak +MB", "x TRL", "sampled", "seconds", "target"),
                        memory, widths=(14, 9, 6, 8, 8, 7))]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# --grid: rows of settings, r1kit against TRL in interleaved pairs

GRID_CONTENDERS = ("r1kit_hf", "trl_hf")


def run_grid(rows: Sequence[Row], steps: int, pairs: int, threads: int = 1,
             save: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """Each row's contenders in ``pairs`` interleaved rounds (the harness's ``interleaved``:
    r1kit, TRL, then TRL, r1kit, ...), each run a fresh worker of 1 + ``steps`` steps;
    ``save`` gets the result so far after every row (a long run keeps its finished rows)."""
    import torch

    load = [os.getloadavg()[0]]
    result = {
        "benchmark": "train_grid",
        "settings": {"prompts": PROMPTS, "group": GROUP, "max_tokens": MAX_TOKENS,
                     "steps": 1 + steps, "pairs": pairs, "dtype": "float32",
                     "order": "per row, pairs interleaved r1kit/TRL, alternating who goes first"},
        "machine": {**machine(torch=True), "threads": threads or torch.get_num_threads(),
                    "load_average_1min": load},
        "rows": {},
        "target": GRID_TARGET,
    }
    for row in rows:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in GRID_CONTENDERS}
        for pair, name in interleaved(range(pairs), GRID_CONTENDERS):
            print(f"  {row.name}, pair {pair + 1}/{pairs}: {name} ...", file=sys.stderr,
                  flush=True)
            runs[name].append(run_worker(name, steps, False, threads, row=row))
            load.append(os.getloadavg()[0])
            print(f"    {_brief(runs[name][-1])}", file=sys.stderr, flush=True)
        result["rows"][row.name] = {"row": asdict(row), "differences": row.differences(),
                                    "runs": runs, **_pair_summary(runs)}
        if save:
            save(result)
    return result


def _pair_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per span (``all`` steps, the first included; ``after_first``: steps 2-N) each contender's
    median over pairs of its mean step, and r1kit's ratio to TRL: the median of the pairs'
    ratios (a pair shares the machine's load). With r1kit's scoring seconds of step 1 and the
    median of the later steps'."""
    errors = [r["error"] for rs in runs.values() for r in rs if "error" in r]
    if errors:
        return {"error": errors[0]}
    out: dict[str, Any] = {}
    for span, first in (("all", 0), ("after_first", 1)):
        means = {name: [statistics.mean(r["step_seconds"][first:]) for r in rs]
                 for name, rs in runs.items()}
        ratios = [a / b for a, b in zip(means["r1kit_hf"], means["trl_hf"])]
        out[span] = {**{name: statistics.median(m) for name, m in means.items()},
                     "ratio": statistics.median(ratios), "pair_ratios": ratios}
    out["met"] = all(out[span]["ratio"] <= GRID_TARGET for span in ("all", "after_first"))
    score = [[p.get("time/score", math.nan) for p in r["step_parts"]] for r in runs["r1kit_hf"]]
    out["r1kit_score_first_s"] = statistics.median(s[0] for s in score)
    out["r1kit_score_later_s"] = statistics.median(statistics.median(s[1:] or s) for s in score)
    return out


def _grid_table(result: dict[str, Any]) -> str:
    s, rows = result["settings"], result["rows"]
    cells = []
    for name, r in rows.items():
        if "error" in r:
            cells.append([name, f"ERROR {r['error'][:100]}"])
            continue
        a, b = r["all"], r["after_first"]
        cells.append([name, *(_fmt(x, ".2f") for x in (
            a["r1kit_hf"], a["trl_hf"], a["ratio"], b["r1kit_hf"], b["trl_hf"], b["ratio"])),
            "yes" if r["met"] else "no",
            _fmt(1000 * r["r1kit_score_first_s"], ".1f"),
            _fmt(1000 * r["r1kit_score_later_s"], ".1f")])
    n = s["steps"]
    extra = {d: [name for name, r in rows.items() if d in r["differences"]]
             for r in rows.values() for d in r["differences"] if d not in COMMON_DIFFERENCES}
    return "\n".join([
        (f"train grid: {s['prompts']} prompts x {s['group']} completions of {s['max_tokens']} "
         f"tokens, {n} steps per run, r1kit (HF engine) and TRL in {s['pairs']} interleaved "
         f"pair(s) per row, median over pairs; {result['machine']['threads']} thread(s), "
         f"float32; x TRL: median of the pairs' ratios, target <= {result['target']} on both"),
        table(("row", "r1kit all", "TRL all", "x TRL", "r1kit 2-N", "TRL 2-N", "x TRL",
               "met", "score 1st ms", "later ms"), cells,
              widths=(31, 9, 7, 5, 9, 7, 5, 3, 12, 8)),
        (f"all: mean of the {n} steps, the first included; 2-N: mean of steps 2-{n}; score: "
         "r1kit's scoring milliseconds in step 1 and later (median)"),
        "differences in every row: " + "; ".join(COMMON_DIFFERENCES),
        *(f"differences in {', '.join(names)}: {d}" for d, names in extra.items())])


def main(argv: list[str] | None = None) -> int:
    ap = parser("r1kit bench train", __doc__,
                out_help="JSON output path (default runs/bench_train.json; with --async, "
                "runs/bench_train_async.json; with --grid, runs/bench_train_grid.json)",
                quick=f"a small memory case {MEMORY_SHAPE['quick']} (for smoke tests)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after 1 warm-up step")
    ap.add_argument("--vocab-bench", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the 151,936-vocabulary memory test (default on)")
    ap.add_argument("--threads", type=int, default=1,
                    help="OpenMP/torch threads of every contender (0: the libraries' default); 1 "
                    "keeps a busy shared machine from thrashing OpenMP's spinning threads")
    ap.add_argument("--async", dest="async_mode", action="store_true",
                    help="instead: synchronous against one-step-off training (train.async_steps"
                    "=1) with the vllm_server engine, seconds per step and their parts")
    ap.add_argument("--grid", nargs="*", type=Row.parse, metavar="FAMILY,BETA,AUX",
                    help="instead: r1kit_hf against TRL on rows of settings (default: "
                    "qwen3_moe and deepseek_v3 x beta 0, 0.04 x aux loss 0, 0.001), in "
                    "interleaved pairs; the mean of all steps and of steps 2-N")
    ap.add_argument("--pairs", type=int, default=3, help="--grid: interleaved pairs per row")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--row", type=Row.parse, default=DEFAULT_ROW, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.pairs < 1:
        ap.error("--steps and --pairs must be >= 1")
    if args.worker:  # inside a subprocess started by run_worker
        import torch

        threads = torch.get_num_threads()  # vLLM disables set_num_threads once it starts
        out = WORKERS[args.worker](args)
        Path(args.result).write_text(json.dumps({**out, "torch_threads": threads}))
        return 0
    if args.grid is not None:
        path = args.out or Path("runs/bench_train_grid.json")
        result = run_grid(args.grid or GRID, args.steps, args.pairs, args.threads,
                          save=lambda r: write_result(path, r))
        print(_grid_table(result))
        return 0 if not any("error" in r for r in result["rows"].values()) else 1
    result = run(args.steps, args.vocab_bench, args.quick, args.threads, args.async_mode)
    print(_async_table(result) if args.async_mode else _table(result))
    write_result(args.out or ("runs/bench_train_async.json" if args.async_mode
                              else "runs/bench_train.json"), result)
    return 0 if not any("error" in r for r in result["contenders"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
