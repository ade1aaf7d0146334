"""``make gpu-check``'s script runs end to end on the CPU (``--device cpu --small``: gloo, the
27M-parameter MoE, memory and MFU figures left out), so it is ready when a GPU machine is: the
FSDP2 shards and AdamW state stay on the training device, a DCP checkpoint written and loaded
back gives the same weights and AdamW moments, the GRPO step built by ``r1kit.train`` samples
and updates with finite figures, the chunked log-probs equal the full-logits ones at every chunk
of the sweep, the deterministic process repeats its generate and update bit for bit, and TRL's
step runs where TRL is installed. The GPU figures themselves need a GPU."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import pytest

from bench.gpu_check import SECTIONS, ok, rows_of, summary
from tests.conftest import REPO


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--small",
                           "--rows", "2", "--tokens", "256", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), out.with_suffix(".md").read_text(), proc.stdout


@pytest.mark.slow  # the whole CPU run, about a minute on 2 cores
def test_fsdp2_checks_run_on_cpu(cpu_run):
    res, _, _ = cpu_run
    f = res["fsdp2"]
    assert f["placement"]["off_device"] == 0 and f["placement"]["tensors"] > 100
    assert f["checkpoint"] == {"weights_equal": True, "moments_equal": True, "on_device": True}
    assert [s["step"] for s in f["update"]["steps"]] == [1, 2]
    assert f["update"]["planned_bytes"] > 0 and f["sync"]["tensors"] > 0


@pytest.mark.slow  # the whole CPU run, about a minute on 2 cores
def test_grpo_step_samples_and_updates_with_finite_figures(cpu_run):
    g = cpu_run[0]["grpo_step"]
    sizes = cpu_run[0]["sizes"]
    assert g["rows"] == sizes["prompts"] * sizes["n"] == g["generate"]["completions"]
    assert 0 < g["generate"]["new_tokens"] <= g["rows"] * sizes["max_tokens"]
    assert g["generate"]["tokens_per_s"] > 0 and g["update_tokens"] > g["generate"]["new_tokens"]
    assert g["finite"] and g["update_warm"]["grad_norm"] > 0
    assert 0 < g["active_matmul_parameters"] < g["parameters"]
    # no CUDA counters and no bf16 peak on the CPU: n/a, not a made-up figure
    assert g["mfu"] is None and g["update_warm"]["peak_bytes"] is None
    assert g["generate"]["peak_bytes"] is None and g["peak_bf16_flops"] == "unknown"


@pytest.mark.slow  # the whole CPU run, about a minute on 2 cores
def test_chunk_sweep_matches_the_full_logits(cpu_run):
    lp = cpu_run[0]["logprob_memory"]
    assert [r["chunk"] for r in lp["chunked"]] == cpu_run[0]["sizes"]["chunks"]
    assert all(math.isfinite(r["seconds"]) and r["seconds"] > 0 for r in lp["chunked"])
    assert lp["finite"] and lp["max_abs_logp_diff"] < 1e-4
    assert lp["recommended_chunk"] in cpu_run[0]["sizes"]["chunks"]
    assert lp["full_logits"]["peak_extra_bytes"] is None  # no CUDA counter on the CPU


@pytest.mark.slow  # the whole CPU run, about a minute on 2 cores
def test_sync_debug_and_deterministic_sections(cpu_run):
    res = cpu_run[0]
    for call in ("update", "generate"):
        assert res["sync_debug"][call]["syncs"] == 0  # no CUDA: nothing to synchronize with
        assert res["sync_debug"][call]["mode"] == "n/a (cpu)"
    d = res["deterministic"]
    assert d["deterministic_algorithms"] and d["cublas_workspace_config"]
    assert d["tokens_equal"] and d["loss_equal"] and d["grad_norm_equal"] and d["weights_equal"]
    assert all(math.isfinite(x) for x in d["loss"] + d["grad_norm"])


@pytest.mark.slow  # the whole CPU run, about a minute on 2 cores
def test_trl_step_runs_or_says_why_not(cpu_run):
    t = cpu_run[0]["trl_step"]
    if importlib.util.find_spec("trl") is None or importlib.util.find_spec("datasets") is None:
        assert t["skipped"].endswith(" not installed")
    else:
        assert t["seconds"] > 0 and math.isfinite(t["loss"])


@pytest.mark.slow  # the whole CPU run, about a minute on 2 cores
def test_one_markdown_table_printed_and_written(cpu_run):
    res, md, stdout = cpu_run
    assert ok(res) and "ERROR" not in md
    table = md.split("\n\n", 1)[1].strip()
    assert table in stdout and table.startswith("| section | what | measured | seconds |")
    assert {line.split(" | ")[0][2:] for line in table.splitlines()[2:]} == {"fsdp2", *SECTIONS}


def test_a_failed_section_is_a_row_and_fails_the_check():
    res = {"fsdp2": {"error": "the worker failed (1):\n[rank0]: RuntimeError: boom\n====="},
           "grpo_step": {"error": "ValueError: bad\nmore"}, "trl_step": {"skipped": "no trl"}}
    rows = rows_of(res)
    assert ["fsdp2", "ERROR", "RuntimeError: boom", ""] in rows
    assert ["grpo_step", "ERROR", "ValueError: bad", ""] in rows and ["trl_step", "skipped", "no trl", ""] in rows
    assert ["deterministic", "ERROR",
            "not run (the sections' process stopped before it)", ""] in rows
    assert not ok(res)
    assert summary("x\n[rank0]: torch.OutOfMemoryError: CUDA out of memory\ny") == (
        "torch.OutOfMemoryError: CUDA out of memory")


def test_gpu_check_without_a_gpu_says_so_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check runs instead of refusing")
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr


def test_cpu_tests_on_a_device_are_counted_and_a_failure_named(tmp_path):
    """The ``cpu_tests`` part (run on a GPU with ``R1KIT_TEST_DEVICE=cuda``), here with the CPU
    as the device: a passing and a failing test (an assertion on the default device, which
    ``R1KIT_TEST_DEVICE`` sets) are counted, the failure named, and its row fails the check."""
    from bench.gpu_check import cpu_test_rows, cpu_tests

    probe = tmp_path / "test_probe.py"
    probe.write_text("import torch\n\ndef test_on_the_device():\n"
                     "    assert torch.zeros(1).device.type == 'cpu'\n\n"
                     "def test_elsewhere():\n    assert torch.zeros(1).device.type == 'meta'\n")
    res = cpu_tests(tmp_path / "log", time.perf_counter() + 120, "cpu", (str(probe),))
    assert res["passed"] == 1 and [t.split("::")[1] for t in res["failed"]] == ["test_elsewhere"]
    row = cpu_test_rows({"cpu_tests": res})[0]
    assert row[2].startswith("1 passed, 1 failed (")
    base = {"fsdp2": {"placement": {"off_device": 0}, "checkpoint": {"equal": True}}}
    base.update({name: {"ok": 1} for name in SECTIONS}, deterministic={"skipped": "cpu"})
    assert ok(base) and not ok({**base, "cpu_tests": res})
