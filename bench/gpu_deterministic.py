"""``make gpu-check``'s ``deterministic`` section: ``train.deterministic: true`` on the device.

In a fresh process (``CUBLAS_WORKSPACE_CONFIG`` must be set before CUDA starts; ``build_trainer``
then turns ``torch.use_deterministic_algorithms`` on), on the policy ``bench.gpu_step`` saved: the
same seeded ``generate`` twice, and the same ``update`` twice from the same weights, AdamW state
and schedule. Token ids, loss, gradient norm and updated weights must be bit-identical, and no
operation may refuse to run; a ``generate`` that deterministic mode refuses is recorded, and the
update's batch is then sampled with deterministic algorithms off for that one call.

Run by ``bench.gpu_step`` (``python -m bench.gpu_deterministic OUT DEVICE SMALL MODEL TMP``).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.gpu_step import REPO, Context, error_of, trainer_config

WORKSPACE = ":4096:8"  # CUBLAS_WORKSPACE_CONFIG for deterministic cuBLAS


def deterministic_worker(ctx: Context) -> dict[str, Any]:
    """Run inside the fresh process: generate twice, update twice, from the same state. A
    generate that deterministic mode refuses is recorded, and the update's batch is then
    sampled with deterministic algorithms off for that one call."""
    import torch

    from r1kit.train import build_trainer
    from rollouts.types import Sampling

    s = ctx.sizes
    cfg = trainer_config(ctx.folder, ctx.out_dir / "det", ctx.device, s.det_prompts, s.det_n,
                         s.det_tokens, ["train.deterministic=true", "rollout.seeded=always"])
    trainer = build_trainer(cfg, show_progress=False)
    p = trainer.p
    res: dict[str, Any] = {"cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                           "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
    try:
        prompts = [p.prompt_fn(q.question) for q in p.data.take(s.det_prompts)]
        draw = Sampling(max_tokens=s.det_tokens, seed=11)
        try:
            tokens = [[c.token_ids for g in p.engine.generate(prompts, s.det_n, draw)
                       for c in g.completions] for _ in range(2)]
            res["tokens_equal"] = tokens[0] == tokens[1]
        except RuntimeError as e:
            res.update(tokens_equal=False, generate_error=error_of(e))
        try:
            ro = trainer.rollout()
        except RuntimeError:
            torch.use_deterministic_algorithms(False)
            ro = trainer.rollout()
            torch.use_deterministic_algorithms(True)
        try:
            res.update(update_twice(trainer, trainer.prepare(ro)))
        except Exception as e:  # noqa: BLE001  (kept with the generate's result)
            res["error"] = f"update: {error_of(e)}"
        return res
    finally:
        p.close()
        p.parallel.close()


def update_twice(trainer, batch) -> dict[str, Any]:
    """``trainer.update(batch)`` twice from the same weights, AdamW and schedule state."""
    import torch

    p = trainer.p
    start = ({k: v.detach().clone() for k, v in p.policy.state_dict().items()},
             copy.deepcopy(p.optimizer.state_dict()), copy.deepcopy(p.scheduler.state_dict()))
    runs = []
    for _ in range(2):
        p.policy.load_state_dict(start[0])
        p.optimizer.load_state_dict(start[1])
        p.scheduler.load_state_dict(start[2])
        stats = trainer.update(batch)
        runs.append((stats["loss"], stats["grad_norm"],
                     {n: w.detach().clone() for n, w in p.policy.named_parameters()}))
    (l1, g1, w1), (l2, g2, w2) = runs
    return {"loss": [l1, l2], "grad_norm": [g1, g2], "loss_equal": l1 == l2,
            "grad_norm_equal": g1 == g2,
            "weights_equal": all(torch.equal(w1[n], w2[n]) for n in w1)}


def start(ctx: Context) -> subprocess.Popen:
    """``deterministic_worker`` in a fresh process, the workspace set before CUDA starts."""
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": WORKSPACE,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "bench.gpu_deterministic", str(ctx.out_dir / "deterministic.json"), ctx.device, str(int(ctx.small)),
           str(ctx.folder), str(ctx.out_dir)]
    with open(ctx.out_dir / "deterministic.log", "w") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def deterministic_check(ctx: Context) -> dict[str, Any]:
    """The fresh process's result: started now on a GPU (after this process's trainer has
    freed its memory), or already at the start on the CPU, where nothing here is timed."""
    ctx.close()
    proc = ctx.early_deterministic or start(ctx)
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    out = ctx.out_dir / "deterministic.json"
    if not out.is_file():
        log = (ctx.out_dir / "deterministic.log").read_text(errors="replace")
        raise RuntimeError(f"the deterministic process failed ({proc.returncode}): {log[-1500:]}")
    return json.loads(out.read_text())  # with "error" (and what ran before it) if it failed


def main(argv: list[str]) -> int:
    out, device, small, folder, tmp = argv[:5]
    try:
        res = deterministic_worker(Context(device, small == "1", Path(folder), Path(tmp)))
    except Exception as e:  # noqa: BLE001  (the parent records it)
        res = {"error": error_of(e)}
    Path(out).write_text(json.dumps(res, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
