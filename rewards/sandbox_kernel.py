"""Kernel mechanisms behind ``rewards.sandbox``: a cgroup per run and a seccomp filter.

A run's whole process tree goes into a fresh cgroup made under the caller's own cgroup:
cgroup v2 (``memory.max``, ``memory.swap.max`` 0, ``pids.max``) where the caller's cgroup
can delegate the memory and pids controllers, else cgroup v1 (``memory.limit_in_bytes``,
``memory.memsw.limit_in_bytes``, ``pids.max``). The memory controller charges every page
the tree owns, anonymous memory, memfds, tmpfs files (the work dir included) and page
tables, so ``memory_mb`` is a cap on all of it together. Making cgroups needs write access
to the caller's cgroup (root, or a delegated subtree); ``cgroup_problem()`` says why not,
and the sandbox then falls back to a watchdog that sums the tree's RSS (``tree_rss``).

The seccomp filter (``seccomp_filter()``, raw BPF, no libseccomp) answers EPERM to new
namespaces (``unshare``, ``setns``, ``clone`` with a ``CLONE_NEW*`` flag), mounts (old and
new API), ``ptrace`` and ``process_vm_*``, ``bpf``, ``perf_event_open``, ``userfaultfd``,
``io_uring``, the key syscalls, module loading and ``kexec``; ``clone3`` gets ENOSYS (its
flags sit behind a pointer the filter cannot read; libc then falls back to ``clone``);
x32 syscalls and foreign architectures are refused or killed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import secrets
import shlex
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

PIDS_SLACK = 4  # pids.max = max_processes + this: bwrap, its init and the supervisor
_CGROUP_PREFIX = "r1kit-sandbox-"
_REMOVE_WAIT_S = 5.0


@dataclass(frozen=True)
class _Parent:
    path: str  # cgroup dir under which each run's cgroup is made
    controllers: tuple[str, ...]  # ("memory", "pids") for v2; the one v1 controller


@dataclass
class RunCgroup:
    """One run's cgroup: one dir on v2, a memory and a pids dir on v1."""

    dirs: list[str]
    v2: bool

    def join_command(self) -> list[str]:
        """``sh`` prefix that moves itself into the cgroup, then execs the rest (``"$@"``)."""
        writes = " && ".join(f"echo 0 > {shlex.quote(d + '/cgroup.procs')}" for d in self.dirs)
        failed = 'echo "r1kit: cannot join the sandbox cgroup" >&2; exit 125'
        script = f'{writes} && exec "$@"; {failed}'
        return ["/bin/sh", "-c", script, "sh"]

    def oom_kills(self) -> int:
        """How many processes of the tree the kernel killed for memory so far."""
        name = "memory.events" if self.v2 else "memory.oom_control"
        for d in self.dirs:
            with contextlib.suppress(OSError):
                for line in Path(d, name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in Path(d, "cgroup.procs").read_text().split())
        return sorted(found)

    def kill_and_remove(self) -> bool:
        """SIGKILL everything in the cgroup, then remove it; False if it would not go."""
        deadline = time.monotonic() + _REMOVE_WAIT_S
        while time.monotonic() < deadline:
            if self.v2:
                with contextlib.suppress(OSError):
                    Path(self.dirs[0], "cgroup.kill").write_text("1")
            for pid in self.pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            for d in list(self.dirs):
                with contextlib.suppress(FileNotFoundError):
                    try:
                        os.rmdir(d)
                    except OSError:  # EBUSY: still populated (dying or not yet reaped)
                        continue
                self.dirs.remove(d)
            if not self.dirs:
                return True
            time.sleep(0.01)
        return False


def make_cgroup(memory_bytes: int, max_pids: int) -> RunCgroup:
    """A fresh cgroup with the tree's caps set; raises OSError if the kernel refuses."""
    parents, v2 = _cgroup_parents()
    name = f"{_CGROUP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    run = RunCgroup([], v2)
    try:
        for parent in parents:
            path = f"{parent.path}/{name}"
            os.mkdir(path, 0o700)
            run.dirs.append(path)
            if "memory" in parent.controllers:
                _set_memory(path, memory_bytes, v2)
            if "pids" in parent.controllers:
                Path(path, "pids.max").write_text(str(max_pids))
    except OSError:
        run.kill_and_remove()
        raise
    return run


