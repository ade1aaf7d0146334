"""``r1kit distill`` end to end on the tiny models: on-policy distillation trains through the GRPO
trainer (weights change, metrics finite, resume continues), rejection-sampled SFT writes and
reuses its dataset and trains a student whose tokenizer differs from the teacher's, and the same
student fails on-policy with one clear line before any model is loaded."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO
from tests.test_train import metrics


def distill(cache: Path, recipe: str, out: Path, *overrides: str, check: bool = True):
    env = {**os.environ, "R1KIT_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "r1kit.cli", "distill", "--no-progress",
           str(REPO / "recipes" / recipe), f"log.out_dir={out}", "distill.teacher=tiny:qwen3_moe",
           "reward.workers=1", *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_on_policy_trains_the_student_and_resumes(tmp_path, tiny_cache):
    from r1kit.tiny import build_tiny

    student = build_tiny("qwen3_dense", cache_dir=tiny_cache)
    out = tmp_path / "op"
    small = ["model.path=tiny:qwen3_dense", "train.prompts_per_step=2", "rollout.n=2",
             "rollout.max_tokens=12", "train.save_every=1", "train.tensorboard=false"]
    distill(tiny_cache, "tiny_distill_on_policy.yaml", out, *small, "train.steps=2")
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float)), r
        assert r["distill/teacher_tokens"] > 0 and r["distill/reverse_kl"] > 0
        assert "reward/accuracy" in r  # rewards are still computed and logged
    before = load_file(student / "model.safetensors")
    after = load_file(out / "checkpoints" / "step-000002" / "model" / "model.safetensors")
    assert max(float((before[k] - after[k]).abs().max()) for k in before) > 1e-4
    # Resume: the same run asked for one more step continues from step 2.
    distill(tiny_cache, "tiny_distill_on_policy.yaml", out, *small, "train.steps=3")
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    assert "resumed from" in (out / "train.log").read_text()
    summary = json.loads((out / "distill.json").read_text())
    assert summary["teacher_tokens"] == sum(r["distill/teacher_tokens"] for r in metrics(out))


@pytest.mark.slow
def test_on_policy_forward_kl_trains_the_student(tmp_path, tiny_cache):
    from r1kit.tiny import build_tiny

    student = build_tiny("qwen3_dense", cache_dir=tiny_cache)
    out = tmp_path / "fkl"
    distill(tiny_cache, "tiny_distill_on_policy.yaml", out, "model.path=tiny:qwen3_dense",
            "train.prompts_per_step=2", "rollout.n=2", "rollout.max_tokens=12",
            "train.save_every=1", "train.tensorboard=false", "train.steps=1",
            "distill.loss=forward_kl", "distill.top_k=8")
    (r,) = metrics(out)
    assert r["distill/forward_kl"] > 0 and math.isfinite(r["distill/forward_kl"])
    assert 0 < r["distill/teacher_topk_mass"] <= 1 + 1e-6
    before = load_file(student / "model.safetensors")
    after = load_file(out / "checkpoints" / "step-000001" / "model" / "model.safetensors")
    # Step 1 of the warm-up runs at lr 1e-4, and Adam's first step moves a weight by at most
    # about lr (lr x g / (|g| + eps)): a change near 1e-4 is a full step.
    assert max(float((before[k] - after[k]).abs().max()) for k in before) > 5e-5


@pytest.mark.slow
def test_on_policy_with_one_sample_per_prompt_and_with_the_reward(tmp_path, tiny_cache):
    """rollout.n=1 (the teacher alone needs no group) trains with finite metrics; with
    distill.reward_weight the outcome advantage joins the teacher's signal (n=2)."""
    small = ["model.path=tiny:qwen3_dense", "rollout.max_tokens=12", "train.save_every=1",
             "train.tensorboard=false", "train.steps=1"]
    for name, extra in (("n1", ["rollout.n=1", "train.prompts_per_step=4"]),
                        ("rw", ["rollout.n=2", "train.prompts_per_step=2",
                                "distill.reward_weight=1.0"])):
        out = tmp_path / name
        distill(tiny_cache, "tiny_distill_on_policy.yaml", out, *small, *extra)
        (r,) = metrics(out)
        assert r["groups_sampled"] * (1 if name == "n1" else 2) == 4
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float)), r
        assert r["distill/reverse_kl"] != 0 and r["grad_norm"] > 0


