"""Host syncs of one update: a fixed few per minibatch, none per micro-batch or per parameter.

On a GPU every read of a device value on the host (``.item()``, ``float()``, ``bool()``,
``.tolist()``), every data-dependent shape (``nonzero``, boolean-mask indexing,
``masked_select``) and every blocking copy waits for the device to drain its queue. This machine
has no GPU, so the update runs on the CPU under a dispatch mode that counts the operations that
would wait there (``SyncCounter``). What it cannot see on a CPU: host-to-device copies (every
tensor is already on the host); the trainer makes those non-blocking from pinned memory
(``grpo.batch.to_device``), and ``make gpu-check`` runs an update under
``torch.cuda.set_sync_debug_mode("warn")`` for the rest.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import REPO
from tests.parallel_worker import fixed_batch

aten = torch.ops.aten

# Operations that make the host wait for the device on CUDA.
_READS = {aten._local_scalar_dense.default}  # .item(), float(), int(), bool()
_SHAPES = {aten.nonzero.default, aten.nonzero_static.default, aten.masked_select.default,
           aten.unique_consecutive.default, aten._unique2.default,
           aten.repeat_interleave.Tensor}


_TORCH = os.path.dirname(torch.__file__)
# Code that is not r1kit's: the model's own forward (transformers' eager MoE loop reads which
# experts were hit, a sync per layer that depends on ``experts_implementation``, not on r1kit),
# its loss helpers, and the adapter library.
_LIBRARIES = tuple(os.path.dirname(importlib.util.find_spec(m).origin)
                   for m in ("transformers", "peft"))


# Frames of a comprehension or generator expression: the function around them is the caller.
_INNER = ("<genexpr>", "<listcomp>", "<dictcomp>", "<setcomp>")


def _caller() -> tuple[str, str]:
    """The file and function of the innermost frame outside torch (the code that asked for the
    operation)."""
    f = sys._getframe(2)
    while f is not None and (f.f_code.co_filename.startswith(_TORCH) or
                             (f.f_code.co_filename, f.f_code.co_name) in _OWN_CODE or
                             f.f_code.co_name in _INNER):
        f = f.f_back
    return ("", "") if f is None else (f.f_code.co_filename, f.f_code.co_name)


class SyncCounter(TorchDispatchMode):
    """Counts, by operation and calling file, the calls that would synchronise with a CUDA
    device: scalar reads, data-dependent shapes (boolean indexing included) and
    ``tolist``/``numpy`` reads. Calls made from the model's library (``_LIBRARIES``) are kept
    apart in ``model``."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.model: Counter[str] = Counter()

    def note(self, what: str) -> None:
        where, function = _caller()
        if where.startswith(_LIBRARIES):
            self.model[what] += 1
        else:
            self.counts[f"{what} at {os.path.relpath(where, REPO)}:{function}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _READS or func in _SHAPES:
            self.note(str(func))
        elif func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if
                   i is not None):
                self.note(f"{func} (boolean mask)")
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# The counter's own frames (torch wraps ``__torch_dispatch__``, so they go by file and name).
_OWN_CODE = {(__file__, "note"), (__file__, "__torch_dispatch__"), (__file__, "read")}


@contextlib.contextmanager
def counting_reads(counter: SyncCounter):
    """The counter, also counting ``tolist``, ``numpy`` and ``cpu``: they copy a device tensor
    to the host without an aten call that a dispatch mode would see on a CPU tensor."""
    saved = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy", "cpu")}

    def wrap(name):
        def read(self, *a, **k):
            counter.note(f"Tensor.{name}")
            return saved[name](self, *a, **k)
        return read

    try:
        for name in saved:
            setattr(torch.Tensor, name, wrap(name))
        with counter:
            yield counter
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def test_counter_sees_reads_shapes_and_masks():
    x = torch.arange(6.0)
    with counting_reads(SyncCounter()) as c:
        float(x.sum())
        bool((x > 2).any())
        x[x > 2].sum()
        x.nonzero()
        x.tolist()
        (x * 2 + 1).exp().sum()  # none of these waits
    ops = Counter()
    for key, n in c.counts.items():
        ops[key.split(" at ")[0]] += n
    assert ops == Counter({"aten._local_scalar_dense.default": 2,
                           "aten.index.Tensor (boolean mask)": 1, "aten.nonzero.default": 1,
                           "Tensor.tolist": 1})
    assert {key.split(" at ")[1] for key in c.counts} == {
        "tests/test_host_syncs.py:test_counter_sees_reads_shapes_and_masks"}