def _set_memory(path: str, memory_bytes: int, v2: bool) -> None:
    if v2:
        Path(path, "memory.max").write_text(str(memory_bytes))
        swap = Path(path, "memory.swap.max")
        if swap.exists():  # absent when the kernel has no swap accounting: no swap to use
            swap.write_text("0")
        return
    Path(path, "memory.limit_in_bytes").write_text(str(memory_bytes))
    memsw = Path(path, "memory.memsw.limit_in_bytes")
    if memsw.exists():  # memory + swap = memory: no swap
        memsw.write_text(str(memory_bytes))


@functools.cache
def _cgroup_parents() -> tuple[tuple[_Parent, ...], bool]:
    """Where runs' cgroups go: the caller's own cgroups (v2 first); OSError if nowhere."""
    mounts = _cgroup_mounts()
    own = {}  # controller ("" for v2) -> the caller's cgroup path
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    problems = []
    if "" in own and "" in mounts:
        parent = _under(mounts[""], own[""])
        try:
            _delegate_v2(parent)
            return (_Parent(parent, ("memory", "pids")),), True
        except OSError as err:
            problems.append(f"cgroup v2 at {parent}: {err}")
    if "memory" in own and "pids" in own and "memory" in mounts and "pids" in mounts:
        parents = tuple(_Parent(_under(mounts[c], own[c]), (c,)) for c in ("memory", "pids"))
        if all(os.access(p.path, os.W_OK) for p in parents):
            return parents, False
        problems.append("cgroup v1 memory/pids dirs not writable")
    else:
        problems.append("no cgroup v1 memory and pids hierarchies")
    raise OSError("; ".join(problems))


def _cgroup_mounts() -> dict[str, tuple[str, str]]:
    """controller ("" for v2) -> (mount point, root of the hierarchy it shows)."""
    mounts: dict[str, tuple[str, str]] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        root, point = fields.split()[3:5]
        fstype, _, options = tail.split()[:3]
        if fstype == "cgroup2":
            mounts.setdefault("", (point, root))
        elif fstype == "cgroup":
            for option in options.split(","):
                if option in ("memory", "pids"):
                    mounts.setdefault(option, (point, root))
    return mounts


def _under(mount: tuple[str, str], path: str) -> str:
    point, root = mount
    if root != "/" and not (path == root or path.startswith(root + "/")):
        raise OSError(f"own cgroup {path} lies outside the mount of {root} at {point}")
    rel = path[len(root):] if root != "/" else path
    return point + rel.rstrip("/")


def _delegate_v2(parent: str) -> None:
    """Make memory and pids available to children of ``parent``, or raise OSError."""
    available = Path(parent, "cgroup.controllers").read_text().split()
    if not {"memory", "pids"} <= set(available):
        raise OSError(f"memory and pids controllers not available (have {available})")
    enabled = Path(parent, "cgroup.subtree_control").read_text().split()
    if not {"memory", "pids"} <= set(enabled):
        # EBUSY when the caller's cgroup holds processes (the no-internal-process rule).
        Path(parent, "cgroup.subtree_control").write_text("+memory +pids")


@functools.cache
def cgroup_problem() -> str | None:
    """None if runs get a capped cgroup here, else why not (probed once per process)."""
    try:
        run = make_cgroup(64 << 20, 8)
    except OSError as err:
        return f"cannot make a cgroup: {err}"
    try:
        done = subprocess.run([*run.join_command(), "cat", "/proc/self/cgroup"],
                              capture_output=True, text=True, timeout=30, check=False)
    finally:
        run.kill_and_remove()
    if done.returncode != 0 or _CGROUP_PREFIX not in done.stdout:
        return f"cannot join a cgroup: {done.stderr.strip()[-300:]}"
    return None


def tree_rss(root_pid: int, uid: int | None) -> int:
    """Resident bytes of ``root_pid``'s descendants and of every process of ``uid``.

    Shared pages count once per process (an overestimate); unmapped memfd and tmpfs pages
    do not count at all.
    """
    procs: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        for p in psutil.Process(root_pid).children(recursive=True):
            procs[p.pid] = p
    if uid is not None:
        for p in psutil.process_iter(["uids"]):
            if p.info["uids"] and p.info["uids"].real == uid:
                procs[p.pid] = p
    total = 0
    for p in procs.values():
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


