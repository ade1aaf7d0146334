"""``r1kit bench shard``: per-rank memory of a training step under FSDP2, 1 rank against 2.

A tiny Qwen3-MoE scaled up to 27M parameters (``MOE``: width 256, 8 layers, 16 experts of width
256, top-2, 4 query heads and 2 KV heads of 64; float32, random init, saved with
``save_pretrained`` to a temporary folder) trains on a fixed batch of ``--rows`` x ``--tokens``
tokens (a 16-token prompt, the rest completion): forward through ``grpo.logprobs`` (on 2 ranks
through ``Parallel.wrap``'s ``LogprobModule`` root, ``train.parallel: fsdp2``), backward of the
mean log-prob, AdamW step, built over the parameters after wrapping as ``r1kit/train.py`` does.
Each rank count is one ``torchrun`` launch (gloo; ``python`` alone for 1 rank), and the two take
turns for ``--rounds`` rounds (``bench.harness.interleaved``), so machine noise hits both alike.

Per rank it reports:

- ``state``: the exact bytes of this rank's parameters, gradients and AdamW state after the step
  (the local shards of FSDP2's DTensors, ``to_local``), and ``state_between``: the same between
  two micro-batches of one optimiser step (read from FSDP2's parameter groups: the shards a
  rank accumulates, since ``grpo/parallel.py`` reduce-scatters after every micro-batch; any
  gradient FSDP2 held unsharded would show here).
- ``peak``: the peak resident memory of a step, one micro-batch per optimiser step (``micro1``)
  and two (``micro2``), over the RSS before the model loads (``/proc/self/status``): ``VmHWM``
  reset to the current RSS just before the step (``/proc/self/clear_refs``), minus the
  file-backed and shared RSS at its end (libraries' code paged in as it is first used, the
  checkpoint file transformers maps while loading: not tensors, and they only grow), minus the
  anonymous RSS before the model loaded. AdamW's moments exist before the steps (a step on zero
  gradients allocates them), as in every step after a run's first. The worker runs with
  ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then serves every allocation of 64 KiB or more with its
  own mapping and unmaps it on free, so RSS follows the live tensors (by default freed blocks
  under 32 MiB stay in the heap and in RSS).
- ``seconds``: the wall-clock time of the timed step (one micro-batch).

Target: at 2 ranks, the state per rank <= 0.6 x the state at 1 rank. ``tests/test_plan_memory.py``
runs the same worker and compares the peaks with ``r1kit.estimate.update_memory``.

Run: ``r1kit bench shard [--rounds 2] [--rows 4] [--tokens 256] [--out runs/bench_shard.json]``
(also ``python -m bench.shard``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import interleaved, machine, parser, table, write_result

MOE = {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 4,
       "num_key_value_heads": 2, "head_dim": 64, "moe_intermediate_size": 256,
       "num_experts": 16, "num_experts_per_tok": 2}
"""What ``build_model`` changes in ``r1kit.tiny``'s Qwen3-MoE: 27,208,960 parameters."""
PROMPT = 16  # prompt tokens of every row; the rest of a row is completion
CHUNK = 256  # train.logprob_chunk
TARGET = 0.6  # state per rank at 2 ranks / at 1 rank
ENV = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
"""The workers' environment on top of the caller's (see the module docstring)."""


def moe_config():
    """The scaled-up tiny Qwen3-MoE's config (vocabulary: the embedded tokenizer's)."""
    from r1kit.tiny import build_tokenizer, tiny_config

    tok = build_tokenizer(0)
    config = tiny_config("qwen3_moe", len(tok), tok.eos_token_id)
    for key, value in MOE.items():
        setattr(config, key, value)
    return config


def build_model(out: Path) -> Path:
    """The model, random init (seed 0), saved with ``save_pretrained`` into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(moe_config(), dtype=torch.float32).save_pretrained(out)
    return out


def launch(model: Path, out: Path, ranks: int, modes: list[bool], rows: int, tokens: int,
           timeout: int = 600) -> list[dict[str, Any]]:
    """Run the worker on ``ranks`` processes for each of ``modes`` (gradient checkpointing off
    or on, one after the other); every rank's result, rank 0 first."""
    env = {**os.environ, **ENV,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "bench.shard"]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(ranks), "-m", "bench.shard"]
    cmd += ["--worker", str(model), str(out), ",".join(str(int(m)) for m in modes), str(rows),
            str(tokens)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({ranks} ranks): {proc.stderr[-3000:]}")
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(ranks)]


