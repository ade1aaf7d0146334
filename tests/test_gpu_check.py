"""``make gpu-check``'s script runs end to end on the CPU (``--device cpu --small``: gloo, the
27M-parameter MoE, memory figures left out), so it is ready when a GPU machine is: the FSDP2
shards and AdamW state stay on the training device, and a DCP checkpoint written and loaded back
gives the same weights and AdamW moments. The GPU figures themselves need a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_gpu_check_script_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--small",
                           "--tokens", "512", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["placement"]["off_device"] == 0 and res["placement"]["tensors"] > 100
    assert res["checkpoint"] == {"weights_equal": True, "moments_equal": True, "on_device": True}
    assert [s["step"] for s in res["update"]["steps"]] == [1, 2]
    assert res["update"]["planned_bytes"] > 0 and res["sync"]["tensors"] > 0
    assert "DCP round trip" in proc.stdout


def test_gpu_check_without_a_gpu_says_so_in_one_line():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check runs instead of refusing")
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr
