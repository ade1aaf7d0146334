"""End-to-end GRPO runs of ``r1kit train`` on the tiny Qwen3-MoE: real engines (HF and colocated
vLLM), real scorer worker processes, real checkpoints. The learnable target is
``rewards.toy:digit_share`` (share of digit characters): a random policy scores about 0.55 and
GRPO drives it towards 1 within a few dozen steps."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1kit.tiny import build_tiny
from tests.conftest import REPO

LEARN = ["reward.funcs=[rewards.toy:digit_share]", "reward.weights=[1.0]",
         "algo.mask_truncated=false", "rollout.max_tokens=16", "train.lr=1e-2",
         "reward.workers=1", "train.save_every=0"]


def train(out: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [sys.executable, "-m", "r1kit.cli", "train", str(REPO / "tests/data/tiny_grpo_random.yaml"),
           f"log.out_dir={out}", *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else (
        "model.safetensors")
    return load_file(folder / name)


def check_learned(out: Path, steps: int) -> list[dict]:
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not torch.isfinite(
            torch.tensor(v))}
        assert not bad, f"non-finite metrics at step {r['step']}: {bad}"
    first = sum(r["reward"] for r in rows[:5]) / 5
    last = sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + 0.15, (first, last)
    return rows


@pytest.mark.slow
def test_hf_engine_learns_and_writes_a_loadable_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    proc = train(tmp_path, *LEARN, "train.steps=24")
    result = json.loads(proc.stdout)
    rows = check_learned(tmp_path, 24)
    # MoE router statistics are logged every step
    assert 0 < rows[-1]["router/load_entropy"] <= 1
    ckpt = Path(result["checkpoint"])
    assert ckpt == tmp_path / "checkpoints" / "step-000024" / "model"
    before = weights(build_tiny("qwen3_moe"))
    after = weights(ckpt)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert model.config.model_type == "qwen3_moe"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert "sample completions" in (tmp_path / "samples.md").read_text()
    # engine and library output stays out of the terminal: only the progress bar
    table = re.compile(r"^(step \d+: sample completions| reward  question|\s*-?\d+\.\d\d  )")
    noise = [ln for ln in proc.stderr.replace("\r", "\n").splitlines()
             if ln.strip() and not ln.startswith("GRPO") and not table.match(ln)]
    assert not noise, noise[:5]


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_engine_learns_with_exact_sync(tmp_path):
    train(tmp_path, *LEARN, "rollout.engine=vllm", "train.steps=24")
    rows = check_learned(tmp_path, 24)
    # the sampler is synced exactly after every update: its log-probs match the trainer's
    for r in rows:
        assert r["mismatch/max_ratio"] < 1 + 1e-4 and r["mismatch/min_ratio"] > 1 - 1e-4, r
        assert r["mismatch/dropped_frac"] == 0
    assert "vllm" in (tmp_path / "engine.log").read_text().lower()


@pytest.mark.slow
@pytest.mark.vllm
def test_async_server_engine_learns_one_step_off(tmp_path):
    """train.async_steps=1: each step trains on a rollout the vLLM server sampled while the
    previous step trained (one version old); the target is learned as in the synchronous tests."""
    train(tmp_path, *LEARN, "rollout.engine=vllm_server", "train.async_steps=1", "train.steps=24")
    rows = check_learned(tmp_path, 24)
    assert [r["staleness"] for r in rows] == [0] + [1] * 23
    # The mismatch correction sees the one-version gap: the sampler's log-probs differ from the
    # trainer's under the weights it trains (synchronous vLLM runs stay within 1e-4).
    assert max(r["mismatch/max_ratio"] for r in rows[1:]) > 1.01
    assert rows[-1]["time/wait_rollout"] < rows[0]["time/wait_rollout"]


def test_async_needs_the_server_engine(tmp_path):
    proc = train(tmp_path, "train.async_steps=1", check=False)
    assert proc.returncode == 2 and "train.async_steps" in proc.stderr
    assert "vllm_server" in proc.stderr and not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_lora_with_kl_reference_as_adapter_off(tmp_path):
    # attention modules and, through peft's target_parameters, the fused 3-D expert weights
    train(tmp_path, *LEARN, "train.steps=6", "train.lora_rank=4", "train.lr=5e-3",
          "algo.beta=0.05",
          "train.lora_target_parameters=[mlp.experts.gate_up_proj, mlp.experts.down_proj]")
    rows = metrics(tmp_path)
    # step 1 makes one optimiser step after its forward: a fresh adapter (B = 0) is the
    # reference exactly, so the KL of the adapter-off reference is 0
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-9)
    assert rows[-1]["kl"] > 1e-6
    adapter = tmp_path / "checkpoints" / "step-000006" / "model"
    assert (adapter / "adapter_config.json").exists()
    trained = {k for k, v in weights(adapter).items() if "lora_B" in k and v.abs().sum() > 0}
    assert any(".self_attn.q_proj." in k for k in trained)
    assert any(".mlp.experts." in k for k in trained), sorted(trained)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(config["target_parameters"]) == {"mlp.experts.gate_up_proj",
                                                "mlp.experts.down_proj"}


def test_lora_target_parameters_fail_before_any_engine(tmp_path):
    proc = train(tmp_path, "train.lora_target_parameters=[mlp.experts.gate_up_proj]",
                 check=False)
    assert proc.returncode == 2
    assert "train.lora_target_parameters: needs train.lora_rank > 0" in proc.stderr
    proc = train(tmp_path, "train.lora_rank=4", "train.lora_target_parameters=[mlp.gate_up]",
                 check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no parameter of Qwen3MoeForCausalLM is named 'mlp.gate_up'" in proc.stderr
    assert "mlp.experts.gate_up_proj" in proc.stderr  # the candidates are listed
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    # lr = 1e30: after one update the logits overflow, and sampling meets NaN probabilities
    proc = train(tmp_path, *LEARN, "train.steps=6", "train.save_every=1", "train.lr=1e30",
                 check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    msg = proc.stderr.strip().splitlines()[-1]
    assert msg.startswith("r1kit: training stopped: step ") and "not finite" in msg
    saved = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert saved, "the last good checkpoint must survive"
    w = weights(saved[-1] / "model")
    assert all(torch.isfinite(t).all() for t in w.values())


def test_train_help_lists_every_setting():
    from r1kit.config import AlgoConfig, TrainConfig

    proc = subprocess.run([sys.executable, "-m", "r1kit.cli", "train", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0
    for section, cls in (("algo", AlgoConfig), ("train", TrainConfig)):
        for name in cls.__dataclass_fields__:
            assert f"{section}.{name} (" in proc.stdout


def test_bad_settings_fail_before_any_work(tmp_path):
    proc = train(tmp_path, "rollout.n=1", check=False)
    assert proc.returncode == 2
    assert "rollout.n: GRPO compares completions within a group" in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_dynamic_sampling_drops_zero_variance_groups_and_refills(tmp_path):
    train(tmp_path, *LEARN, "reward.funcs=[rewards.toy:digit_share_odd_only]",
          "train.steps=4", "algo.max_refills=3")
    rows = metrics(tmp_path)
    # even-answer groups score 0 everywhere: they are sampled, dropped, and replaced
    assert any(r["groups_sampled"] > r["groups_kept"] for r in rows)
    assert all(r["groups_kept"] == 4 for r in rows)
    assert any(r["refills"] >= 1 for r in rows) and all(r["refills"] <= 3 for r in rows)
    # with no refills allowed the step trains on fewer groups instead of sampling forever
    capped = tmp_path / "capped"
    train(capped, *LEARN, "reward.funcs=[rewards.toy:digit_share_odd_only]",
          "train.steps=4", "algo.max_refills=0")
    rows = metrics(capped)
    assert all(r["refills"] == 0 and r["groups_sampled"] == 4 for r in rows)
    assert any(r["groups_kept"] < 4 for r in rows)


@pytest.mark.slow
def test_a_reward_failing_everywhere_stops_the_run(tmp_path):
    # os:getcwd takes no completions: it raises on every sample, a broken reward
    proc = train(tmp_path, *LEARN, "reward.funcs=[rewards.toy:digit_share, os:getcwd]",
                 "reward.weights=[1.0, 1.0]", "train.steps=2", check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("r1kit: training stopped: step 0: reward os:getcwd failed on all ")


def test_prompt_longer_than_the_context_fails_before_any_engine(tmp_path):
    proc = train(tmp_path, "rollout.max_model_len=100", "rollout.max_tokens=60",
                 "train.token_budget=4096", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "exceeds rollout.max_model_len=100" in proc.stderr
    assert not (tmp_path / "engine.log").exists() or not (tmp_path / "engine.log").read_text()


def test_reward_workers_start_before_the_model_and_stop_when_building_fails(tmp_path):
    """The scorer starts first, so its workers warm up while the policy loads; a failure after
    it started (a prompt longer than the context, found once the tokenizer is loaded) leaves no
    worker behind."""
    import psutil

    from r1kit.config import load_config
    from r1kit.generate import PromptTooLong
    from r1kit.train import build_trainer

    cfg = load_config(REPO / "tests/data/tiny_grpo_random.yaml", [
        f"log.out_dir={tmp_path}", "rollout.max_model_len=100", "rollout.max_tokens=60",
        "train.token_budget=4096", "reward.workers=2"])
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    with pytest.raises(PromptTooLong, match="exceeds rollout.max_model_len=100"):
        build_trainer(cfg, show_progress=False)
    # (multiprocessing's resource tracker serves this process until it exits: not a worker)
    left = [c for c in me.children(recursive=True) if c.pid not in before and c.is_running()
            and c.status() != psutil.STATUS_ZOMBIE
            and "resource_tracker" not in " ".join(c.cmdline())]
    assert not left, [c.cmdline() for c in left]


def test_truncated_reward_replaces_the_score_of_unfinished_completions(tmp_path):
    """algo.truncated_reward (Oat-Zero's 0 for finish_reason "length"): every completion of a
    4-token budget is cut, so every total is that value, while the per-reward metric still
    shows what the text scored; unset, the same rollout is graded on its text."""
    from r1kit.config import load_config
    from r1kit.train import build_trainer

    got = {}
    for value in ("null", "-0.5"):
        cfg = load_config(REPO / "tests/data/tiny_grpo_random.yaml", [
            f"log.out_dir={tmp_path / value}", *LEARN, "rollout.max_tokens=4",
            "algo.filter_zero_variance=false", f"algo.truncated_reward={value}",
            "train.tensorboard=false"])
        trainer = build_trainer(cfg, show_progress=False)
        try:
            got[value] = trainer.rollout()
        finally:
            trainer.p.close()
    plain, cut = got["null"], got["-0.5"]
    assert all(c.finish_reason == "length" for g in cut.groups for c in g.completions)
    assert torch.equal(cut.rewards, torch.full_like(cut.rewards, -0.5))
    assert float(plain.rewards.max()) > 0  # the text itself earns digit_share
    assert cut.stats["reward/rewards.toy:digit_share"] == plain.stats[
        "reward/rewards.toy:digit_share"] > 0


def _one_bf16_step(out: Path, mixed: bool):
    from r1kit.config import load_config
    from r1kit.train import build_trainer

    cfg = load_config(REPO / "tests/data/tiny_grpo_random.yaml", [
        f"log.out_dir={out}", "model.dtype=bfloat16", f"train.mixed_precision={str(mixed).lower()}",
        *LEARN, "train.lr=1e-5", "train.steps=1", "train.sample_every=0", "algo.beta=0.01",
        "train.tensorboard=false"])
    trainer = build_trainer(cfg, show_progress=False)
    try:
        before = {n: p.detach().clone() for n, p in trainer.p.policy.named_parameters()}
        m = trainer.run_step()
        after = dict(trainer.p.policy.named_parameters())
        state = next(iter(trainer.p.optimizer.state.values()))
        return m, before, after, state
    finally:
        trainer.p.close()


def test_bf16_policy_trains_with_float32_master_weights(tmp_path):
    """model.dtype bfloat16 (a GPU recipe's setting), here on CPU: under mixed precision the
    trainer's weights and AdamW moments are float32 and a 1e-5 update changes almost every
    weight; trained in bfloat16 directly, most of that update rounds away."""
    m, before, after, state = _one_bf16_step(tmp_path / "mixed", mixed=True)
    assert all(p.dtype == torch.float32 for p in after.values())
    assert state["exp_avg"].dtype == torch.float32
    assert torch.isfinite(torch.tensor(m["loss"])) and m["kl"] >= 0
    changed = [(after[n] != before[n]).float().mean().item() for n in before]
    assert sum(changed) / len(changed) > 0.9
    m, before, after, state = _one_bf16_step(tmp_path / "bf16", mixed=False)
    assert all(p.dtype == torch.bfloat16 for p in after.values())
    assert state["exp_avg"].dtype == torch.bfloat16
    lost = [(after[n] == before[n]).float().mean().item() for n in before]
    assert sum(lost) / len(lost) > 0.5  # most bf16 weights did not move at all
