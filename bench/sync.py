"""``r1kit bench sync``: extra memory and time of the weight sync of an FSDP2 policy, per rank.

The policy is ``bench.shard``'s 27M-parameter Qwen3-MoE (float32), sharded over 2 gloo ranks
(``torchrun``) by ``grpo.parallel.Parallel.wrap`` as ``r1kit train`` does. Per rank, three ways
to get its weights out, run in turn (``--rounds`` rounds, interleaved):

- ``layer``: what the trainer's sync does on a rank (``GRPOTrainer.push_weights``): the root's
  own parameters gathered (``Parallel.gathered``), then ``rollouts.weights.iter_live_weights``,
  which gathers one decoder layer at a time and hands its tensors on, consumed one by one (a
  rank with an engine copies them into it; a rank without drains them);
- ``checkpoint_names``: the same walk through ``iter_checkpoint_weights`` (fused experts split
  per expert, what a vLLM engine loads);
- ``full``: the whole model gathered at once (``get_model_state_dict(full_state_dict=True)``),
  what a sync that first gathers the model would hold.

``extra`` is the peak resident memory above the level at the start of each (sampled every 2 ms
by ``grpo.parallel.PeakExtra``; the worker runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that
freed tensors leave RSS, as ``bench.shard`` explains). For scale: the model's bytes and its
largest decoder layer's. The claim checked: ``layer`` holds about one layer (plus the root's
parameters), not the model.

Run: ``r1kit bench sync [--rounds 3] [--out runs/bench_sync.json]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import machine, parser, table, write_result

WAYS = ("layer", "checkpoint_names", "full")
ENV = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
MIB = 2**20


def worker(model_path: str, out: str, rounds: int) -> None:
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM

    from grpo.logprobs import split_model
    from grpo.parallel import Parallel, PeakExtra
    from rollouts.weights import iter_checkpoint_weights, iter_live_weights

    par = Parallel.from_environment("fsdp2")
    policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    total = sum(p.numel() * p.element_size() for p in policy.parameters())
    layers = split_model(policy)[0].layers
    largest = max(sum(p.numel() * p.element_size() for p in layer.parameters())
                  for layer in layers)
    root_only = total - sum(p.numel() * p.element_size() for p in layers.parameters())
    par.wrap(policy)

    def drain(way: str) -> int:
        count = 0
        if way == "full":
            sd = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True))
            count = len(sd)
            del sd
            return count
        walk = iter_live_weights if way == "layer" else iter_checkpoint_weights
        with par.gathered():
            for _name, _tensor in walk(policy):
                count += 1
        return count

    rows = []
    for r in range(rounds):
        for way in WAYS[r % 3:] + WAYS[:r % 3]:
            par.barrier()
            t0 = time.perf_counter()
            with PeakExtra(torch.device("cpu")) as peak:
                tensors = drain(way)
            rows.append({"round": r, "way": way, "extra_bytes": peak.bytes,
                         "seconds": time.perf_counter() - t0, "tensors": tensors})
    result = {"rank": par.rank, "model_bytes": total, "largest_layer_bytes": largest,
              "root_bytes": root_only, "rows": rows}
    Path(f"{out}.rank{par.rank}").write_text(json.dumps(result))
    par.close()


def run(rounds: int) -> dict[str, Any]:
    from bench.shard import build_model

    with tempfile.TemporaryDirectory(prefix="r1kit-bench-sync-") as tmp:
        model = build_model(Path(tmp) / "model")
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", "-m", "bench.sync", "--worker", str(model), str(out), str(rounds)]
        repo = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join(
            [repo, os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"the sync worker failed:\n{proc.stderr[-3000:]}")
        ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in (0, 1)]
    return {"ranks": ranks}


def summary(res: dict[str, Any]) -> list[list[Any]]:
    out = []
    for rk in res["ranks"]:
        for way in WAYS:
            rows = [r for r in rk["rows"] if r["way"] == way]
            extra = max(r["extra_bytes"] for r in rows)
            secs = sorted(r["seconds"] for r in rows)[len(rows) // 2]
            out.append([rk["rank"], way, f"{extra / MIB:.1f}",
                        f"{extra / rk['model_bytes']:.2f}",
                        f"{extra / rk['largest_layer_bytes']:.2f}", f"{secs:.3f}"])
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        worker(argv[1], argv[2], int(argv[3]))
        return 0
    ap = parser("r1kit bench sync", __doc__, out="runs/bench_sync.json")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    res = run(args.rounds)
    rk = res["ranks"][0]
    print(f"model {rk['model_bytes'] / MIB:.1f} MiB; largest decoder layer "
          f"{rk['largest_layer_bytes'] / MIB:.1f} MiB; root's own parameters (embeddings, norm, "
          f"LM head) {rk['root_bytes'] / MIB:.1f} MiB; worst of {args.rounds} rounds, median "
          "seconds")
    print(table(["rank", "way", "extra MiB", "x model", "x layer", "seconds"], summary(res)))
    write_result(args.out, {"machine": machine(torch=True), "rounds": args.rounds, **res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