# ---------------------------------------------------------------------------------------------
# The worker (one per rank)


def _status(key: str) -> int:
    """A ``kB`` line of ``/proc/self/status`` in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _peak_since_reset() -> int:
    """Anonymous RSS at the high-water mark since ``_reset_peak`` (module docstring)."""
    return _status("VmHWM") - _status("RssFile") - _status("RssShmem")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def _local_bytes(tensors) -> int:
    """Bytes of each tensor's local part (this rank's shard of an FSDP2 DTensor)."""
    total = 0
    for t in tensors:
        if t is not None:
            t = t.to_local() if hasattr(t, "to_local") else t
            total += t.numel() * t.element_size()
    return total


def _held_gradients(model) -> int:
    """Bytes of the gradients a rank holds now: FSDP2's unsharded ones between reductions
    (private FSDP2 state, read only here), else the parameters' ``.grad``."""
    from torch.distributed.fsdp import FSDPModule

    groups = [m._get_fsdp_state()._fsdp_param_group for m in model.modules()
              if isinstance(m, FSDPModule)]
    if not groups:
        return _local_bytes(p.grad for p in model.parameters())
    total = 0
    for group in groups:
        for fp in group.fsdp_params if group is not None else []:
            unsharded = getattr(fp, "_unsharded_param", None)
            total += _local_bytes([fp.unsharded_accumulated_grad,
                                   None if unsharded is None else unsharded.grad,
                                   fp.sharded_param.grad])
    return total


def worker(model_path: str, out: str, modes: list[bool], rows: int, tokens: int) -> None:
    """Measure each mode (gradient checkpointing off or on) in turn, each on a freshly loaded
    model whose baseline is the anonymous RSS before it loads; write this rank's results."""
    from grpo.parallel import Parallel

    par = Parallel.from_environment("fsdp2")
    runs = {}
    for checkpointing in modes:
        runs[str(int(checkpointing))] = _measure(par, model_path, checkpointing, rows, tokens)
        gc.collect()
    Path(f"{out}.rank{par.rank}.json").write_text(json.dumps(
        {"rank": par.rank, "world": par.world, "rows": rows, "tokens": tokens, "runs": runs}))
    par.close()


def _measure(par, model_path: str, checkpointing: bool, rows: int, tokens: int
             ) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from grpo.logprobs import completion_logprobs

    torch.manual_seed(0)
    ids = torch.randint(3, 800, (rows, tokens))
    mask = torch.ones_like(ids)
    prompt_lens = torch.full((rows,), PROMPT)
    completion_lens = torch.full((rows,), tokens - PROMPT)
    gc.collect()
    base = _status("RssAnon")

    policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    par.wrap(policy)
    runner = par.wrapped if par.active else None
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)  # after wrapping: over the shards
    params = list(policy.parameters())

    def micro_batch(last: bool) -> None:
        with par.sync_context(last=last):
            if runner is not None:
                logp = runner(ids, mask, prompt_lens, completion_lens, CHUNK)[0]
            else:
                logp = completion_logprobs(policy, ids, mask, prompt_lens, completion_lens,
                                           chunk_tokens=CHUNK).logp
            logp.mean().backward()

    def state() -> int:
        moments = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
        return _local_bytes(params) + _held_gradients(policy) + _local_bytes(moments)

    for p in params:  # AdamW allocates its moments on its first step: take one on zeros
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    gc.collect()
    _reset_peak()
    t0 = time.perf_counter()
    micro_batch(last=True)  # one micro-batch per optimiser step
    opt.step()
    seconds = time.perf_counter() - t0
    micro1 = _peak_since_reset() - base
    after = state()
    gc.collect()
    _reset_peak()
    opt.zero_grad(set_to_none=True)  # two micro-batches: gradients accumulate in between
    micro_batch(last=False)
    between = state()
    micro_batch(last=True)
    opt.step()
    micro2 = _peak_since_reset() - base
    result = {"checkpointing": checkpointing, "params": _local_bytes(params), "state": after,
              "state_between": between, "peak": {"micro1": micro1, "micro2": micro2},
              "seconds": seconds}
    par.wrapped = None  # the model, its optimiser and gradients go when this returns
    return result


