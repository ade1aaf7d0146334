"""``make gpu-check``: the sharded trainer's checks that need a GPU, in one short script.

On one GPU, a random-init Qwen3-MoE of about 1.2B parameters (``BIG``: Qwen's 151,936-token
vocabulary, 16 layers of 24 experts, top-4) goes through the FSDP2 code path ``r1kit train``
runs (``grpo.parallel.Parallel`` on a one-rank NCCL process group: ``fully_shard`` per decoder
layer and the root, float32 master weights in host memory first and moved to the GPU layer by
layer, ``MixedPrecisionPolicy`` with bf16 layers and float32 reduction, activation
checkpointing, the chunked LM head), and reports:

1. ``placement``: every parameter and AdamW state tensor on the GPU after the shards move there
   (the policy is loaded on the CPU first, as ``r1kit/train.py`` does under FSDP2);
2. ``update``: peak ``torch.cuda.max_memory_allocated`` of the first (cold) and the second
   optimiser step of ``--rows`` x ``--tokens`` tokens, against ``r1kit plan``'s estimate for the
   same layout (``r1kit.estimate.update_memory``), and their seconds;
3. ``sync``: the extra peak memory of the weight walk the engine sync runs
   (``rollouts.weights.iter_checkpoint_weights`` under ``Parallel.gathered``), against one
   layer's bytes in bf16 and the whole model's;
4. ``checkpoint``: a DCP checkpoint written and loaded back (``grpo.checkpoint``): weights and
   AdamW state equal, and on the GPU.

It prints a table and writes JSON (``--out``). Without a GPU it exits with one line; ``--device
cpu --small`` runs every path on a 27M-parameter model on the CPU (gloo), memory figures left
out: ``tests/test_gpu_check.py`` does that, so the script stays runnable.

Run: ``make gpu-check`` (``python -m bench.gpu_check [--rows 4] [--tokens 2048]``).
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

BIG = {"vocab_size": 151936, "hidden_size": 1024, "num_hidden_layers": 16,
       "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 64,
       "moe_intermediate_size": 768, "num_experts": 24, "num_experts_per_tok": 4,
       "max_position_embeddings": 8192}
CHUNK = 1024  # train.logprob_chunk for the check
GIB = 2**30


def config(small: bool):
    from bench.shard import moe_config

    cfg = moe_config()
    if not small:
        for key, value in BIG.items():
            setattr(cfg, key, value)
    return cfg


def worker(out: str, device: str, small: bool, rows: int, tokens: int) -> None:
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from grpo.checkpoint import load_sharded_state, save_sharded_checkpoint
    from grpo.logprobs import split_model
    from grpo.parallel import Parallel, PeakExtra
    from r1kit.config import Config
    from r1kit.estimate import Layout, peak_bytes, update_memory
    from r1kit.footprint import count_params
    from rollouts.weights import iter_checkpoint_weights

    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if cuda else "gloo")
    dev = torch.device("cuda", 0) if cuda else torch.device("cpu")
    arch = config(small)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(arch, dtype=torch.float32)  # masters, on the CPU
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    layer_bf16 = max(sum(p.numel() for p in layer.parameters())
                     for layer in split_model(policy)[0].layers) * 2
    total_params = sum(p.numel() for p in policy.parameters())
    par = Parallel(0, 1, "fsdp2", param_dtype=torch.bfloat16, shard_one=True)
    par.wrap(policy)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if cuda else "cpu",
                           "parameters": total_params, "rows": rows, "tokens": tokens}

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, arch.vocab_size, (rows, tokens), generator=g).to(dev)
    mask = torch.ones_like(ids)
    plens = torch.full((rows,), 256, device=dev)
    clens = torch.full((rows,), tokens - 256, device=dev)

    steps = []
    for step in (1, 2):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            logp = par.wrapped(ids, mask, plens, clens, CHUNK)[0]
        (-logp.mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        steps.append({"step": step, "seconds": time.perf_counter() - t0,
                      "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None})
    cfg = Config()
    cfg.model.dtype, cfg.train.parallel = "bfloat16", "fsdp2"
    cfg.train.activation_checkpointing, cfg.train.logprob_chunk = True, CHUNK
    parts = update_memory(cfg, arch, count_params(arch), Layout(1, True, False, 1, rows * tokens),
                          device="cuda")
    parts.pop("host", None)
    parts["kv_cache"] = 0.0
    res["update"] = {"steps": steps, "planned_bytes": peak_bytes(parts),
                     "planned_parts": parts}

    tensors = [p for p in policy.parameters()] + [
        v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    res["placement"] = {"tensors": len(tensors),
                        "off_device": sum(t.device.type != dev.type for t in tensors)}

    with par.gathered(), PeakExtra(dev) as peak:
        t0 = time.perf_counter()
        count = sum(1 for _ in iter_checkpoint_weights(policy))
    res["sync"] = {"tensors": count, "extra_bytes": peak.bytes if cuda else None,
                   "seconds": time.perf_counter() - t0, "layer_bf16_bytes": layer_bf16,
                   "model_bf16_bytes": total_params * 2}

    with tempfile.TemporaryDirectory(prefix="r1kit-gpu-check-") as tmp:
        before = {n: p.detach().to_local().clone() for n, p in policy.named_parameters()}
        moments = {k: v.to_local().clone() for k, v in
                   opt.state[next(iter(policy.parameters()))].items() if v.dim()}
        path = save_sharded_checkpoint(tmp, 1, policy, opt, None, {}, keep_last=1, rank=0,
                                       world=1, export=False)
        with torch.no_grad():
            for p in policy.parameters():
                p.to_local().zero_()
        load_sharded_state(path, policy, opt)
        same = all(torch.equal(before[n], p.detach().to_local())
                   for n, p in policy.named_parameters())
        state = opt.state[next(iter(policy.parameters()))]
        same_moments = all(torch.equal(moments[k], state[k].to_local()) for k in moments)
        on_device = all(p.device.type == dev.type for p in policy.parameters())
    res["checkpoint"] = {"weights_equal": same, "moments_equal": same_moments,
                         "on_device": on_device}
    Path(out).write_text(json.dumps(res, default=float))
    dist.destroy_process_group()


def rows_of(res: dict[str, Any]) -> list[list[Any]]:
    def gib(b):
        return "n/a" if b is None else f"{b / GIB:.2f}"

    u, s, c, pl = res["update"], res["sync"], res["checkpoint"], res["placement"]
    planned = u["planned_bytes"]
    out = [[f"update step {st['step']}", gib(st["peak_bytes"]), gib(planned),
            "n/a" if st["peak_bytes"] is None else f"{st['peak_bytes'] / planned:.2f}",
            f"{st['seconds']:.2f}"] for st in u["steps"]]
    out.append(["sync (extra)", gib(s["extra_bytes"]), f"layer {gib(s['layer_bf16_bytes'])}",
                "n/a" if s["extra_bytes"] is None
                else f"{s['extra_bytes'] / s['layer_bf16_bytes']:.2f} x layer",
                f"{s['seconds']:.2f}"])
    out.append(["placement", f"{pl['off_device']} of {pl['tensors']} off the device", "", "", ""])
    out.append(["DCP round trip", f"weights {c['weights_equal']}, AdamW {c['moments_equal']}, "
                f"on device {c['on_device']}", "", "", ""])
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        worker(argv[1], argv[2], argv[3] == "1", int(argv[4]), int(argv[5]))
        return 0
    ap = parser("r1kit bench gpu_check", __doc__, out="runs/gpu_check.json")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--small", action="store_true", help="the 27M-parameter model")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=2048)
    args = ap.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (run it on a GPU machine, or --device cpu --small "
              "to check the script)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="r1kit-gpu-check-") as tmp:
        result = Path(tmp) / "result.json"
        repo = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "1", "-m", "bench.gpu_check", "--worker", str(result), args.device,
               str(int(args.small)), str(args.rows), str(args.tokens)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            print(f"gpu-check: the worker failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        res = json.loads(result.read_text())
    print(f"{res['device']}: {res['parameters'] / 1e9:.2f}B-parameter Qwen3-MoE, FSDP2 on one "
          f"rank, bf16 layers over float32 masters, checkpointing, {res['rows']} x "
          f"{res['tokens']} tokens")
    print(table(["check", "measured (GiB)", "planned", "ratio", "seconds"], rows_of(res)))
    write_result(args.out, {"machine": machine(torch=True), **res})
    ok = res["placement"]["off_device"] == 0 and all(res["checkpoint"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
