"""Run the symbolic stage under a time bound, without signals.

Guarantees:

* :func:`run_bounded` gives up once the helper has spent ``timeout_s`` of CPU
  time on the call, from any thread and from any process (daemonic
  ``multiprocessing`` workers included: helpers are started with
  ``subprocess``, not ``multiprocessing``). It uses neither SIGALRM nor any
  other signal, so it works off the main thread.
* Grading does not depend on load: only the helper's own CPU time (read from
  ``/proc/<pid>/stat``) counts against ``timeout_s``, not time spent waiting
  for a free helper nor time the helper spends runnable while other processes
  hold the cores. So a pair that takes 0.05 s alone is not failed because
  eight threads or a busy trainer share the machine. A starved helper is
  still cut off after ``WALL_FACTOR * timeout_s + 1`` seconds of wall time
  (and a wait for a free helper after ``STARTUP_TIMEOUT_S``), so a call
  always returns.
* The work runs in persistent helper processes (``python -m
  rewards.math.symbolic``), reused across calls. A helper that overruns is
  killed (SIGKILL) and a replacement is started at once, so the next call
  finds it warm or nearly so. At most :data:`POOL_SIZE` helpers run per
  process.
* Each helper's address space is capped (see ``symbolic.HELPER_MEMORY_BYTES``),
  so a blow-up ends as a failed comparison, not as an out-of-memory trainer.
* After ``os.fork`` the child starts with an empty pool of its own.

Does not: count the helper's start-up (importing sympy, about a second) against
``timeout_s``; a call that has to wait for a starting helper waits up to
:data:`STARTUP_TIMEOUT_S` more, because grading a right answer as wrong for a
cold start would be a wrong reward. Call :func:`warm_up` to pay it up front.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

POOL_SIZE = max(1, min(4, os.cpu_count() or 1))  # helpers per process
STARTUP_TIMEOUT_S = 60.0  # bound on one helper's start-up (imports), and on a wait for a helper
WALL_FACTOR = 4.0  # a starved call is cut off after this many times its CPU budget (+1 s)
_TICK = os.sysconf("SC_CLK_TCK")
_ROOT = str(Path(__file__).resolve().parents[2])  # directory holding the rewards package
_BOOT = (
    f"import sys; sys.path.insert(0, {_ROOT!r}); from rewards.math.symbolic import serve; serve()"
)


class _Helper:
    """One helper process and the bytes read from it so far."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.buf = b""
        self.ready = False

    def readline(self, deadline: float) -> bytes | None:
        """Next line from the helper, or None at the deadline or if it died."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def wait_ready(self) -> bool:
        if not self.ready:
            self.ready = self.readline(time.monotonic() + STARTUP_TIMEOUT_S) == b"ready"
        return self.ready

    def cpu_seconds(self) -> float:
        """User + system CPU time of the helper so far (0 if it is gone)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)

    def request(self, payload: list, budget_s: float) -> list | None:
        """The helper's answer, or None once it has used ``budget_s`` of CPU on this request
        (or ``WALL_FACTOR * budget_s + 1`` s of wall time), or died."""
        try:
            self.proc.stdin.write(json.dumps(payload).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        cpu0, wall_end = self.cpu_seconds(), time.monotonic() + WALL_FACTOR * budget_s + 1.0
        while True:
            left_cpu = budget_s - (self.cpu_seconds() - cpu0)
            left_wall = wall_end - time.monotonic()
            if left_cpu <= 0 or left_wall <= 0 or self.proc.poll() is not None:
                return None
            # Wait at most the CPU time left (it cannot be spent faster), then look again.
            line = self.readline(time.monotonic() + min(left_wall, max(left_cpu, 0.01)))
            if line is not None:
                return json.loads(line)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()


class _Pool:
    """Helpers of one process: idle ones, and how many exist."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.idle: list[_Helper] = []
        self.count = 0

    def acquire(self, deadline: float) -> _Helper | None:
        with self.cond:
            while not self.idle and self.count >= POOL_SIZE:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.cond.wait(remaining)
            if self.idle:
                return self.idle.pop()
            self.count += 1
        try:
            return _Helper()
        except OSError:
            self.discard()
            raise

    def release(self, helper: _Helper) -> None:
        with self.cond:
            self.idle.append(helper)
            self.cond.notify()

    def discard(self) -> None:
        with self.cond:
            self.count -= 1
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            helpers, self.idle, self.count = self.idle, [], 0
        for helper in helpers:
            helper.kill()


_pool = _Pool()


def _new_pool_after_fork() -> None:
    global _pool
    _pool = _Pool()  # the parent's helpers, pipes and lock state are not ours


os.register_at_fork(after_in_child=_new_pool_after_fork)
atexit.register(lambda: _pool.close())


def run_bounded(requests: list[list], timeout_s: float) -> list[tuple[bool, str]] | None:
    """Decide ``requests`` (see ``symbolic.compare``) in a helper; None on timeout.

    >>> run_bounded([["expr", "2x", "x+x"]], timeout_s=30.0)
    [(True, 'symbolic')]
    """
    pool = _pool
    helper = pool.acquire(time.monotonic() + STARTUP_TIMEOUT_S)  # waiting is not charged
    if helper is None:
        return None
    if not helper.wait_ready():
        helper.kill()
        pool.discard()
        return None
    answer = helper.request(requests, timeout_s)
    if answer is None or len(answer) != len(requests):
        helper.kill()
        pool.discard()
        _prestart(pool)
        return None
    pool.release(helper)
    return [(bool(ok), str(reason)) for ok, reason in answer]


def _prestart(pool: _Pool) -> None:
    """Start a replacement helper now, so its imports overlap with the caller's next work."""
    with pool.cond:
        if pool.count >= POOL_SIZE:
            return
        pool.count += 1
    try:
        pool.release(_Helper())
    except OSError:
        pool.discard()


def warm_up() -> None:
    """Start every helper of the pool and wait until they are ready (pays the start-up cost up
    front; they start in parallel)."""
    helpers = []
    for _ in range(POOL_SIZE):
        helper = _pool.acquire(time.monotonic() + STARTUP_TIMEOUT_S)
        if helper is None:
            break
        helpers.append(helper)
    for helper in helpers:
        if helper.wait_ready():
            _pool.release(helper)
        else:
            helper.kill()
            _pool.discard()