@pytest.mark.slow
def test_sft_across_tokenizers_and_on_policy_refusal(tmp_path, tiny_cache):
    from transformers import AutoModelForCausalLM

    from r1kit.tiny import build_tiny

    student = build_tiny("qwen3_dense", seed=1, cache_dir=tiny_cache)  # another BPE vocabulary
    out = tmp_path / "sft"
    # The random-init teacher solves nothing: threshold -100 keeps every trace, so the student
    # has text to learn from (the verification rule itself is tests/test_distill.py's).
    args = [f"model.path={student}", "data.num_prompts=6", "rollout.n=2",
            "rollout.max_tokens=12", "train.steps=3", "distill.threshold=-100",
            "distill.keep=all", "train.tensorboard=false"]
    distill(tiny_cache, "tiny_distill_sft.yaml", out, *args)
    rows = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {"prompt", "completion", "reward", "teacher", "sampling"} <= set(
        rows[0])
    summary = json.loads((out / "distill.json").read_text())
    assert summary["dataset_reused"] is False and summary["traces_kept"] == 12
    assert summary["teacher_tokens"] > 12 * 12  # prompts and completions of every trace
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-000003" / "model")
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(student).config.vocab_size
    # Asked for more steps with the same sampling settings, it reuses the dataset (no sampling).
    stamp = (out / "traces.jsonl").stat().st_mtime_ns
    distill(tiny_cache, "tiny_distill_sft.yaml", out, *args, "train.steps=4")
    again = json.loads((out / "distill.json").read_text())
    assert again["dataset_reused"] is True and again["steps"] == 4
    assert (out / "traces.jsonl").stat().st_mtime_ns == stamp
    # On-policy with this student: one line, exit 2, before any model is loaded or sampled.
    proc = distill(tiny_cache, "tiny_distill_on_policy.yaml", tmp_path / "op",
                   f"model.path={student}", check=False)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "in the student's vocabulary but" in line and "distill.method=sft" in line
    assert not (tmp_path / "op" / "metrics.jsonl").exists()


def test_distill_settings_fail_before_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "r1kit.cli", "distill",
                           str(REPO / "recipes" / "tiny_distill_on_policy.yaml"),
                           "algo.filter_zero_variance=true", f"log.out_dir={tmp_path}",
                           "distill.teacher=tiny:qwen3_moe"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "algo.filter_zero_variance" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "r1kit.cli", "distill",
                           str(REPO / "recipes" / "tiny_distill_on_policy.yaml"),
                           "distill.loss=forward_kl", "distill.top_k=0",
                           f"log.out_dir={tmp_path}", "distill.teacher=tiny:qwen3_moe"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "distill.top_k: must be >= 1" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "r1kit.cli", "distill",
                           str(REPO / "recipes" / "tiny_distill_sft.yaml"),
                           f"distill.teacher={tmp_path / 'nowhere'}", f"log.out_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "distill.teacher" in proc.stderr
    for overrides, needle in ((["distill.reward_weight=0.5", "rollout.n=1"],
                               "rollout.n: distill.reward_weight=0.5 compares completions"),
                              (["distill.reward_weight=-1"], "distill.reward_weight: must be"),
                              (["distill.method=sft", "rollout.n=0"], "rollout.n")):
        proc = subprocess.run([sys.executable, "-m", "r1kit.cli", "distill",
                               str(REPO / "recipes" / "tiny_distill_on_policy.yaml"), *overrides,
                               f"log.out_dir={tmp_path}", "distill.teacher=tiny:qwen3_moe"],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2 and needle in proc.stderr, (overrides, proc.stderr[-500:])
    assert not list(tmp_path.iterdir())  # nothing was written
    from r1kit.config import config_help

    assert "distill.method (" in config_help() and "distill.threshold (" in config_help()
