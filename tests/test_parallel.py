"""Data-parallel updates on this CPU: 2 processes (gloo, started by torchrun, the launcher
``accelerate launch`` runs underneath) give the same GRPO update as 1 process with the same
global batch, for DDP and FSDP2, full fine-tuning and LoRA, on the tiny Qwen3-MoE.

The worker (``tests/parallel_worker.py``) runs ``GRPOTrainer.update`` on a fixed ragged batch
with a token budget small enough that the two ranks get different numbers of micro-batches
(the padding path), and writes the reduced gradients, the weights after the AdamW step and the
update's statistics. Weights are float64 there, so the only differences left are the order of
sums (about 1e-16).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

WORKER = REPO / "tests" / "parallel_worker.py"


def run(model, out, strategy, mode, procs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(WORKER)]
    if procs > 1:  # torchrun, as a module of the same interpreter
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(procs), str(WORKER)]
    proc = subprocess.run(cmd + [str(model), str(out), strategy, mode], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def moe(tiny_cache):
    from r1kit.tiny import build_tiny

    return build_tiny("qwen3_moe", cache_dir=tiny_cache)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_processes_give_the_one_process_update(moe, tmp_path, mode):
    from safetensors.torch import load_file

    one = run(moe, tmp_path / "one.pt", "ddp", mode, 1)
    assert one["world"] == 1
    for strategy in ("ddp", "fsdp2"):
        two = run(moe, tmp_path / f"{strategy}.pt", strategy, mode, 2)
        assert two["world"] == 2
        assert two["grads"].keys() == one["grads"].keys() and len(one["grads"]) > 0
        for name, g in one["grads"].items():
            torch.testing.assert_close(two["grads"][name], g, atol=1e-6 * max(
                float(g.abs().max()), 1e-12), rtol=0, msg=f"{strategy} gradient of {name}")
        for name, w in one["weights"].items():
            torch.testing.assert_close(two["weights"][name], w, atol=1e-6, rtol=0,
                                       msg=f"{strategy} weight {name}")
        for key in ("loss", "grad_norm", "entropy", "clip_frac", "mismatch/kl"):
            assert two["stats"][key] == pytest.approx(one["stats"][key], rel=1e-6), key
        assert two["stats"]["clip_frac"] > 0  # the clipped branch of the loss is exercised
    # The update is not empty: the trained weights moved from the checkpoint's.
    start = load_file(moe / "model.safetensors")
    moved = [float((one["weights"][n].float() - start[n].float()).abs().max())
             for n in one["weights"] if n in start]
    if mode == "full":
        assert max(moved) > 1e-4
    else:
        lora = [n for n in one["grads"] if "lora_" in n]
        assert lora and all(float(one["grads"][n].abs().max()) > 0 for n in lora)


@pytest.mark.slow
def test_every_rank_samples_the_one_rank_rollout(tmp_path, tiny_cache):
    """Under torchrun with 2 ranks each rank's HF engine samples and scores its share of the
    prompts (5 prompts: 3 and 2) and the shares are gathered: both ranks hold the one-process
    rollout token for token, with its rewards and the sampler's log-probs (to float32
    rounding: the rows share forward batches with other rows than on one process). The
    even-answer groups score 0 everywhere, so a DAPO refill round runs too."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "R1KIT_CACHE": str(tiny_cache),
           "PYTHONPATH": str(REPO)}
    args = ["-m", "bench.ranks", "--worker"]  # saves each rank's step-0 rollout
    common = [str(REPO / "tests/data/tiny_grpo_random.yaml"),
              "reward.funcs=[rewards.toy:digit_share_odd_only]",
              "reward.weights=[1.0]", "rollout.max_tokens=12", "rollout.n=3",
              "train.prompts_per_step=5", "rollout.batch_size=4", "rollout.max_model_len=128",
              "train.deterministic=true", "reward.workers=1", "algo.filter_zero_variance=true",
              "algo.max_refills=1", "train.tensorboard=false"]
    got = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        out.mkdir()
        launch = [] if procs == 1 else ["-m", "torch.distributed.run", "--standalone",
                                        "--nproc_per_node", "2"]
        proc = subprocess.run([sys.executable, *launch, *args, str(out), "0", *common,
                               f"log.out_dir={out}"], env=env, capture_output=True, text=True,
                              timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got[procs] = [torch.load(out / f"rank{r}.pt") for r in range(procs)]
    one = got[1][0]
    assert one["stats"]["refills"] == 1 and one["stats"]["groups_sampled"] > 5
    for two in got[2]:
        assert two["questions"] == one["questions"] and two["tokens"] == one["tokens"]
        assert torch.equal(two["rewards"], one["rewards"])
        assert two["stats"]["groups_sampled"] == one["stats"]["groups_sampled"]
        assert two["stats"]["refills"] == one["stats"]["refills"]
        for a, b in zip(one["logprobs"], two["logprobs"]):
            torch.testing.assert_close(torch.tensor(b), torch.tensor(a), atol=1e-5, rtol=0)
    assert (tmp_path / "p2" / "engine.rank1.log").is_file()  # rank 1 ran its own engine


@pytest.mark.slow
def test_r1kit_train_on_two_processes_matches_one(tmp_path, tiny_cache):
    """``r1kit train`` under torchrun with 2 ranks (DDP): each rank samples and scores its
    share of the prompts, both update. Two steps with the HF engine give the one-process run's
    rewards and losses, and its weights to float32 rounding: AdamW's first step divides each
    gradient by its own size, so a 1e-10 difference in a 1e-9 gradient moves a weight by up to
    about 1e-3 x lr."""
    import json

    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1", "R1KIT_CACHE": str(tiny_cache)}
    args = ["-m", "r1kit.cli", "train", "--no-progress", str(REPO / "tests/data/tiny_grpo_random.yaml"),
            "reward.funcs=[rewards.toy:digit_share]", "reward.weights=[1.0]",
            "algo.mask_truncated=false", "rollout.max_tokens=16", "train.lr=1e-2",
            "train.token_budget=128", "rollout.max_model_len=128", "train.steps=2",
            "train.save_every=1", "train.tensorboard=false", "train.deterministic=true",
            "reward.workers=1"]
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        launch = [] if procs == 1 else ["-m", "torch.distributed.run", "--standalone",
                                        "--nproc_per_node", "2"]
        proc = subprocess.run([sys.executable, *launch, *args, f"log.out_dir={out}"], env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[procs] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert (tmp_path / "p2" / "train.rank1.log").is_file()
    assert not (tmp_path / "p2" / "metrics.rank1.jsonl").exists()
    assert [r["step"] for r in runs[2]] == [1, 2]  # one line per step: rank 0 logs
    for a, b in zip(runs[1], runs[2]):
        assert a["reward"] == b["reward"] and a["response_len"] == b["response_len"]
        for key in ("loss", "grad_norm", "entropy"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    for step in (1, 2):
        ckpt = f"checkpoints/step-00000{step}/model/model.safetensors"
        one, two = load_file(tmp_path / "p1" / ckpt), load_file(tmp_path / "p2" / ckpt)
        # lr 1e-2: float32 rounding leaves about 3e-5 here, a missing row or rank moves
        # weights by about lr. (AdamW is blind to a gradient's scale; grad_norm above is not.)
        assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-4


def test_colocated_vllm_engine_on_two_ranks_is_refused_before_loading(tmp_path, tiny_cache):
    """The colocated vLLM engine would build its own process group beside the trainers' and
    hang (vLLM's init_distributed_environment calls new_group over every rank while only rank 0
    builds an engine): r1kit train refuses it on several ranks, with one line, before any model
    loads."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "R1KIT_CACHE": str(tiny_cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "r1kit.cli", "train", "--no-progress", str(REPO / "tests/data/tiny_grpo_random.yaml"),
         "rollout.engine=vllm", f"log.out_dir={tmp_path}"],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    # each rank refuses; torchrun may stop rank 1 before it prints, once rank 0 has exited
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("r1kit:")]
    assert 1 <= len(lines) <= 2
    refusal = "r1kit: config error: rollout.engine=vllm with 2 ranks"
    assert all(ln.startswith(refusal) for ln in lines)
    assert not (tmp_path / "engine.log").exists() and not (tmp_path / "metrics.jsonl").exists()


TIMEOUT_WORKER = """
import sys, time
import torch.distributed as dist
from grpo.parallel import Parallel

par = Parallel.from_environment("ddp", timeout_s=float(sys.argv[1]))
if par.rank == 0:  # busy (starting an engine, sampling) for longer than the timeout
    time.sleep(12)
    sys.exit(0)
t0 = time.monotonic()
try:
    dist.barrier()
    print("waited", time.monotonic() - t0, "no error")
except Exception as e:
    print("waited", time.monotonic() - t0, type(e).__name__)
"""


def test_train_dist_timeout_reaches_the_process_group(tmp_path):
    """``train.dist_timeout_s`` is the process group's: with 2 s, rank 1's barrier gives up
    after about 2 s while rank 0 is busy for 12 s (with gloo's 30-minute default it waited
    until rank 0 left; NCCL's default is 10 minutes, less than a 7B step's rollout)."""
    script = tmp_path / "timeout_worker.py"
    script.write_text(TIMEOUT_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script), "2"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    waited = [ln for ln in proc.stdout.splitlines() if ln.startswith("waited")]
    assert len(waited) == 1, proc.stdout + proc.stderr[-2000:]
    seconds, outcome = float(waited[0].split()[1]), waited[0].split()[2]
    assert outcome != "no" and seconds < 8, waited[0]
