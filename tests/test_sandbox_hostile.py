"""Hostile programs against the sandbox (bwrap, and rlimits_unsafe where it makes the same
promise): each is contained, classified, and leaves no process, mount, cgroup or file
behind."""

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from rewards import sandbox_kernel
from rewards.sandbox import ExecResult, run_python

REPO = Path(__file__).parents[1]
CGROUP_LIMITS = ("memory.max", "memory.swap.max", "memory.limit_in_bytes",
                 "memory.memsw.limit_in_bytes", "pids.max")
UID_LINE = "import os as _os\n_os.write(2, b'uid=%d\\n' % _os.getuid())\ndel _os\n"
seen_uids: set[int] = set()  # uids the sandboxed programs of the current test ran as


def run(code: str, isolation: str = "bwrap", **kwargs) -> ExecResult:
    """Run ``code`` in the sandbox, first noting from inside which uid it runs as."""
    kwargs.setdefault("timeout_s", 1.0)
    result = run_python(UID_LINE + code, isolation=isolation, **kwargs)
    seen_uids.add(int(result.stderr.split("\n", 1)[0].removeprefix("uid=")))
    return result


def survivors(uids: set[int] = frozenset(), marker: str | None = None) -> list[psutil.Process]:
    """Processes running as one of ``uids``, or with ``marker`` in their command line."""
    found = []
    for proc in psutil.process_iter(["uids", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        uids_now = proc.info["uids"]
        if (uids_now and uids_now.real in uids) or (marker and marker in cmdline):
            found.append(proc)
    return found


def leftover_cgroups() -> list[Path]:
    """Cgroup dirs of this process's sandbox runs still present under any cgroup mount."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if " - cgroup" in line]
    pattern = f"r1kit-sandbox-{os.getpid()}-*"  # runs of other processes may be under way
    return [path for mount in mounts for path in Path(mount).rglob(pattern)]


@pytest.fixture(autouse=True)
def nothing_survives():
    seen_uids.clear()
    mounts = Path("/proc/self/mountinfo").read_text()
    yield
    if os.geteuid() == 0:  # each run had a fresh uid: nothing may be left running as it
        assert seen_uids and all(uid >= 2**30 for uid in seen_uids)
        assert survivors(seen_uids) == []
    assert leftover_cgroups() == []
    assert Path("/proc/self/mountinfo").read_text() == mounts


def test_survivor_scan_sees_a_marked_process():
    run("pass")
    marker = f"r1kit-marker-{uuid.uuid4().hex}"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        assert [p.pid for p in survivors(marker=marker)] == [proc.pid]
    finally:
        proc.kill()
        proc.wait()


def test_fork_bomb():
    code = """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(100)
            os._exit(0)
        n += 1
except OSError:
    print(n, flush=True)
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    result = run(code, max_processes=32)
    assert result.status == "timeout"
    assert 0 < int(result.stdout.split()[0]) < 32


def test_memory_bomb():
    result = run("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))",
                 memory_mb=256, timeout_s=10)
    assert result.status == "memory" and result.wall_s < 10


def test_busy_loop():
    result = run("while True:\n    pass")
    assert result.status == "timeout" and result.wall_s < 3


def test_sleeping_forever():
    result = run("import time\ntime.sleep(10**6)")
    assert result.status == "timeout" and result.wall_s < 3


def test_ignoring_sigterm_sigalrm_and_sigxcpu():
    code = """
import signal
for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGXCPU, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
signal.alarm(1)
while True:
    pass
"""
    result = run(code, timeout_s=1.5)
    assert result.status == "timeout" and result.wall_s < 4


def _daemon_program(marker: str) -> str:
    """A program that leaves a double-forked, setsid daemon (tagged with ``marker``) behind."""
    return f"""
import os, sys
read, write = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(write, b"up")
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
    os._exit(0)
print(os.read(read, 2).decode())
"""


def test_double_forked_setsid_daemon():
    marker = f"r1kit-daemon-{uuid.uuid4().hex}"
    code = _daemon_program(marker)
    result = run(code, timeout_s=10)
    assert (result.status, result.stdout) == ("ok", "up\n")
    assert survivors(marker=marker) == []


def test_writes_outside_the_work_dir(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    repo_target = REPO / f"r1kit-sandbox-escape-{uuid.uuid4().hex}"
    before = sorted(os.listdir(REPO))
    code = f"""
for path in ({str(outside / 'pwned')!r}, {str(repo_target)!r}, "/usr/pwned", "/pwned"):
    try:
        open(path, "w").write("x")
        print("wrote", path)
    except OSError as e:
        print("refused", path, e.errno)
"""
    result = run(code)
    assert result.status == "ok" and "wrote" not in result.stdout
    assert result.stdout.count("refused") == 4
    assert list(outside.iterdir()) == [] and not repo_target.exists()
    assert sorted(os.listdir(REPO)) == before


def test_reading_the_parents_environment_and_proc(monkeypatch):
    secret = f"r1kit-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("R1KIT_SECRET", secret)
    code = f"""
import os
print(dict(os.environ))
pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
print("pids", pids, {os.getpid()} in pids)
for pid in pids:
    for name in ("cmdline", "environ"):
        try:
            print(pid, name, open(f"/proc/{{pid}}/{{name}}", "rb").read())
        except OSError as e:
            print(pid, name, "refused", e.errno)
"""
    result = run(code)
    assert result.status == "ok"
    assert secret not in result.stdout and "R1KIT_SECRET" not in result.stdout
    assert "pytest" not in result.stdout
    pids_line = next(line for line in result.stdout.splitlines() if line.startswith("pids"))
    assert pids_line.endswith("False") and max(eval(pids_line[5:-6])) < 10


def test_network_connection_to_the_host():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"leak")
    print("connected")
except OSError as e:
    print("refused", e.errno)
"""
    try:
        result = run(code, timeout_s=5)
        assert result.status == "ok" and result.stdout.startswith("refused")
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


def test_killing_the_parent_and_everyone():
    bystander = subprocess.Popen(["sleep", "30"])  # a host process of the test's user
    code = """
import os
for pid in (os.getppid(), 1, -1):
    try:
        os.kill(pid, 9)
        print("sent", pid)
    except OSError as e:
        print("refused", pid, e.errno)
print("alive")
"""
    try:
        result = run(code)
        assert result.status == "ok" and result.stdout.endswith("alive\n")
        assert "refused 1 1\n" in result.stdout  # EPERM: bwrap's init is not the sandbox's
        assert bystander.poll() is None and psutil.pid_exists(os.getpid())
    finally:
        bystander.kill()
        bystander.wait()


def test_endless_output():
    result = run("while True:\n    print('spam' * 100)", output_bytes=100_000, timeout_s=10)
    assert result.status == "output_limit" and result.wall_s < 10
    assert len(result.stdout) + len(result.stderr) <= 100_000


def test_exhausting_file_descriptors():
    code = "fds = []\ntry:\n    while True:\n        fds.append(open('/dev/null'))\n" \
           "except OSError as e:\n    print(len(fds), e.errno)"
    result = run(code, max_open_files=64)
    count, errno = map(int, result.stdout.split())
    assert result.status == "ok" and count < 64 and errno == 24  # EMFILE


def test_thread_bomb():
    code = """
import threading, time
threads = []
try:
    while True:
        t = threading.Thread(target=time.sleep, args=(100,), daemon=True)
        t.start()
        threads.append(t)
except RuntimeError as e:
    print(len(threads), e)
"""
    result = run(code, max_processes=32, timeout_s=10)
    assert result.status == "ok" and int(result.stdout.split()[0]) < 32


def test_filling_the_disk():
    marker = f"r1kit-fill-{uuid.uuid4().hex}"
    code = f"""
total = 0
try:
    for i in range(100):
        with open("/tmp/{marker}-%d" % i, "wb") as f:
            for _ in range(64):
                f.write(b"0" * 2**20)
                total += 2**20
except OSError as e:
    print(total // 2**20, e.errno)
"""
    result = run(code, disk_mb=8, timeout_s=10)
    written_mb, errno = map(int, result.stdout.split())
    assert result.status == "ok" and written_mb <= 8 and errno in (27, 28)  # EFBIG, ENOSPC
    assert not list(Path("/tmp").glob(f"{marker}*"))


def test_killing_its_own_process_group():
    result = run("import os\nos.killpg(0, 9)")
    assert result.exit_code == -signal.SIGKILL and result.status == "error"


# Run-wide caps: memory_mb and max_processes hold for the whole process tree, not each process.

SPREAD_MEMORY = """
import os, time
for i in range(6):  # 6 x 100 MB touched, each process well under the 256 MB address space
    if os.fork() == 0:
        data = b"x" * (100 << 20)
        time.sleep(30)
        os._exit(0)
    time.sleep(0.3)
print("forked all", flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize("isolation", ["bwrap", "rlimits_unsafe"])
def test_memory_spread_over_processes(isolation):
    result = run(SPREAD_MEMORY, isolation, memory_mb=256, timeout_s=10)
    assert result.status == "memory" and "forked all" not in result.stdout
    assert result.wall_s < 8


def test_memory_spread_over_processes_without_cgroups(monkeypatch):
    monkeypatch.setattr(sandbox_kernel, "cgroup_problem", lambda: "disabled by the test")
    result = run(SPREAD_MEMORY, memory_mb=256, timeout_s=10)
    assert result.status == "memory" and "forked all" not in result.stdout


def test_memfd_growth_counts_against_memory():
    code = """
import os
fds = []
for i in range(12):  # 12 x 32 MB of anonymous files, each under the 32 MB file-size limit
    fd = os.memfd_create("hoard")
    for _ in range(32):
        os.write(fd, bytes(2**20))
    fds.append(fd)
print("held", 32 * len(fds), flush=True)
"""
    if sandbox_kernel.cgroup_problem() is not None:
        pytest.skip(f"only a cgroup caps unmapped memfds: {sandbox_kernel.cgroup_problem()}")
    result = run(code, memory_mb=256, disk_mb=32, timeout_s=10)
    assert result.status == "memory" and "held" not in result.stdout


def test_the_tree_runs_in_a_capped_cgroup(monkeypatch):
    if sandbox_kernel.cgroup_problem() is not None:
        pytest.skip(sandbox_kernel.cgroup_problem())
    made = []  # (dirs, {limit file: value read back from the kernel})

    def spy(memory_bytes, max_pids):
        cgroup = make_cgroup(memory_bytes, max_pids)
        files = [f"{d}/{name}" for d in cgroup.dirs for name in CGROUP_LIMITS]
        made.append((list(cgroup.dirs), {Path(f).name: Path(f).read_text().strip()
                                          for f in files if os.path.exists(f)}))
        return cgroup

    make_cgroup = sandbox_kernel.make_cgroup
    monkeypatch.setattr(sandbox_kernel, "make_cgroup", spy)
    # rlimits_unsafe: no cgroup namespace, so the program sees its full cgroup paths.
    result = run("print(open('/proc/self/cgroup').read())", "rlimits_unsafe", memory_mb=300,
                 max_processes=9)
    [(dirs, limits)] = made
    mem = str(300 << 20)
    assert limits.get("memory.max", limits.get("memory.limit_in_bytes")) == mem
    assert limits.get("memory.swap.max", "0") == "0"
    assert limits.get("memory.memsw.limit_in_bytes", mem) == mem
    assert limits["pids.max"] == str(9 + sandbox_kernel.PIDS_SLACK)
    own = [line.split(":", 2)[2] for line in result.stdout.split()]
    assert all(any(d.endswith(path) for path in own) for d in dirs)


@pytest.mark.parametrize("isolation", ["bwrap", "rlimits_unsafe"])
def test_nested_user_namespace_and_mounts_are_refused(isolation):
    code = """
import ctypes, subprocess
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x20000
print("unshare", libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), ctypes.get_errno())
print("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, b"size=4g"), ctypes.get_errno())
mount = "mount -t tmpfs -o size=4g none /tmp && echo mounted"
done = subprocess.run(["unshare", "-Ur", "sh", "-c", mount], capture_output=True, text=True)
print("cli", done.returncode, done.stdout.strip() or "-")
"""
    result = run(code, isolation, timeout_s=10)
    assert result.status == "ok", result.stderr
    assert result.stdout.splitlines() == ["unshare -1 1", "mount -1 1", "cli 1 -"]  # EPERM


# Status comes from the kernel's wait status, never from a number the program chose.

@pytest.mark.parametrize("isolation", ["bwrap", "rlimits_unsafe"])
@pytest.mark.parametrize(("code", "status", "exit_code"), [
    ("import sys\nsys.exit(137)", "error", 137),  # 128 + SIGKILL
    ("import os\nos._exit(152)", "error", 152),  # 128 + SIGXCPU
    ("import os\nos._exit(255)", "error", 255),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "error", -signal.SIGKILL),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", "error", -signal.SIGSEGV),
])
def test_exit_codes_are_not_signals(isolation, code, status, exit_code):
    result = run(code, isolation)
    assert (result.status, result.exit_code) == (status, exit_code)


def test_killing_the_supervisor_is_refused():
    code = "import os\ntry:\n    os.kill(os.getppid(), 9)\nexcept OSError as e:\n    print(e.errno)"
    result = run(code)
    assert (result.status, result.exit_code, result.stdout) == ("ok", 0, "1\n")


def test_rlimits_unsafe_setsid_daemon_is_killed():
    marker = f"r1kit-daemon-{uuid.uuid4().hex}"
    code = _daemon_program(marker)
    result = run(code, "rlimits_unsafe", timeout_s=10)
    assert (result.status, result.stdout) == ("ok", "up\n")
    assert survivors(marker=marker) == []
