"""Process plumbing for engines that run children: a parent-death signal, a supervisor that
leaves no descendant (and no ``/dev/shm`` file its tree mapped) behind, a record of every process a
tree ever had, and RSS sampling.

Used by ``rollouts.server`` (see its docstring for the process tree and the guarantees).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

import psutil

LOG_TAIL_CHARS = 4000
_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies; False where unsupported."""
    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The last ``chars`` characters of a log file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


class ProcessTree:
    """Every process ever seen under a root pid (psutil handles guard against pid reuse)."""

    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        self.pgid = root_pid  # the root is started as a session (and group) leader
        self.seen: dict[int, psutil.Process] = {}
        self.shm_paths: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Record the root's current descendants (call while they are still attached to it)."""
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            self.seen.setdefault(p.pid, p)

    def record_shm(self) -> None:
        """Record the ``/dev/shm`` files the live processes map (vLLM's shared-memory queues,
        multiprocessing's named semaphores); ``remove_shm`` deletes them once the tree is dead."""
        for p in self.alive():
            try:
                with open(f"/proc/{p.pid}/maps") as f:
                    for line in f:
                        path = line.split(maxsplit=5)[-1].strip()
                        if path.startswith("/dev/shm/") and not path.endswith("(deleted)"):
                            self.shm_paths.add(path)
            except OSError:
                continue

    def remove_shm(self) -> list[str]:
        """Delete the recorded ``/dev/shm`` files that still exist (call after ``kill_all``: a
        SIGKILLed process cannot unlink its own); return their paths."""
        removed = []
        for path in sorted(self.shm_paths):
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                continue
        return removed

    def group_members(self) -> list[psutil.Process]:
        """Processes still in the root's process group, wherever they were reparented."""
        found = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and os.getpgid(p.pid) == self.pgid:
                    found.append(p)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    def alive(self, exclude_self: bool = True) -> list[psutil.Process]:
        """Seen or group processes that still run (zombies count as gone)."""
        procs = {p.pid: p for p in [*self.seen.values(), *self.group_members()]}
        out = []
        for p in procs.values():
            if exclude_self and p.pid == os.getpid():
                continue
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def kill_all(self, wait_s: float = 5.0) -> list[psutil.Process]:
        """SIGKILL every live process of the tree; return those still alive after ``wait_s``."""
        procs = self.alive()
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=wait_s)
        return self.alive()

    def rss_bytes(self) -> int:
        """Summed resident memory of the processes now under the root."""
        total = 0
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total


def supervise(parent_pid: int, grace_s: float, cmd: list[str]) -> int:
    """Run ``cmd`` until it exits, this process is signalled, or ``parent_pid`` dies; then leave
    nothing of it behind. The direct child of an engine runs this (see the module docstring)."""
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        return 1
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    # This process is single-threaded, so preexec_fn is safe here.
    child = subprocess.Popen(cmd, preexec_fn=set_parent_death_signal)  # noqa: PLW1509
    tree = ProcessTree(os.getpid())
    ticks = 0
    while child.poll() is None and not stop and os.getppid() == parent_pid:
        tree.refresh()
        if ticks % 8 == 0:  # every 2 s: a worker's maps run to thousands of lines
            tree.record_shm()
        ticks += 1
        time.sleep(0.25)
    if child.poll() is None:
        tree.refresh()
        tree.record_shm()
        child.terminate()
        deadline = time.monotonic() + grace_s
        while child.poll() is None and time.monotonic() < deadline:
            tree.refresh()  # keep the grandchildren on record before they are reparented
            time.sleep(0.1)
    tree.kill_all()
    child.wait()
    tree.remove_shm()  # vLLM's abort-mode shutdown SIGKILLs EngineCore, which leaks its segments
    return child.returncode if child.returncode and child.returncode > 0 else 0


class PeakSampler:
    """Peak summed RSS of a process tree, sampled from a thread while the block runs."""

    def __init__(self, tree: ProcessTree, every_s: float = 0.05):
        self.tree, self.every_s, self.peak = tree, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.tree.rss_bytes())
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
