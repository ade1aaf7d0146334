"""The colocated vLLM engine sleeping through the update (``rollout.sleep``).

vLLM's sleep mode needs a GPU (its CPU backend rejects ``enable_sleep_mode``), so what runs here
is everything around it: which settings sleep and which are refused before any work, the order
of the trainer's calls around a real step (a real HF engine that records them), and
``VLLMEngine``'s bookkeeping of partial wakes against a recording stand-in for ``vllm.LLM``
(the one part that cannot run on this machine).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from rollouts.settings import RolloutConfig
from tests.conftest import REPO


@pytest.mark.parametrize("engine,sleep,gpu,async_steps,expected", [
    ("vllm", "auto", True, 0, True),
    ("vllm", "auto", False, 0, False),  # CPU: no sleep mode
    ("vllm", "auto", True, 1, False),  # the engine samples during the update
    ("vllm", "never", True, 0, False),
    ("hf", "auto", True, 0, False),  # the HF engine's weights are the trainer's
    ("vllm_server", "auto", True, 0, False),  # its own GPUs: nothing to give back
    ("vllm", "always", True, 0, True),
])
def test_which_settings_sleep(engine, sleep, gpu, async_steps, expected):
    assert RolloutConfig(engine=engine, sleep=sleep).sleeps(gpu, async_steps) is expected


@pytest.mark.parametrize("engine,gpu,async_steps,says", [
    ("vllm", False, 0, "no sleep mode on CPU"),
    ("vllm", True, 2, "train.async_steps=2"),
    ("hf", True, 0, "rollout.engine=hf has none"),
])
def test_sleep_on_where_it_cannot_work_is_refused(engine, gpu, async_steps, says):
    with pytest.raises(ValueError, match=says):
        RolloutConfig(engine=engine, sleep="always").sleeps(gpu, async_steps)


def test_train_refuses_sleep_on_cpu_in_one_line(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "r1kit.cli", "train", str(REPO / "tests/data/tiny_grpo_random.yaml"),
         f"log.out_dir={out}", "rollout.engine=vllm", "rollout.sleep=always"],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no sleep mode on CPU" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (out / "metrics.jsonl").exists()


class _Recording:
    """The trainer's real HF engine, its calls noted in order."""

    def __init__(self, engine, calls: list):
        self._engine, self.calls = engine, calls

    def generate(self, *a, **k):
        self.calls.append("generate")
        return self._engine.generate(*a, **k)

    def sleep(self, level: int = 1):
        self.calls.append(f"sleep({level})")

    def wake(self, tags=None):
        self.calls.append(f"wake({','.join(tags) if tags else 'all'})")

    def update_weights(self, model):
        self.calls.append("update_weights")
        return self._engine.update_weights(model)

    def __getattr__(self, name):
        return getattr(self._engine, name)


@pytest.mark.slow
def test_trainer_sleeps_after_the_rollout_and_wakes_weights_before_the_kv_cache(tmp_path):
    """One real step with ``sleeps`` on (as ``rollout.sleep`` decides on a GPU): the engine is put
    to sleep at level 2 once the rollout is sampled, before the reference pass and the update,
    and woken in two parts around the weight sync."""
    from r1kit.config import load_config
    from r1kit.train import build_trainer

    cfg = load_config(REPO / "tests/data/tiny_grpo_random.yaml", [
        f"log.out_dir={tmp_path}", "reward.funcs=[rewards.toy:digit_share]",
        "reward.weights=[1.0]", "rollout.max_tokens=8", "algo.filter_zero_variance=false",
        "train.steps=1", "train.sample_every=0", "train.tensorboard=false", "algo.beta=0.01"])
    trainer = build_trainer(cfg, show_progress=False)
    calls: list[str] = []
    try:
        assert trainer.sleeps is False  # on this CPU, with the HF engine
        trainer.p.engine = _Recording(trainer.p.engine, calls)
        trainer.sleeps = True
        prepare = trainer.prepare
        trainer.prepare = lambda ro: (calls.append("prepare"), prepare(ro))[1]
        trainer.run_step()
    finally:
        trainer.p.close()
    first = calls.index("sleep(2)")
    assert set(calls[:first]) == {"generate"}
    assert calls[first:] == ["sleep(2)", "prepare", "wake(weights)", "update_weights",
                             "wake(kv_cache)"]


class _LLM:
    """Stands in for ``vllm.LLM``, whose sleep mode needs a GPU: notes the calls."""

    def __init__(self):
        self.calls: list[tuple] = []

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))
        return True

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def collective_rpc(self, method, args=()):
        self.calls.append(("collective_rpc", method))


def _engine(sleep_mode: bool):
    from rollouts.vllm_engine import VLLMEngine

    engine = object.__new__(VLLMEngine)  # no engine start: its sleep mode needs a GPU
    engine.llm, engine.enable_sleep_mode, engine._asleep = _LLM(), sleep_mode, set()
    engine.last_sync_seconds = None
    return engine


def test_vllm_engine_wakes_in_parts_and_refuses_a_sync_into_sleeping_weights():
    engine = _engine(sleep_mode=True)
    engine.sleep(level=2)
    with pytest.raises(RuntimeError, match="weights are asleep"):
        engine.update_weights(object())
    engine.wake(["weights"])
    assert engine._asleep == {"kv_cache"}
    engine.wake(["kv_cache"])
    engine.wake()  # awake already: nothing more
    assert engine.llm.calls == [("sleep", 2), ("wake_up", ["weights"]), ("wake_up", ["kv_cache"]),
                                ("reset_prefix_cache",)]


def test_vllm_engine_without_sleep_mode_keeps_everything():
    engine = _engine(sleep_mode=False)
    engine.sleep(level=2)
    engine.wake(["weights"])
    assert engine.llm.calls == [] and engine._asleep == set()
