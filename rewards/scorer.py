"""Parallel reward scoring in worker processes, with per-sample time limits.

``Scorer`` runs weighted rewards (``rewards.registry.WeightedReward``) over a batch
of completions in a pool of worker processes that is created once and reused across
batches. What it guarantees:

- A reward that raises, returns the wrong number of scores, or returns a non-finite score,
  scores 0 for the affected samples and counts as an *error*; one that runs past its time
  limit scores 0 and counts as a *timeout*; one whose worker dies (``os._exit``, a signal,
  the OOM killer) scores 0 and counts as a *crash*. Each is counted per reward label in the
  batch's ``ScoreResult`` and in ``failures``, and logged: one warning per reward and batch
  (counts and the first failure; each sample's at debug level). None of them raises out of
  ``score``.
- A timed-out worker is killed and replaced, and a dead one replaced (pebble does both).
  Processes a gone worker started are killed too if they stayed in its process group:
  each worker makes itself a group leader, and the scorer kills the groups of gone
  workers after a batch with failures, and every group on ``close``. After ``close`` no worker process, nor any child left in a worker's group, is
  left running.
- If the pool itself breaks, the batch's unscored samples count as errors and a new pool
  is started; if no worker ever finished starting (a main module that is not import-safe
  under ``spawn``), ``score`` raises ``RuntimeError`` instead of scoring 0 forever.

How work is cut: one task per (reward, chunk of ``chunk_size`` samples), with a deadline
of ``timeout_s`` per sample in the chunk. If the reward raises on the chunk, the worker
re-scores that chunk one sample at a time at once; if the chunk times out or its worker
dies, each of its samples is sent again as a task of its own with a ``timeout_s`` deadline.
One hung sample therefore holds up a batch for at most about
``(chunk_size + 1) * timeout_s``; smaller chunks bound that tighter but cost more
inter-process traffic for fast rewards.

Why pebble: its ``ProcessPool`` has per-task timeouts that kill the worker running the task
and start a fresh one, reports a dead worker as ``ProcessExpired`` instead of breaking the
pool (``concurrent.futures`` marks the whole pool broken), and its workers are not
daemonic, so a reward may start its own helper processes (the math grader and the sandbox
do). Workers are started with ``spawn`` by default: forking a trainer that holds CUDA
contexts and threads is unsafe, and a fresh interpreter keeps the memory limit meaningful.

What it does not do: sandbox rewards (it runs trusted reward code; untrusted code goes
through ``rewards.sandbox``), or check that a reward is per-sample. Rewards must score
each sample from that sample and its row alone, since batches are split into chunks.
Functions must be picklable by reference (module-level functions or ``functools.partial``
of them) because workers are separate interpreters; with ``spawn`` they re-import the main
module, so a script that creates a ``Scorer`` needs the usual ``if __name__ == "__main__"``
guard.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import importlib
import logging
import multiprocessing
import os
import pickle
import resource
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import psutil
from pebble import ProcessExpired, ProcessPool
from tqdm import tqdm

from rewards.registry import RewardSpec, WeightedReward, build, check_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScorerConfig:
    """Settings of a ``Scorer``."""

    workers: int = 2
    """Worker processes; each runs one task at a time."""
    timeout_s: float = 10.0
    """Time limit per sample, in seconds; a chunk gets this times its size."""
    chunk_size: int = 8
    """Samples per task. 1 isolates every sample; larger amortises inter-process cost."""
    memory_limit_mb: int | None = 4096
    """Soft address-space limit (RLIMIT_AS) of each worker; allocations past it raise
    MemoryError in the reward. Children inherit it and may change it. None: no limit."""
    start_method: str = "spawn"
    """multiprocessing start method of the workers."""
    max_tasks_per_worker: int = 0
    """Replace a worker after this many tasks (bounds caches that grow); 0: never."""
    preload: tuple[str, ...] = ("rewards.registry:warm_up",)
    """What each worker does when it starts, so the first batch does not pay for it: import
    a module (``pkg.mod``) or import it and call a function without arguments (``pkg.mod:fn``;
    the default grades one pair, which starts the math grader's helper)."""


@dataclass
class FailureCounts:
    """Samples that scored 0 because the reward failed, by kind."""

    errors: int = 0
    timeouts: int = 0
    crashes: int = 0

    @property
    def total(self) -> int:
        return self.errors + self.timeouts + self.crashes


class RewardFailure(RuntimeError):
    """A reward failed on every sample of a batch: it is broken (a wrong import path, a crash on
    every input), not the samples. Raised by the jobs that check ``failed_everywhere``."""


@dataclass(frozen=True)
class ScoreResult:
    """Scores of one batch of N completions."""

    total: list[float]
    """(N,) weighted sum over rewards."""
    per_reward: dict[str, list[float]]
    """label -> (N,) unweighted scores; 0.0 where the reward failed."""
    failures: dict[str, FailureCounts]
    """label -> failures in this batch."""
    failed: dict[str, list[int]]
    """label -> indices of the samples where that reward failed."""
    seconds: float
    """Wall-clock time of ``score``."""

    def failed_everywhere(self) -> list[str]:
        """Labels of rewards that failed on every sample of the batch: a broken reward (a wrong
        import path, a crash on every input), not a hard sample; callers stop the run.

        >>> ScoreResult([0.0], {"a": [0.0]}, {}, {"a": [0]}, 0.0).failed_everywhere()
        ['a']
        """
        n = len(self.total)
        return [label for label, idx in self.failed.items() if n and len(set(idx)) == n]

    def failure_counts(self) -> dict[str, int]:
        """label -> samples on which that reward failed (errors, timeouts, crashes)."""
        return {label: c.total for label, c in self.failures.items()}


def _init_worker(memory_limit_mb: int | None, preload: Sequence[str], pids,
                 rewards: bytes) -> None:
    """A worker's start: its own process group, the memory limit, the preload, then the
    rewards unpickled once (``rewards``: their pickle), which imports the modules they live
    in, so the first batch does not pay for a reward's import (a user's module can take tens
    of milliseconds, ten times a later batch's scoring)."""
    os.setpgrp()  # own process group, so children left behind by a killed worker can be found
    if memory_limit_mb is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = memory_limit_mb * 2**20
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    for entry in preload:
        module_name, _, fn_name = entry.partition(":")
        try:
            module = importlib.import_module(module_name)
            if fn_name:
                getattr(module, fn_name)()
        except Exception:  # noqa: BLE001, S110 - the reward that needs it reports the error
            pass
    try:
        pickle.loads(rewards)
    except Exception:  # noqa: BLE001, S110 - the first task that needs it reports the error
        pass
    pids.put(os.getpid())


def _ping() -> int:
    return os.getpid()


def _slice(columns: dict[str, Sequence], start: int, stop: int) -> dict[str, list]:
    return {k: list(v[start:stop]) for k, v in columns.items()}


def _run_chunk(
    reward: WeightedReward, completions: list[str], columns: dict[str, list]
) -> list[float | str]:
    """In a worker: scores of the chunk, with an error message in place of a failed sample."""
    n = len(completions)
    try:
        return list(check_scores(reward.label, reward.fn(completions, **columns), n))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure is the reward's
        if n == 1:
            return [f"{type(exc).__name__}: {exc}"]
    out: list[float | str] = []
    for i in range(n):
        try:
            one = reward.fn(completions[i : i + 1], **_slice(columns, i, i + 1))
            out.append(check_scores(reward.label, one, 1)[0])
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            out.append(f"{type(exc).__name__}: {exc}")
    return out


@dataclass
class _Batch:
    """Book-keeping of one ``score`` call."""

    scores: dict[str, list[float]]
    failures: dict[str, FailureCounts]
    failed: dict[str, list[int]] = field(default_factory=dict)
    first: dict[str, tuple[int, str]] = field(default_factory=dict)
    """label -> the lowest failing sample and its message, for the batch's summary line."""

    def fail(self, label: str, index: int, kind: str, detail: str) -> None:
        counts = self.failures[label]
        setattr(counts, kind, getattr(counts, kind) + 1)
        self.failed.setdefault(label, []).append(index)
        word = {"errors": "error", "timeouts": "timeout", "crashes": "crash"}[kind]
        if label not in self.first or index < self.first[label][0]:
            self.first[label] = (index, f"sample {index} ({word}): {detail}")
        log.debug("reward %r failed on sample %d (%s): %s", label, index, word, detail)

    def summarise(self, n: int) -> None:
        """One warning per reward that failed in this batch, not one per sample."""
        for label, counts in self.failures.items():
            if counts.total:
                log.warning("reward %r failed on %d of %d samples (%d errors, %d timeouts, "
                            "%d crashes); the first: %s", label, counts.total, n, counts.errors,
                            counts.timeouts, counts.crashes, self.first[label][1])


class Scorer:
    """Scores batches with rewards in a reusable process pool; see the module docstring."""

    def __init__(
        self,
        rewards: Sequence[WeightedReward | RewardSpec],
        config: ScorerConfig | None = None,
        **settings: Any,
    ):
        """``rewards``: resolved rewards, or specs to ``build``; ``settings`` override
        fields of ``config`` (``Scorer(specs, workers=4, timeout_s=5)``)."""
        specs = [r for r in rewards if isinstance(r, RewardSpec)]
        built = iter(build(specs))
        self.rewards = [next(built) if isinstance(r, RewardSpec) else r for r in rewards]
        self.config = dataclasses.replace(config or ScorerConfig(), **settings)
        if self.config.workers < 1 or self.config.chunk_size < 1 or self.config.timeout_s <= 0:
            raise ValueError(f"workers, chunk_size and timeout_s must be positive: {self.config}")
        for r in self.rewards:
            try:
                pickle.dumps(r.fn)
            except Exception as exc:  # pickle raises many kinds
                raise ValueError(
                    f"reward {r.label!r} cannot be sent to worker processes ({exc}); "
                    "use a module-level function or a functools.partial of one"
                ) from exc
        self._rewards_pickle = pickle.dumps([r.fn for r in self.rewards])  # workers load it
        self.failures = {r.label: FailureCounts() for r in self.rewards}
        self._ctx = multiprocessing.get_context(self.config.start_method)
        self._pids = self._ctx.SimpleQueue()
        self._groups: set[int] = set()
        self._workers_seen = 0
        self._pool: ProcessPool | None = None
        self._start_pool()

    def _start_pool(self) -> None:
        cfg = self.config
        self._pool = ProcessPool(
            max_workers=cfg.workers,
            max_tasks=cfg.max_tasks_per_worker,
            initializer=_init_worker,
            initargs=(cfg.memory_limit_mb, cfg.preload, self._pids, self._rewards_pickle),
            context=self._ctx,
        )
        self._pool.schedule(_ping)  # starts the workers now, while the caller does other work

    def warmup(self, timeout_s: float = 120.0) -> bool:
        """Wait until every worker is up and has run its preload; False if that timed out.

        Also useful after a failed batch: killed workers are replaced in the background.
        """
        if self._pool is None:
            raise RuntimeError("Scorer.warmup called after close()")
        deadline = time.monotonic() + timeout_s
        while len(self.worker_pids()) < self.config.workers:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        # A few round trips through the pool: a worker's first task and the pool's first
        # results pay one-off costs (measured: the first batch of a trivial reward 2-3x a later
        # one without them, within 1.5x with them).
        pings = [self._pool.schedule(_ping) for _ in range(2 * self.config.workers)]
        try:
            for p in pings:
                p.result(timeout=max(deadline - time.monotonic(), 0.001))
        except (cf.TimeoutError, ProcessExpired, RuntimeError):
            return False
        return True

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for monitoring and tests)."""
        self._collect_groups()
        return sorted(p for p in self._groups if _alive(p))

    def score(self, completions: Sequence[str], **columns: Sequence) -> ScoreResult:
        """Score ``completions`` with every reward; ``columns`` are aligned dataset columns."""
        if self._pool is None:
            raise RuntimeError("Scorer.score called after close()")
        start = time.perf_counter()
        completions = list(completions)
        n = len(completions)
        for name, col in columns.items():
            if len(col) != n:
                raise ValueError(f"column {name!r} has {len(col)} rows for {n} completions")
        batch = _Batch(
            scores={r.label: [0.0] * n for r in self.rewards},
            failures={r.label: FailureCounts() for r in self.rewards},
        )
        spans = [
            (s, min(s + self.config.chunk_size, n)) for s in range(0, n, self.config.chunk_size)
        ]
        pending = {
            self._submit(r, completions, columns, s, e): (r, s, e)
            for r in self.rewards
            for s, e in spans
        }
        self._drain(pending, batch, completions, columns)
        if any(c.total for c in batch.failures.values()):
            self._kill_orphan_groups()
            batch.summarise(n)
        for label, counts in batch.failures.items():
            for kind in ("errors", "timeouts", "crashes"):
                cum = self.failures[label]
                setattr(cum, kind, getattr(cum, kind) + getattr(counts, kind))
        total = [sum(r.weight * batch.scores[r.label][i] for r in self.rewards) for i in range(n)]
        return ScoreResult(
            total=total,
            per_reward=batch.scores,
            failures=batch.failures,
            failed=batch.failed,
            seconds=time.perf_counter() - start,
        )

    def _submit(self, reward, completions, columns, s: int, e: int) -> cf.Future:
        assert self._pool is not None
        return self._pool.schedule(
            _run_chunk,
            args=(reward, completions[s:e], _slice(columns, s, e)),
            timeout=self.config.timeout_s * (e - s),
        )

    def _drain(self, pending: dict, batch: _Batch, completions, columns) -> None:
        """Collect results, re-sending failed chunks sample by sample, until none is left."""
        guard_s = self.config.timeout_s * self.config.chunk_size + 30.0
        while pending:
            done, _ = cf.wait(pending, timeout=guard_s, return_when=cf.FIRST_COMPLETED)
            if not done:  # the pool itself is wedged: give up on this batch, start afresh
                for fut, (r, s, e) in pending.items():
                    fut.cancel()
                    for i in range(s, e):
                        batch.fail(r.label, i, "timeouts", "pool unresponsive")
                self._restart_pool()
                return
            for fut in done:
                reward, s, e = pending.pop(fut)
                retry = self._collect(fut, reward, s, e, batch)
                for i in range(s, e) if retry else ():
                    pending[self._submit(reward, completions, columns, i, i + 1)] = (
                        reward,
                        i,
                        i + 1,
                    )

    def _collect(
        self, fut: cf.Future, reward: WeightedReward, s: int, e: int, batch: _Batch
    ) -> bool:
        """Record one finished task; True when its chunk should be re-sent sample by sample."""
        label = reward.label
        try:
            values = fut.result()
        except TimeoutError:
            if e - s > 1:
                return True
            batch.fail(label, s, "timeouts", f"no result within {self.config.timeout_s} s")
        except ProcessExpired as exc:
            if e - s > 1:
                return True
            batch.fail(label, s, "crashes", f"worker died (exit code {exc.exitcode})")
        except Exception as exc:  # noqa: BLE001 - pickling of arguments, a broken pool
            for i in range(s, e):
                batch.fail(label, i, "errors", f"{type(exc).__name__}: {exc}")
            if self._pool is not None and not self._pool.active:
                self._restart_pool()
        else:
            for i, value in zip(range(s, e), values):
                if isinstance(value, str):
                    batch.fail(label, i, "errors", value)
                else:
                    batch.scores[label][i] = value
        return False

    def _restart_pool(self) -> None:
        self._stop_pool()
        if self._workers_seen == 0:
            raise RuntimeError(
                "reward workers exit before finishing their start-up. With the "
                f"{self.config.start_method!r} start method each worker imports the main module "
                "again: guard a script's top level with `if __name__ == '__main__':`"
            )
        log.warning("restarting the reward worker pool")
        self._start_pool()

    def _collect_groups(self) -> None:
        while not self._pids.empty():
            self._groups.add(self._pids.get())
            self._workers_seen += 1

    def _kill_orphan_groups(self, everything: bool = False) -> None:
        """Kill the process groups of workers that are gone (all groups if ``everything``)."""
        self._collect_groups()
        for pgid in list(self._groups):
            if everything or not _alive(pgid):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                self._groups.discard(pgid)

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join(timeout=30)
            self._pool = None
        self._kill_orphan_groups(everything=True)

    def close(self) -> None:
        """Stop the workers and every process left in their groups; idempotent."""
        self._stop_pool()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def score_with_progress(scorer, texts: list[str], answers: list[str], lengths: list[int],
                        show: bool, columns: dict | None = None, chunk: int = 64):
    """``scorer.score`` over ``chunk`` completions at a time under a progress bar; the results
    are merged into one ``ScoreResult``. ``columns``: further columns, aligned with ``texts``."""
    columns = {"answer": answers, "completion_lengths": lengths, **(columns or {})}
    parts = []
    with tqdm(total=len(texts), desc="scoring", unit="completion", disable=not show,
              dynamic_ncols=True) as bar:
        for s in range(0, len(texts), chunk):
            parts.append(scorer.score(texts[s:s + chunk],
                                      **{k: v[s:s + chunk] for k, v in columns.items()}))
            bar.update(len(parts[-1].total))
    return merge_scores(parts)


def merge_scores(parts: list):
    """One ``ScoreResult`` from the results of consecutive chunks."""
    labels = parts[0].per_reward
    per = {k: [x for p in parts for x in p.per_reward[k]] for k in labels}
    failures = {k: FailureCounts(*(sum(getattr(p.failures.get(k, FailureCounts()), f)
                                       for p in parts)
                                   for f in ("errors", "timeouts", "crashes"))) for k in labels}
    failed: dict[str, list[int]] = {k: [] for k in labels}
    offset = 0
    for p in parts:
        for k, idx in p.failed.items():
            failed[k] += [offset + i for i in idx]
        offset += len(p.total)
    return ScoreResult([x for p in parts for x in p.total], per, failures, failed,
                       sum(p.seconds for p in parts))
