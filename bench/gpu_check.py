"""``make gpu-check``: the checks that need a GPU, in one short script for a GPU machine.

Sized for well under 10 minutes on one H100, and bounded by ``--budget-s`` (default 540): each
worker process gets its share and is killed when it runs over, keeping what it wrote. It needs
torch, transformers, peft, accelerate and r1kit's pure-Python pebble and PyYAML (TRL and datasets
where installed; no vLLM, no network). Every section
catches its own exception and records it in the JSON; one failing section does not lose the
others' figures.

``fsdp2`` (this module's worker, under ``torchrun`` with one rank): a random-init Qwen3-MoE of
about 1.2B parameters (``bench.gpu_step.BIG``: Qwen's 151,936-token vocabulary, 16 layers of 24
experts, top-4) goes through the FSDP2 code path ``r1kit train`` runs (``grpo.parallel.Parallel``
on a one-rank NCCL process group: ``fully_shard`` per decoder layer and the root, float32 master
weights in host memory first and moved to the GPU layer by layer, ``MixedPrecisionPolicy`` with
bf16 layers and float32 reduction, activation checkpointing, the chunked LM head):

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

Then, in one process of their own (``bench.gpu_sections``; ``bench.gpu_step`` describes them):
``grpo_step``
(a bf16 GRPO step with the HF engine through ``r1kit.train.build_trainer``: generation tokens/s,
update peak memory, seconds and MFU), ``logprob_memory`` (the chunked log-prob pass against full
logits at V=151,936, and the ``logprob_chunk`` sweep with the recommended chunk),
``sync_debug`` (synchronizing CUDA calls in one update and one generate), ``deterministic``
(update and generate twice, bit-identical, in a fresh process with ``CUBLAS_WORKSPACE_CONFIG``)
and ``trl_step`` (the same step through TRL's ``GRPOTrainer``, ``bench.gpu_trl``). Last, on a
GPU, ``cpu_tests``: the loss, log-prob and host-sync tests (``CPU_TESTS``) run again under
pytest with ``R1KIT_TEST_DEVICE=cuda``, which makes the GPU torch's default device for every
tensor they create (``tests/conftest.py``), in the last ``CPU_TESTS_SHARE`` of the budget.

It prints one Markdown table and writes the JSON (``--out``) and the same table as Markdown next
to it (``X.json`` -> ``X.md``, for ``docs/BENCHMARKS.md``). Without a GPU it exits with one
line; ``--device cpu --small`` runs every section on a 27M-parameter model on the CPU (gloo),
memory and MFU figures "n/a": ``tests/test_gpu_check.py`` does that, so the script stays runnable.

Run: ``make gpu-check`` (``python -m bench.gpu_check [--rows 4] [--tokens 2048]``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.gpu_step import BUDGET_SPENT
from bench.gpu_step import model_config as config
from bench.harness import machine, parser, write_result

CHUNK = 1024  # train.logprob_chunk for the FSDP2 check
GIB = 2**30
SECTIONS = ("grpo_step", "trl_step", "logprob_memory", "sync_debug", "deterministic")
# CPU tests run again with every tensor they make on the GPU (R1KIT_TEST_DEVICE, tests/conftest.py).
CPU_TESTS = ("tests/test_grpo_losses.py", "tests/test_logprobs.py", "tests/test_host_syncs.py")
CPU_TESTS_SHARE = 0.15  # of the budget, kept for them after the sections


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
    prompt = min(256, tokens // 2)
    plens = torch.full((rows,), prompt, device=dev)
    clens = torch.full((rows,), tokens - prompt, device=dev)

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
    Path(out).write_text(json.dumps(res, default=float))  # kept if a later check fails

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
    Path(out).write_text(json.dumps(res, default=float))

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


def gib(b: float | None) -> str:
    return "n/a" if b is None else f"{b / GIB:.2f} GiB"


def secs(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def times(b: float | None, of: float | None, what: str) -> str:
    """``b`` in GiB, with its ratio to ``of`` when both are measured."""
    return gib(b) + ("" if b is None or not of else f", {b / of:.2f} x {what}")


def fsdp2_rows(res: dict[str, Any]) -> list[list[str]]:
    u, s, c, pl = (res.get(k) for k in ("update", "sync", "checkpoint", "placement"))
    out = []
    for st in u["steps"] if u else []:
        what = f"update step {st['step']} peak (planned {gib(u['planned_bytes'])})"
        out.append(["fsdp2", what, times(st["peak_bytes"], u["planned_bytes"], "planned"),
                    secs(st["seconds"])])
    if s:
        what = f"engine sync walk, extra peak (one layer {gib(s['layer_bf16_bytes'])})"
        out.append(["fsdp2", what, times(s["extra_bytes"], s["layer_bf16_bytes"], "layer"),
                    secs(s["seconds"])])
    if pl:
        off = f"{pl['off_device']} of {pl['tensors']} tensors off the device"
        out.append(["fsdp2", "placement", off, ""])
    if c:
        same = (f"weights {c['weights_equal']}, AdamW {c['moments_equal']}, "
                f"on device {c['on_device']}")
        out.append(["fsdp2", "DCP round trip", same, ""])
    return out


def step_rows(res: dict[str, Any]) -> list[list[str]]:
    g = res["grpo_step"]
    gen, cold, warm = g["generate"], g["update_cold"], g["update_warm"]
    mfu = "n/a" if g["mfu"] is None else f"{100 * g['mfu']:.1f}%"
    if g["peak_bf16_flops"] == "unknown" and gen["peak_bytes"] is not None:  # on a GPU
        mfu = "unknown (device not in PEAK_BF16)"
    sampled = f"generate {gen['completions']} completions, {gen['new_tokens']} tokens (HF engine)"
    rate = f"{gen['tokens_per_s']:.0f} tokens/s, peak {gib(gen['peak_bytes'])}"
    first = f"update, cold ({g['update_tokens']} tokens, logprob_chunk {g['logprob_chunk']})"
    second = f"update, warm ({g['active_matmul_parameters'] / 1e6:.0f}M active matmul params)"
    return [["grpo_step", sampled, rate, secs(gen["seconds"])],
            ["grpo_step", first, f"peak {gib(cold['peak_bytes'])}", secs(cold["seconds"])],
            ["grpo_step", second, f"peak {gib(warm['peak_bytes'])}, MFU {mfu}",
             secs(warm["seconds"])]]


def trl_rows(res: dict[str, Any]) -> list[list[str]]:
    t, g = res["trl_step"], res.get("grpo_step", {})
    measured = f"peak {gib(t['peak_bytes'])}"
    if "generate" in g:
        ours = g["generate"]["seconds"] + g["update_cold"]["seconds"]
        measured += f"; {t['seconds'] / ours:.2f} x r1kit's generate + cold update ({ours:.2f} s)"
    return [["trl_step", f"TRL {t['trl']} GRPOTrainer, one step (Trainer.train)", measured,
             secs(t["seconds"])]]


def logprob_rows(res: dict[str, Any]) -> list[list[str]]:
    lp = res["logprob_memory"]
    full = lp["full_logits"]["peak_extra_bytes"]
    what = f"full logits + log_softmax, {lp['rows']} x {lp['tokens']} tokens, V={lp['vocab']}"
    out = [["logprob_memory", what, f"peak +{gib(full)}", secs(lp["full_logits"]["seconds"])]]
    for r in lp["chunked"]:
        out.append(["logprob_memory", f"chunked, logprob_chunk {r['chunk']}",
                    "peak +" + times(r["peak_extra_bytes"], full, "full"), secs(r["seconds"])])
    best = f"{lp['recommended_chunk']}, max |logp diff| {lp['max_abs_logp_diff']:.1e}"
    out.append(["logprob_memory", "recommended logprob_chunk (smallest within 5% of the fastest)",
                best, ""])
    return out


def sync_rows(res: dict[str, Any]) -> list[list[str]]:
    sd = res["sync_debug"]

    def cell(x: dict[str, Any]) -> str:
        top = f", most at {x['top_sites'][0][0]} ({x['top_sites'][0][1]})" if x["top_sites"] else ""
        return f"{x['syncs']} synchronizing calls{top} (mode {x['mode']})"

    return [["sync_debug", "one update", cell(sd["update"]), ""],
            ["sync_debug", f"one generate ({sd['generate_tokens']} tokens)", cell(sd["generate"]),
             ""]]


def det_rows(res: dict[str, Any]) -> list[list[str]]:
    d = res["deterministic"]
    gen = (f"generate refused: {summary(d['generate_error'])}" if "generate_error" in d
           else f"tokens equal {d['tokens_equal']}")
    same = (f"{gen}, loss equal {d['loss_equal']}, grad norm equal {d['grad_norm_equal']}, "
            f"weights equal {d['weights_equal']}")
    return [["deterministic", "generate twice, update twice (use_deterministic_algorithms)",
             same, ""]]


ROWS = {"grpo_step": step_rows, "trl_step": trl_rows, "logprob_memory": logprob_rows,
        "sync_debug": sync_rows, "deterministic": det_rows}


def rows_of(res: dict[str, Any]) -> list[list[str]]:
    """The table's rows: each section's figures, or its error, or why it was skipped."""
    out = fsdp2_rows(res.get("fsdp2", {}))
    if "error" in res.get("fsdp2", {}):
        out.append(["fsdp2", "ERROR", summary(res["fsdp2"]["error"]), ""])
    for name in SECTIONS:
        sec = res.get(name) or {"error": "not run (the sections' process stopped before it)"}
        if "error" in sec:
            out.append([name, "ERROR", summary(sec["error"]), ""])
        elif "skipped" in sec:
            out.append([name, "skipped", sec["skipped"], ""])
        else:
            try:
                out += ROWS[name](res)
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:  # the JSON has it
                out.append([name, "ERROR", f"figures not rendered ({type(e).__name__}: {e})", ""])
    return out + cpu_test_rows(res)


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (``|`` in cells escaped)."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)])


def start(cmd: list[str], log: Path, extra_env: dict[str, str] | None = None
          ) -> subprocess.Popen:
    """A worker in its own process group (so that a timeout kills all of it), its output to
    ``log``; run from the repository (the CPU tests' paths are relative to it)."""
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]),
           **(extra_env or {})}
    with open(log, "w") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=repo)