def _trainer(model_path, overrides: list[str]):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.parallel import Parallel
    from grpo.trainer import GRPOTrainer, Parts, ProblemStream
    from grpo.update import Objective
    from r1kit.config import load_config
    from r1kit.train import make_optimizer, recorder_factory

    torch.manual_seed(0)
    cfg = load_config(None, overrides)
    policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32,
                                                  experts_implementation="eager")
    par = Parallel()
    par.wrap(policy)
    # As on CUDA (make_optimizer's default there): the for-each AdamW reads each parameter's
    # step count, a host tensor on CUDA but not one this CPU counter can tell apart.
    opt, sched = make_optimizer(cfg, policy, fused=True)
    objective = Objective.from_config(cfg.algo, cfg.train, 16, cfg.algo.mismatch)
    parts = Parts(cfg=cfg, policy=policy, tokenizer=AutoTokenizer.from_pretrained(model_path),
                  engine=None, scorer=None, optimizer=opt, scheduler=sched,
                  data=ProblemStream([object()], 0), prompt_fn=str, objective=objective,
                  recorder_fn=recorder_factory(policy, cfg.algo.aux_loss_coef > 0),
                  parallel=par)
    return GRPOTrainer(parts), policy


def _grouped_batch(vocab: int):
    """Four prompts of three completions each (so the shared-prompt pass has groups), with a
    reference and a mismatch between the sampler and the trainer."""
    batch = fixed_batch(vocab, rows=12, seed=3)
    for r in range(12):
        batch.prompt_ids[r] = list(batch.prompt_ids[r - r % 3])
    batch.old_logp = batch.sampler_logp + 0.05
    batch.ref_logp = batch.sampler_logp - 0.02
    return batch


def _syncs(model_path, budget: int, extra: list[str]) -> tuple[int, Counter]:
    """The micro-batches of one update of the tiny model and the reads it made, by place."""
    overrides = [f"train.token_budget={budget}", "train.minibatches=2", "train.lr=1e-3",
                 "algo.mismatch=token_truncate", *extra]
    trainer, policy = _trainer(model_path, overrides)
    batch = _grouped_batch(policy.config.vocab_size)
    from grpo.update import micro_batches

    passes = sum(len(list(micro_batches(batch, rows, budget, 0, "cpu")))
                 for rows in [list(range(0, 12, 2)), list(range(1, 12, 2))])
    with counting_reads(SyncCounter()) as c:
        stats = trainer.update(batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
    return passes, c.counts


# KL, the aux loss and the shared-prompt pass: the most code on the update's path. With the
# small budget most micro-batches hold one row of a group, which take the plain pass.
SETTING = ["algo.beta=0.04", "algo.aux_loss_coef=0.001", "train.share_prompts=true"]

# Where an update may read: function -> (reads per minibatch, reads per update, why).
ALLOWED = {
    "grpo/trainer.py:update": (1, 0, "the loss and the gradient norm, read together"),
    "grpo/update.py:check_params": (1, 0, "one finiteness flag per device for every parameter"),
    "grpo/losses.py:of": (1, 0, "Norm.of: the minibatch's token count, from the host mask"),
    "grpo/update.py:resolved": (0, 1, "the update's statistics, read once"),
    "grpo/update.py:minibatch_order": (0, 1, "the row shuffle, a host generator"),
    "grpo/routing.py:of": (0, 2, "router counts: one copy, then its token count on the host"),
    "grpo/routing.py:stats": (0, 4 * 2, "router statistics of the copied counts, per layer"),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tiny_qwen", "tiny_deepseek"])
def test_host_syncs_do_not_grow_with_micro_batches(family, request):
    """Two minibatches cut into many micro-batches (a small token budget) and into few (a large
    one): the same reads, all of them in ``ALLOWED`` and within its counts: a fixed few per
    minibatch and per update, none per micro-batch and none per parameter."""
    path = request.getfixturevalue(family)
    passes_many, counts_many = _syncs(path, 24, SETTING)
    passes_few, counts_few = _syncs(path, 4096, SETTING)
    assert passes_many >= 3 * passes_few  # the two runs really differ in micro-batches
    assert counts_many == counts_few
    by_place = Counter()
    for key, n in counts_few.items():
        by_place[key.split(" at ")[1]] += n
    assert set(by_place) <= set(ALLOWED), by_place
    for place, n in by_place.items():
        per_minibatch, per_update, _ = ALLOWED[place]
        assert n <= 2 * per_minibatch + per_update, (place, n)