# ---------------------------------------------------------------------------------------------
# The benchmark


def run(rounds: int, rows: int, tokens: int) -> dict[str, Any]:
    """``rounds`` rounds of a 1-rank and a 2-rank launch, each measuring both modes."""
    keys = ("state", "state_between", "peak_micro1", "peak_micro2", "seconds")
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "moe")
        for i, ranks in interleaved(range(rounds), (1, 2)):
            got = launch(model, Path(tmp) / f"r{ranks}-{i}", ranks, [False, True], rows, tokens)
            for mode in ("0", "1"):
                per_rank = [r["runs"][mode] for r in got]
                runs.setdefault(f"{ranks}/{mode}", []).append({
                    "state": max(r["state"] for r in per_rank),
                    "state_between": max(r["state_between"] for r in per_rank),
                    "peak_micro1": max(r["peak"]["micro1"] for r in per_rank),
                    "peak_micro2": max(r["peak"]["micro2"] for r in per_rank),
                    "seconds": max(r["seconds"] for r in per_rank)})
            print(f"round {i}: {ranks} rank(s) done", file=sys.stderr)
    median = {k: {key: statistics.median(r[key] for r in rs) for key in keys}
              for k, rs in runs.items()}
    ratio = median["2/0"]["state"] / median["1/0"]["state"]
    return {"machine": machine(torch=True), "model": MOE, "rows": rows, "tokens": tokens,
            "rounds": rounds, "runs": runs, "median": median, "state_ratio": ratio,
            "target": TARGET, "met": ratio <= TARGET}


def _table(res: dict[str, Any]) -> str:
    med = res["median"]
    rows = []
    for key, label, scale in (
            ("state", "params + grads + AdamW after the step, MiB", 2**20),
            ("state_between", "the same between micro-batches, MiB", 2**20),
            ("peak_micro1", "peak RSS increase, 1 micro-batch, MiB", 2**20),
            ("peak_micro2", "peak RSS increase, 2 micro-batches, MiB", 2**20),
            ("seconds", "seconds per step (1 micro-batch)", 1.0)):
        for mode, name in (("0", ""), ("1", ", checkpointing")):
            if key.startswith("state") and mode == "1":
                continue  # checkpointing changes activations, not the state
            one, two = med[f"1/{mode}"][key], med[f"2/{mode}"][key]
            fmt = "{:.2f}" if scale == 1.0 else "{:,.1f}"
            rows.append([label.replace(", MiB", name + ", MiB") if scale != 1.0 else label + name,
                         fmt.format(one / scale), fmt.format(two / scale), f"{two / one:.2f}"])
    verdict = (f"state at 2 ranks / 1 rank: {res['state_ratio']:.2f} (target <= {TARGET}: "
               f"{'met' if res['met'] else 'not met'})")
    return table(("per rank (median of rounds)", "1 rank", "2 ranks", "x 1 rank"), rows,
                 rule=True) + "\n" + verdict


def main(argv: list[str] | None = None) -> int:
    ap = parser("r1kit bench shard", __doc__, out="runs/bench_shard.json")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of 1 rank then 2 ranks")
    ap.add_argument("--rows", type=int, default=4, help="rows per micro-batch")
    ap.add_argument("--tokens", type=int, default=256, help="tokens per row")
    ap.add_argument("--worker", nargs=5, metavar=("MODEL", "OUT", "MODES", "ROWS", "TOKENS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:  # one rank, inside a launch
        model, out, modes, rows, tokens = args.worker
        worker(model, out, [m == "1" for m in modes.split(",")], int(rows), int(tokens))
        return 0
    res = run(args.rounds, args.rows, args.tokens)
    print(_table(res))
    write_result(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
