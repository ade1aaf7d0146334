"""The server supervisor's stop order, without vLLM: SIGTERM to the server first, SIGKILL only
after the grace period, nothing left behind (``rollouts.procs.supervise``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO

# A stand-in server: records SIGTERM, and either exits on it or ignores it; writes its pid and
# starts a grandchild that also ignores SIGTERM (a vLLM EngineCore stand-in).
SERVER = r"""
import os, signal, subprocess, sys, time
log, exit_on_term = sys.argv[1], sys.argv[2] == "exit"
def on_term(signum, frame):
    with open(log, "a") as f:
        f.write("TERM %.3f\n" % time.monotonic())
    if exit_on_term:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
with open(log, "a") as f:
    f.write("PIDS %d %d\n" % (os.getpid(), grandchild.pid))
while True:
    time.sleep(0.05)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def start(tmp_path, mode: str, grace: float):
    log = tmp_path / f"{mode}.log"
    cmd = [sys.executable, "-m", "rollouts.server", "_supervise", str(os.getpid()), str(grace),
           "--", sys.executable, "-c", SERVER, str(log), mode]
    sup = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "PIDS" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    pids = [int(x) for x in log.read_text().split("PIDS ")[1].split()[:2]]
    return sup, log, pids


def test_a_server_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    sup, log, (server, grandchild) = start(tmp_path, "ignore", grace=1.5)
    t0 = time.monotonic()
    sup.send_signal(signal.SIGTERM)
    sup.wait(timeout=30)
    took = time.monotonic() - t0
    assert "TERM" in log.read_text()  # asked to stop first
    assert 1.5 <= took < 5, took  # then killed once the grace ran out, not before
    assert not alive(server) and not alive(grandchild)  # the SIGTERM-proof grandchild too


def test_a_server_that_stops_on_sigterm_is_not_waited_for(tmp_path):
    sup, log, (server, grandchild) = start(tmp_path, "exit", grace=20)
    t0 = time.monotonic()
    sup.send_signal(signal.SIGTERM)
    sup.wait(timeout=30)
    took = time.monotonic() - t0
    assert "TERM" in log.read_text()
    assert took < 3, took  # far inside the 20 s grace
    assert not alive(server) and not alive(grandchild)
