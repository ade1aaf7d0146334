"""``r1kit train RECIPE --dry-run`` for every real-model recipe, and the architecture table's
published sizes (parameters counted on the meta device from ``r1kit.archs``' configs)."""

from __future__ import annotations

import pytest

from r1kit import archs
from tests.conftest import REPO
from tests.test_cli import r1kit

# The real-model recipes the dry run covers (the code recipe has its own test below). `slow` comes
# from their measured times (tests/durations.json, tests/conftest.py) like every other test's.
REAL_RECIPES = [
    "r1_zero_qwen3_30b_a3b.yaml",           # routing replay: forced to the HF engine
    "r1_zero_qwen3_30b_a3b_lora.yaml",
    "r1_zero_deepseek_v2_lite.yaml",        # routing replay: forced to the HF engine
    "r1_zero_deepseek_v4_flash_lora.yaml",  # HF engine (vLLM cannot sample V4 here)
    "simplerl_qwen2.5_math_7b.yaml",        # colocated vLLM
    "dapo_qwen2.5_32b.yaml",                # vLLM server child
]
VLLM = {"simplerl_qwen2.5_math_7b.yaml", "dapo_qwen2.5_32b.yaml"}


def _param(name: str):
    return pytest.param(name, id=name, marks=[pytest.mark.vllm] if name in VLLM else [])


@pytest.mark.parametrize("name", [_param(n) for n in REAL_RECIPES])
def test_dry_run_trains_two_steps(name, tiny_cache, tmp_path):
    r = r1kit("train", f"recipes/{name}", f"log.out_dir={tmp_path}", "--dry-run",
              "--no-progress", cache=tiny_cache, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 steps, 2 updates" in r.stdout, r.stdout
    assert "train.steps: " in r.stdout and "-> 2" in r.stdout  # the reductions are printed
    assert (tmp_path / "metrics.jsonl").is_file()


def test_flagship_recipe_dry_run_under_fsdp2_on_two_ranks(tiny_cache, tmp_path):
    """The 30B MoE recipe as its real run would launch it: ``torchrun --nproc_per_node 2`` (gloo
    here), ``train.parallel=fsdp2`` with activation checkpointing, routing replay, the KL
    reference sharded, its reduced architecture; rank 0 prints and checks, rank 1 trains."""
    import json
    import os
    import subprocess
    import sys

    recipe = "recipes/r1_zero_qwen3_30b_a3b.yaml"
    from r1kit.config import load_config

    cfg = load_config(str(REPO / recipe), ["data.source=arithmetic"])  # its data is not here
    assert cfg.train.parallel == "fsdp2" and cfg.train.activation_checkpointing
    assert cfg.algo.routing_replay and cfg.algo.beta > 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "R1KIT_CACHE": str(tiny_cache)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "-m", "r1kit.cli", "train", recipe,
                        f"log.out_dir={tmp_path}", "--dry-run", "--no-progress"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("2 steps, 2 updates") == 1, r.stdout  # printed by rank 0 only
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    assert all("sync/peak_extra_mib" in row and "kl" in row for row in rows)
    assert (tmp_path / "train.rank1.log").is_file()
    assert (tmp_path / "checkpoints" / "step-000002" / "shards").is_dir()


def test_code_recipe_dry_run_runs_the_code_reward_in_the_sandbox(tiny_cache, tmp_path):
    """The code recipe's data file is not here: the dry run stands in stdin/stdout problems with
    a `tests` column (data.columns), and the real code reward scores every sample."""
    import json

    r = r1kit("train", "recipes/code_rl_qwen2.5_coder_7b.yaml", f"log.out_dir={tmp_path}",
              "--dry-run", "--no-progress", cache=tiny_cache, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 steps, 2 updates" in r.stdout and "synthetic problems" in r.stdout
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("reward/code" in row and row["reward_failures/code"] == 0 for row in rows)


def test_a_reward_column_the_data_lacks_is_a_config_error(tmp_path):
    from r1kit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"data.columns: reward 'code' needs the column\(s\) tests"):
        load_config(None, ["reward.funcs=[code]", "reward.weights=[1.0]"])
    data = tmp_path / "code.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(ConfigError, match="has no field 'tests'"):
        load_config(None, ["reward.funcs=[code]", "reward.weights=[1.0]",
                           f"data.source={data}", "data.columns=[tests]"])


def test_every_real_recipe_is_covered():
    real = {p.name for p in (REPO / "recipes").glob("*.yaml") if not p.name.startswith("tiny_")}
    assert real == set(REAL_RECIPES) | {"code_rl_qwen2.5_coder_7b.yaml"}
    for name in real:
        text = (REPO / "recipes" / name).read_text()
        path = next(ln.split(":", 1)[1].split("#")[0].strip() for ln in text.splitlines()
                    if ln.strip().startswith("path:"))
        assert path in archs.ARCHS, f"{name}: {path} has no architecture in r1kit.archs"


# hub id -> (total, active) parameters as each report states them; DeepSeek-V2's "activated"
# count leaves out the input embedding (a lookup), Qwen3's includes it.
PUBLISHED = {
    "Qwen/Qwen3-30B-A3B-Base": (30.5e9, 3.3e9),
    "deepseek-ai/DeepSeek-V2-Lite": (15.7e9, 2.4e9),
    "deepseek-ai/DeepSeek-V4-Flash-Base": (284e9, 13e9),
    "Qwen/Qwen2.5-Math-7B": (7.61e9, 7.61e9),
    "Qwen/Qwen2.5-Coder-7B-Instruct": (7.61e9, 7.61e9),
    "Qwen/Qwen2.5-32B": (32.5e9, 32.5e9),
}


@pytest.mark.parametrize("hub_id", PUBLISHED)
def test_full_configs_have_the_published_parameter_counts(hub_id):
    config = archs.full_config(hub_id)
    total, active = archs.parameter_counts(config)
    if hub_id.startswith("deepseek-ai/"):
        active -= config.vocab_size * config.hidden_size  # the input embedding, as reported
    want_total, want_active = PUBLISHED[hub_id]
    assert abs(total / want_total - 1) < 0.03, (hub_id, total)
    assert abs(active / want_active - 1) < 0.05, (hub_id, active)


@pytest.mark.parametrize("hub_id", archs.ARCHS)
def test_reduced_config_keeps_the_architecture(hub_id):
    full, small = archs.full_config(hub_id), archs.reduced_config(hub_id, vocab_size=512)
    assert small.model_type == full.model_type and small.vocab_size == 512
    for key in ("num_experts", "n_routed_experts", "n_shared_experts", "kv_lora_rank",
                "qk_rope_head_dim", "first_k_dense_replace", "q_lora_rank", "norm_topk_prob",
                "tie_word_embeddings"):
        assert bool(getattr(small, key, None)) == bool(getattr(full, key, None)), key
    total, _ = archs.parameter_counts(small)
    assert total < 2e6


def test_dry_run_removes_its_temporary_run_folder_unless_kept(tiny_cache, tmp_path):
    """Without log.out_dir a dry run writes into a folder of its own in the temp directory:
    removed once the dry run passes, kept with --keep."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "R1KIT_CACHE": str(tiny_cache), "TMPDIR": str(tmp_path)}

    def run(*extra: str) -> list:
        r = subprocess.run([sys.executable, "-m", "r1kit", "train",
                            "recipes/r1_zero_qwen3_30b_a3b.yaml", "--dry-run", "--no-progress",
                            *extra], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return sorted(tmp_path.glob("r1kit-dryrun-*"))

    assert run() == []
    kept = run("--keep")
    assert len(kept) == 1 and (kept[0] / "metrics.jsonl").is_file()