# --- seccomp -----------------------------------------------------------------------------

_DENIED = (  # (x86_64, aarch64) syscall numbers, checked against the kernel headers
    ("unshare", 272, 97), ("setns", 308, 268), ("mount", 165, 40), ("umount2", 166, 39),
    ("pivot_root", 155, 41), ("open_tree", 428, 428), ("move_mount", 429, 429),
    ("fsopen", 430, 430), ("fsconfig", 431, 431), ("fsmount", 432, 432), ("fspick", 433, 433),
    ("mount_setattr", 442, 442), ("ptrace", 101, 117), ("process_vm_readv", 310, 270),
    ("process_vm_writev", 311, 271), ("bpf", 321, 280), ("perf_event_open", 298, 241),
    ("userfaultfd", 323, 282), ("keyctl", 250, 219), ("add_key", 248, 217),
    ("request_key", 249, 218), ("io_uring_setup", 425, 425), ("io_uring_enter", 426, 426),
    ("io_uring_register", 427, 427), ("kexec_load", 246, 104), ("kexec_file_load", 320, 294),
    ("init_module", 175, 105), ("finit_module", 313, 273), ("delete_module", 176, 106),
)
_ARCHES = {"x86_64": (0xC000003E, 0, 56, 435), "aarch64": (0xC00000B7, 1, 220, 435)}
_CLONE_NEW = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_EPERM, _ENOSYS = 1, 38
_RET_ALLOW, _RET_ERRNO, _RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06


@functools.cache
def seccomp_filter() -> bytes | None:
    """The filter as a ``struct sock_filter`` array, or None on an unknown architecture."""
    arch = _ARCHES.get(platform.machine())
    if arch is None:
        return None
    audit_arch, column, clone_nr, clone3_nr = arch
    denied = [row[1 + column] for row in _DENIED]
    # Labels, as instruction indexes: the tail is [allow, clone check (3), EPERM, ENOSYS, KILL].
    prog: list[tuple[int, int, int, int]] = [(_LD_ABS, 0, 0, 4), (_JEQ, 0, 0, 0),
                                             (_LD_ABS, 0, 0, 0)]
    arch_check = 1
    if platform.machine() == "x86_64":
        prog.append((_JGE, 0, 0, 0x40000000))  # x32 ABI
    checks_start = len(prog)
    prog += [(_JEQ, 0, 0, nr) for nr in denied]
    prog += [(_JEQ, 0, 0, clone_nr), (_JEQ, 0, 0, clone3_nr)]
    allow = len(prog)
    clone_check = allow + 1
    prog += [(_RET, 0, 0, _RET_ALLOW), (_LD_ABS, 0, 0, 16), (_JSET, 0, 0, _CLONE_NEW),
             (_RET, 0, 0, _RET_ALLOW)]
    eperm, enosys, kill = len(prog), len(prog) + 1, len(prog) + 2
    prog += [(_RET, 0, 0, _RET_ERRNO | _EPERM), (_RET, 0, 0, _RET_ERRNO | _ENOSYS),
             (_RET, 0, 0, _RET_KILL)]

    def jump(at: int, to: int) -> int:
        return to - at - 1

    prog[arch_check] = (_JEQ, 0, jump(arch_check, kill), audit_arch)
    if platform.machine() == "x86_64":
        prog[3] = (_JGE, jump(3, eperm), 0, 0x40000000)
    for i in range(checks_start, checks_start + len(denied)):
        prog[i] = (_JEQ, jump(i, eperm), 0, prog[i][3])
    clone_at, clone3_at = allow - 2, allow - 1
    prog[clone_at] = (_JEQ, jump(clone_at, clone_check), 0, clone_nr)
    prog[clone3_at] = (_JEQ, jump(clone3_at, enosys), 0, clone3_nr)
    jset_at = clone_check + 1
    prog[jset_at] = (_JSET, jump(jset_at, eperm), 0, _CLONE_NEW)
    assert all(0 <= jt < 256 and 0 <= jf < 256 for _, jt, jf, _ in prog)
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)
