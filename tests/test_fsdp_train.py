"""``r1kit train`` with ``train.parallel=fsdp2`` on 2 CPU ranks (torchrun, gloo), the tiny Qwen3-MoE
and the HF engine, in deterministic mode:

- the sharded run gives the one-process run's rewards, losses and grad norms (rel 1e-5) and its
  trained weights to float32 rounding (full fine-tuning and LoRA), and its weight syncs (every
  layer gathered on both ranks, the engine's own copy on rank 0) are logged with their memory;
- a run SIGKILLed twice (the whole process group: launcher and both ranks, as when a node dies)
  and resumed ends bit-identical to an uninterrupted one: exported weights, optimiser state
  from the DCP shards, metrics and samples;
- one process resumes from the 2-rank checkpoint (DCP reshards), warns that the run is not
  bit-identical, and samples what the 2-rank run sampled at the next step;
- the exported ``model/`` opens in transformers and in the vLLM engine, with the log-probs of
  the trained policy (its weights as loaded from the shards).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.test_resume import complete_lines, kill_when

pytestmark = pytest.mark.slow

ARGS = ["tests/data/tiny_grpo_random.yaml", "reward.funcs=[rewards.toy:digit_share]",
        "reward.weights=[1.0]", "algo.mask_truncated=false", "rollout.max_tokens=16",
        "train.lr=1e-2", "train.token_budget=128", "rollout.max_model_len=128",
        "train.tensorboard=false", "train.deterministic=true", "reward.workers=1",
        "train.sample_every=1"]
TIMEOUT = 300


def command(out: Path, procs: int, *extra: str) -> list[str]:
    launch = [] if procs == 1 else ["-m", "torch.distributed.run", "--standalone",
                                    "--nproc_per_node", str(procs)]
    return [sys.executable, *launch, "-m", "r1kit.cli", "train", "--no-progress", *ARGS,
            f"log.out_dir={out}", *extra]


def env(cache: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "R1KIT_CACHE": str(cache),
            "PYTHONPATH": str(REPO)}


def train(out: Path, procs: int, cache: Path, *extra: str) -> None:
    proc = subprocess.run(command(out, procs, *extra), env=env(cache), cwd=REPO,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(line: dict) -> dict:
    """A metrics line without wall-clock timings and measured memory."""
    return {k: v for k, v in line.items()
            if not k.startswith(("time/", "tokens_per_s/", "sync/", "gen/peak"))}


@pytest.mark.parametrize("mode", ["full", "lora", "kl+checkpointing+replay"])
def test_two_fsdp2_ranks_train_as_one_process(tmp_path, tiny_qwen, tiny_cache, mode):
    """``kl+checkpointing+replay``: the KL reference is sharded too, and the 2-rank run
    recomputes each layer in the backward pass (with the replayed routing still in place)
    while the one-process run keeps its activations: the same numbers either way."""
    extra = ["train.steps=2", "train.save_every=1"]
    sharded = ["train.parallel=fsdp2"]
    if mode == "lora":
        extra.append("train.lora_rank=4")
    if mode.startswith("kl"):
        extra += ["algo.beta=0.04", "algo.routing_replay=true"]
        sharded.append("train.activation_checkpointing=true")
    train(tmp_path / "one", 1, tiny_cache, *extra)
    train(tmp_path / "two", 2, tiny_cache, *extra, *sharded)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in two] == [1, 2]
    for a, b in zip(one, two):
        assert a["reward"] == b["reward"] and a["response_len"] == b["response_len"]
        for key in ("loss", "grad_norm", "entropy") + (("kl",) if "kl" in mode else ()):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
        assert b["sync/peak_extra_mib"] >= 0 and "sync/peak_extra_mib" not in a
    assert one[-1]["grad_norm"] > 0
    # Sharded checkpoints: each rank's RNG and the DCP shards; model/ exported at the end only.
    step1, step2 = (tmp_path / "two" / "checkpoints" / f"step-00000{i}" for i in (1, 2))
    assert {p.name for p in step1.iterdir()} == {"shards", "rng.rank0.pt", "rng.rank1.pt",
                                                 "trainer.pt"}
    assert (step2 / "model").is_dir()
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
    a = load_file(tmp_path / "one" / "checkpoints" / "step-000002" / "model" / name)
    b = load_file(step2 / "model" / name)
    assert a.keys() == b.keys() and len(a) > 0
    # lr 1e-2: float32 rounding leaves about 1e-5 here; a missing row or rank moves weights by
    # about lr (AdamW is blind to a gradient's scale).
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def dcp_state(ckpt: Path, tmp: Path) -> dict:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dst = tmp / f"{ckpt.parent.parent.name}-{ckpt.name}.pt"
    dcp_to_torch_save(ckpt / "shards", dst)
    return torch.load(dst, weights_only=False)


def flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flat(v, f"{prefix}{k}.")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from flat(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), tree


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_qwen, tiny_cache) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "reference"
    train(out, 2, tiny_cache, "train.steps=4", "train.save_every=2", "train.parallel=fsdp2")
    return out


def test_fsdp2_kill_then_resume_is_bit_identical(reference, tiny_cache, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    cmd = command(out, 2, "train.steps=4", "train.save_every=2", "train.parallel=fsdp2")
    ckdir = out / "checkpoints"
    with open(tmp_path / "killed.log", "w") as log:
        # First kill: while step 2's shards are being written (its .tmp- folder exists).
        proc = subprocess.Popen(cmd, env=env(tiny_cache), cwd=REPO, stdout=log, stderr=log,
                                start_new_session=True)
        kill_when(proc, lambda: ckdir.is_dir() and any(ckdir.glob(".tmp-step-000002-*")),
                  "the step-2 save", group=True)
        assert not (ckdir / "step-000002").exists()
        # Second kill: the moment step 3's metrics line is written (after step 2's checkpoint).
        proc = subprocess.Popen(cmd, env=env(tiny_cache), cwd=REPO, stdout=log, stderr=log,
                                start_new_session=True)
        kill_when(proc, lambda: len(complete_lines(out)) >= 3, "step 3's metrics line",
                  group=True)
    assert (ckdir / "step-000002").is_dir() and not (ckdir / "step-000004").exists()
    assert not (ckdir / "step-000002" / "model").exists()  # export_every 0: the last step only
    train(out, 2, tiny_cache, "train.steps=4", "train.save_every=2", "train.parallel=fsdp2")
    assert sorted(p.name for p in ckdir.iterdir()) == ["step-000002", "step-000004"]
    final, ref_final = ckdir / "step-000004", reference / "checkpoints" / "step-000004"
    w, w_ref = (load_file(d / "model" / "model.safetensors") for d in (final, ref_final))
    assert w.keys() == w_ref.keys()
    assert [k for k in w if not torch.equal(w[k], w_ref[k])] == []
    state, ref_state = dict(flat(dcp_state(final, tmp_path))), dict(flat(dcp_state(ref_final,
                                                                                    tmp_path)))
    assert state.keys() == ref_state.keys()
    moments = [k for k in state if k.endswith(("exp_avg", "exp_avg_sq"))]
    assert moments and any(k.startswith("model.") for k in state)
    for k, v in state.items():
        same = torch.equal(v, ref_state[k]) if isinstance(v, torch.Tensor) else v == ref_state[k]
        assert same, f"{k} differs after the resume"
    lines, ref_lines = metrics(out), metrics(reference)
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    assert [comparable(m) for m in lines] == [comparable(m) for m in ref_lines]
    assert (out / "samples.md").read_text() == (reference / "samples.md").read_text()


def test_one_process_resumes_a_two_rank_checkpoint(reference, tiny_cache, tmp_path):
    import shutil

    out = tmp_path / "one"
    shutil.copytree(reference / "checkpoints" / "step-000002",
                    out / "checkpoints" / "step-000002")
    train(out, 1, tiny_cache, "train.steps=4", "train.save_every=2", "train.parallel=fsdp2")
    lines = metrics(out)
    assert [m["step"] for m in lines] == [3, 4]
    # Same weights after the shards load (DCP reshards to plain tensors), same sampling seed:
    # step 3 samples and scores what the 2-rank run did.
    ref3 = metrics(reference)[2]
    assert lines[0]["reward"] == ref3["reward"] and lines[0]["response_len"] == ref3["response_len"]
    assert lines[0]["loss"] == pytest.approx(ref3["loss"], rel=1e-4)
    text = (out / "train.log").read_text()
    assert "written by 2 ranks and resumes on 1" in text and "not bit-identical" in text
    assert (out / "checkpoints" / "step-000004" / "model" / "model.safetensors").is_file()


@pytest.mark.vllm
def test_exported_model_opens_in_transformers_and_vllm(reference, tmp_path):
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM
    from vllm_fixtures import hf_logprobs, make_engine, max_logprob_gap

    from rollouts.types import Sampling

    final = reference / "checkpoints" / "step-000004"
    exported = AutoModelForCausalLM.from_pretrained(final / "model", dtype=torch.float32).eval()
    # The trained policy: the same architecture with the weights of the DCP shards.
    trained = AutoModelForCausalLM.from_pretrained(final / "model", dtype=torch.float32).eval()
    with torch.no_grad():
        for p in trained.parameters():
            p.zero_()
    sd = {k: v for k, v in trained.state_dict().items()}
    state = {"model": sd}
    dcp.load(state, checkpoint_id=final / "shards")
    trained.load_state_dict(state["model"])
    prompt, completion = [5, 17, 33, 9], [40, 41, 7, 99, 3, 12]
    a, b = hf_logprobs(exported, prompt, completion), hf_logprobs(trained, prompt, completion)
    assert float((a - b).abs().max()) <= 1e-5 and float(a.abs().max()) > 0
    engine = make_engine(final / "model")
    try:
        groups = engine.generate(["3 + 4 =", "12 - 5 ="], 2, Sampling(max_tokens=12, seed=1))
        assert sum(len(c.token_ids) for g in groups for c in g.completions) > 0
        assert max_logprob_gap(trained, groups) <= 1e-5
    finally:
        engine.close()


def test_fsdp2_lora_run_resumed_from_its_shards_is_bit_identical(tmp_path, tiny_qwen, tiny_cache):
    """LoRA under FSDP2: a run stopped after its step-2 checkpoint and started again (a fresh
    adapter, then the DCP shards loaded over it) ends with the uninterrupted run's adapter and
    metrics, bit for bit."""
    from safetensors.torch import load_file

    lora = ["train.lora_rank=4", "train.parallel=fsdp2", "train.save_every=2"]
    train(tmp_path / "whole", 2, tiny_cache, *lora, "train.steps=4")
    train(tmp_path / "split", 2, tiny_cache, *lora, "train.steps=2")
    train(tmp_path / "split", 2, tiny_cache, *lora, "train.steps=4")
    whole, split = metrics(tmp_path / "whole"), metrics(tmp_path / "split")
    assert [m["step"] for m in split] == [1, 2, 3, 4]
    assert [comparable(m) for m in split] == [comparable(m) for m in whole]
    name = "checkpoints/step-000004/model/adapter_model.safetensors"
    a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "split" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
