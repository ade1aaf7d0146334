"""Hostile programs against the bwrap sandbox: each is contained, classified, and leaves
no process behind and nothing changed outside its work dir."""

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from rewards.sandbox import ExecResult, run_python

REPO = Path(__file__).parents[1]
UID_LINE = "import os as _os\n_os.write(2, b'uid=%d\\n' % _os.getuid())\ndel _os\n"
seen_uids: set[int] = set()  # uids the sandboxed programs of the current test ran as


def run(code: str, **kwargs) -> ExecResult:
    """Run ``code`` in the bwrap sandbox, first noting from inside which uid it runs as."""
    kwargs.setdefault("timeout_s", 1.0)
    result = run_python(UID_LINE + code, isolation="bwrap", **kwargs)
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


@pytest.fixture(autouse=True)
def nothing_survives():
    seen_uids.clear()
    yield
    if os.geteuid() == 0:  # each run had a fresh uid: nothing may be left running as it
        assert seen_uids and all(uid >= 2**30 for uid in seen_uids)
        assert survivors(seen_uids) == []


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


def test_double_forked_setsid_daemon():
    marker = f"r1kit-daemon-{uuid.uuid4().hex}"
    code = f"""
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
