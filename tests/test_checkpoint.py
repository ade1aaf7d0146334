"""``grpo.checkpoint`` loads a trainer state to the CPU whatever device wrote it: a GPU run's
optimiser state would otherwise land on the GPU it was saved from (every rank on GPU 0), and
on a machine without that GPU the load fails. The optimiser's ``load_state_dict`` then moves
each state to its parameter's device."""

from __future__ import annotations

import pickle

import torch

from grpo.checkpoint import load_trainer_state, rng_state


def save_as_if_on(device: str, obj, path) -> None:
    """``torch.save`` with every storage tagged ``device`` (what a CUDA run writes)."""
    from torch import serialization

    tag = serialization.location_tag
    serialization.location_tag = lambda storage: device
    try:
        torch.save(obj, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    finally:
        serialization.location_tag = tag


def test_a_trainer_state_written_on_a_gpu_loads_to_the_cpu(tmp_path):
    ckpt = tmp_path / "step-000001"
    ckpt.mkdir()
    moment = torch.arange(6.0).reshape(2, 3)
    save_as_if_on("cuda:0", {"optimizer": {"state": {0: {"exp_avg": moment}}},
                             "rng": rng_state()}, ckpt / "trainer.pt")
    if not torch.cuda.is_available():  # the load without a location fails here: it is tagged
        try:
            torch.load(ckpt / "trainer.pt", weights_only=False)
        except RuntimeError as e:
            assert "CUDA" in str(e)
        else:
            raise AssertionError("a cuda-tagged checkpoint loaded without map_location")
    state = load_trainer_state(ckpt)
    got = state["optimizer"]["state"][0]["exp_avg"]
    assert got.device.type == "cpu" and torch.equal(got, moment)