def finish(proc: subprocess.Popen, log: Path, deadline: float) -> str | None:
    """None when the worker ends well by ``deadline`` (``time.perf_counter()``), else why not,
    with the end of its ``log`` (past the deadline, it is killed with its whole group)."""
    try:
        proc.wait(timeout=max(deadline - time.perf_counter(), 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "TimeoutError: killed at the end of its share of the time budget"
    if not proc.returncode:
        return None
    return f"the worker failed ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}"


def summary(error: str) -> str:
    """The line of a worker's error that names it (the last ``...Error:`` line)."""
    lines = [ln.removeprefix("[rank0]: ").strip() for ln in error.splitlines() if ln.strip()]
    named = [ln for ln in lines if "Error" in ln.split(":")[0] or "Exception" in ln.split(":")[0]]
    return (named or lines or ["?"])[-1][:200]


def run_all(args: Any, tmp: Path) -> dict[str, Any]:
    """The FSDP2 worker, then the sections' process, each within its share of the budget. On
    the CPU the two run at once: nothing there is a measurement, and CI waits less."""
    begin = time.perf_counter()
    fsdp2_out, steps_out = tmp / "fsdp2.json", tmp / "steps.json"
    fsdp2_log, steps_log = tmp / "fsdp2.log", tmp / "steps.log"
    fsdp2 = start([sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", "1", "-m", "bench.gpu_check", "--worker", str(fsdp2_out),
                   args.device, str(int(args.small)), str(args.rows), str(args.tokens)],
                  fsdp2_log)
    cuda = args.device == "cuda"
    fsdp2_why = finish(fsdp2, fsdp2_log, begin + 0.4 * args.budget_s) if cuda else None
    end = begin + args.budget_s * (1 - CPU_TESTS_SHARE if cuda else 1)
    steps = start([sys.executable, "-m", "bench.gpu_sections", str(steps_out), args.device,
                   str(int(args.small)), str(time.time() + end - time.perf_counter() - 0.08 * args.budget_s)],
                  steps_log)
    steps_why = finish(steps, steps_log, end)
    if not cuda:
        fsdp2_why = finish(fsdp2, fsdp2_log, end)
    res: dict[str, Any] = {"fsdp2": json.loads(fsdp2_out.read_text()) if fsdp2_out.is_file() else {}}
    if fsdp2_why:
        res["fsdp2"]["error"] = fsdp2_why
    if steps_out.is_file():
        res.update(json.loads(steps_out.read_text()))
    for name in SECTIONS:
        if steps_why and name not in res:
            res[name] = {"error": steps_why}
    if cuda:
        res["cpu_tests"] = cpu_tests(tmp / "cpu_tests.log", begin + args.budget_s)
    res["device"] = res["fsdp2"].get("device") or res.get("device", args.device)
    res["seconds"] = time.perf_counter() - begin
    return res


def cpu_tests(log: Path, deadline: float, device: str = "cuda",
              tests: tuple[str, ...] = CPU_TESTS) -> dict[str, Any]:
    """``tests`` under pytest with ``R1KIT_TEST_DEVICE=device``: the loss, log-prob and
    host-sync tests with their tensors on the GPU. Their counts, and the failing tests' ids."""
    if deadline - time.perf_counter() < 20:
        return {"skipped": BUDGET_SPENT}
    t0 = time.perf_counter()
    proc = start([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                 log, {"R1KIT_TEST_DEVICE": device})
    why = finish(proc, log, deadline)
    text = log.read_text(errors="replace")
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|errors?)\b",
                                                     text.splitlines()[-1] if text else "")}
    out: dict[str, Any] = {"passed": counts.get("passed", 0),
                           "failed": [ln.split()[1] for ln in text.splitlines()
                                      if ln.startswith(("FAILED ", "ERROR "))],
                           "seconds": time.perf_counter() - t0}
    if why and not out["failed"]:  # killed, or pytest itself failed: no test said why
        out["error"] = why
    return out


def cpu_test_rows(res: dict[str, Any]) -> list[list[str]]:
    sec = res.get("cpu_tests")
    if sec is None:
        return []
    if "error" in sec or "skipped" in sec:
        return [["cpu_tests", "ERROR" if "error" in sec else "skipped",
                 summary(sec["error"]) if "error" in sec else sec["skipped"], ""]]
    failed = sec["failed"]
    what = f"{len(CPU_TESTS)} CPU test files on cuda"
    told = f"{sec['passed']} passed, {len(failed)} failed" + (
        f" ({', '.join(failed[:4])}{', ...' if len(failed) > 4 else ''})" if failed else "")
    return [["cpu_tests", what, told, f"{sec['seconds']:.0f}"]]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        worker(argv[1], argv[2], argv[3] == "1", int(argv[4]), int(argv[5]))
        return 0
    ap = parser("r1kit bench gpu_check", __doc__, out="runs/gpu_check.json")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--small", action="store_true", help="the 27M-parameter model, small sizes")
    ap.add_argument("--rows", type=int, default=4, help="FSDP2 check: rows per step")
    ap.add_argument("--tokens", type=int, default=2048, help="FSDP2 check: tokens per row")
    ap.add_argument("--budget-s", type=float, default=540,
                    help="wall-clock bound of the whole check, seconds (default: %(default)s)")
    args = ap.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (run it on a GPU machine, or --device cpu --small "
              "to check the script)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="r1kit-gpu-check-") as tmp:
        res = run_all(args, Path(tmp))
    params = res["fsdp2"].get("parameters") or res.get("grpo_step", {}).get("parameters")
    size = f"{params / 1e9:.2f}B-parameter" if params else "random-init"
    title = (f"{res['device']}: {size} Qwen3-MoE, bf16 over float32 masters; FSDP2 on one rank "
             f"with checkpointing ({args.rows} x {args.tokens} tokens), GRPO step with the HF "
             f"engine; {res['seconds']:.0f} s in all")
    path = write_result(args.out, {"machine": machine(torch=True), **res})  # before any table
    text = markdown(["section", "what", "measured", "seconds"], rows_of(res))
    print(title + "\n\n" + text)
    path.with_suffix(".md").write_text(title + "\n\n" + text + "\n", encoding="utf-8")
    print(f"wrote {path.with_suffix('.md')}")
    return 0 if ok(res) else 1


def ok(res: dict[str, Any]) -> bool:
    """No section failed, and the pass/fail checks passed: placement, the DCP round trip, and
    (where it was not skipped) the deterministic repeats."""
    f, d = res["fsdp2"], res.get("deterministic", {})
    if "error" in f or any("error" in res.get(name, {"error": 1}) for name in SECTIONS):
        return False
    if any(res.get(name, {}).get("skipped") == BUDGET_SPENT for name in SECTIONS):
        return False
    tests = res.get("cpu_tests", {})
    if "error" in tests or tests.get("failed"):
        return False
    same = "skipped" in d or all(d.get(k) for k in ("tokens_equal", "loss_equal",
                                                      "grad_norm_equal", "weights_equal"))
    return (f.get("placement", {}).get("off_device") == 0 and bool(f.get("checkpoint"))
            and all(f["checkpoint"].values()) and same)


if __name__ == "__main__":
    raise SystemExit(main())
