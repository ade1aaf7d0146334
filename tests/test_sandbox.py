"""The sandbox's ordinary promises: results, limits, isolation facts, CLI, the unsafe mode.

Hostile programs live in test_sandbox_hostile.py.
"""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from rewards import sandbox
from rewards.sandbox import ExecResult, run_python

REPO = Path(__file__).parents[1]


def bwrap(code: str, stdin: str = "", **kwargs) -> ExecResult:
    return run_python(code, stdin, isolation="bwrap", **kwargs)


def test_stdin_to_stdout_and_result_fields():
    result = bwrap("import sys\nprint(sys.stdin.read()[::-1], end='')", "abc\n")
    assert (result.status, result.exit_code, result.stdout, result.stderr) == ("ok", 0, "\ncba", "")
    assert result.mode == "bwrap" and 0 < result.wall_s < 10


def test_large_stdin_and_output_pass_through_whole():
    data = "x" * 300_000 + "\n"
    result = bwrap("import sys\nsys.stdout.write(sys.stdin.read())", data)
    assert result.status == "ok" and result.stdout == data


def test_nonzero_exit_and_exception_are_errors():
    assert bwrap("raise SystemExit(3)").exit_code == 3
    result = bwrap("1 / 0")
    assert (result.status, result.exit_code) == ("error", 1)
    assert result.stderr.rstrip().endswith("ZeroDivisionError: division by zero")


def test_memory_error_is_memory():
    result = bwrap("x = bytearray(300 * 2**20)", memory_mb=128)
    assert result.status == "memory"


def test_wall_clock_timeout():
    result = bwrap("import time\ntime.sleep(30)", timeout_s=0.5)
    assert result.status == "timeout" and result.wall_s < 5


def test_output_cap_is_applied_while_reading():
    result = bwrap("import sys\nsys.stdout.write('y' * 10**6)\nimport time\ntime.sleep(30)",
                   output_bytes=1000, timeout_s=20)
    assert result.status == "output_limit" and result.wall_s < 10
    assert len(result.stdout) + len(result.stderr) <= 1000


def test_rlimits_are_set_inside():
    code = ("import resource as R\nprint([R.getrlimit(getattr(R, 'RLIMIT_' + n)) for n in "
            "('AS', 'CPU', 'NPROC', 'NOFILE', 'FSIZE', 'CORE')])")
    result = bwrap(code, timeout_s=2.5, memory_mb=300, max_processes=20, max_open_files=50,
                   disk_mb=7)
    mb = 2**20
    expected = [(300 * mb,) * 2, (3, 4), (20, 20), (50, 50), (7 * mb,) * 2, (0, 0)]
    assert result.stdout == f"{expected}\n"


def test_environment_is_empty_but_for_path_home_lang():
    os.environ["R1KIT_TEST_ENV"] = "visible?"
    try:
        result = bwrap("import os\nprint(sorted(os.environ.items()))")
    finally:
        del os.environ["R1KIT_TEST_ENV"]
    env = dict(eval(result.stdout))
    assert env == {"HOME": "/tmp", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "PWD": "/tmp"}


def test_unprivileged_identity():
    result = bwrap("import os\nprint(os.getuid(), os.getgid(), os.getgroups())\n"
                   "print(open('/proc/self/status').read())")
    ids, status = result.stdout.split("\n", 1)
    fields = dict(line.split(":\t") for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"] == fields["CapPrm"] == fields["CapAmb"] == "0000000000000000"
    if os.geteuid() == 0:
        uid, gid, groups = ids.split(" ", 2)
        assert int(uid) >= 2**30 and int(gid) >= 2**30 and groups == "[]"


def test_only_stdlib_and_no_host_files_visible():
    code = (f"import os\nprint(os.path.exists('/etc'), os.path.exists({str(REPO)!r}), "
            "os.listdir('/tmp'))\nimport psutil")
    result = bwrap(code)
    assert result.stdout == "False False ['main.py']\n"
    assert "ModuleNotFoundError: No module named 'psutil'" in result.stderr


def test_every_mount_is_nosuid_and_system_files_read_only():
    code = ("print(open('/proc/self/mountinfo').read())\n"
            "try:\n    open('/usr/r1kit-probe', 'w')\nexcept OSError as e:\n    print(e.errno)")
    result = bwrap(code)
    mounts = [line.split() for line in result.stdout.splitlines()[:-1] if line]
    assert mounts and all("nosuid" in fields[5].split(",") for fields in mounts)
    usr = next(fields for fields in mounts if fields[4] == "/usr")
    assert "ro" in usr[5].split(",")
    assert result.stdout.splitlines()[-1] == "30"  # EROFS


def test_network_namespace_has_only_loopback():
    assert bwrap("import socket\nprint(socket.if_nameindex())").stdout == "[(1, 'lo')]\n"


def test_work_dir_is_writable_and_size_capped():
    code = ("import os\nopen('a', 'w').write('hi')\nprint(open('/tmp/a').read(), os.getcwd())\n"
            "print(os.statvfs('/tmp').f_blocks * os.statvfs('/tmp').f_frsize)")
    result = bwrap(code, disk_mb=5)
    assert result.stdout == f"hi /tmp\n{5 * 2**20}\n"


def test_cli_prints_json(tmp_path, capsys):
    program, stdin = tmp_path / "p.py", tmp_path / "in.txt"
    program.write_text("print(input() * 2)")
    stdin.write_text("ab\n")
    assert sandbox.main([str(program), "--stdin", str(stdin), "--timeout", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "ok" and out["stdout"] == "abab\n" and out["mode"] == "bwrap"


def test_cli_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    assert sandbox.main([str(tmp_path / "missing.py")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.py" in err


def test_python_dash_m_runs_the_cli(tmp_path):
    program = tmp_path / "p.py"
    program.write_text("raise SystemExit(4)")
    done = subprocess.run([sys.executable, "-m", "rewards.sandbox", str(program)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert json.loads(done.stdout)["exit_code"] == 4


def test_rlimits_unsafe_mode_applies_limits():
    result = run_python("import os\nprint(os.getcwd())", isolation="rlimits_unsafe")
    assert result.status == "ok" and result.mode == "rlimits_unsafe"
    cwd = result.stdout.strip()
    assert cwd.startswith("/") and not os.path.exists(cwd)  # its temp dir is removed
    assert run_python("bytearray(300 * 2**20)", memory_mb=128,
                      isolation="rlimits_unsafe").status == "memory"
    slept = run_python("import time\ntime.sleep(30)", timeout_s=0.5, isolation="rlimits_unsafe")
    assert slept.status == "timeout" and slept.wall_s < 5
    spam = run_python("while True: print('z' * 100)", output_bytes=500,
                      isolation="rlimits_unsafe")
    assert spam.status == "output_limit" and len(spam.stdout) <= 500


@pytest.mark.skipif(os.geteuid() != 0, reason="a fresh uid and a network namespace need root")
def test_rlimits_unsafe_drops_root_and_the_network():
    code = "import os, socket\nprint(os.getuid(), os.getgroups(), socket.if_nameindex())"
    uid, rest = run_python(code, isolation="rlimits_unsafe").stdout.split(" ", 1)
    assert int(uid) >= 2**30 and rest == "[] [(1, 'lo')]\n"


def test_old_rlimits_name_points_to_the_unsafe_mode():
    with pytest.raises(ValueError, match="rlimits_unsafe"):
        sandbox.resolve_mode("rlimits")


def test_auto_refuses_to_run_without_bwrap(monkeypatch):
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    sandbox._bwrap_problem.cache_clear()
    try:
        for isolation in ("auto", "bwrap"):
            with pytest.raises(RuntimeError, match="bwrap sandbox unavailable.*rlimits_unsafe"):
                sandbox.resolve_mode(isolation)
            with pytest.raises(RuntimeError, match="bwrap sandbox unavailable"):
                run_python("print(1)", isolation=isolation)
        sandbox._warn_unsafe.cache_clear()
        with pytest.warns(RuntimeWarning, match="UNSAFE"):
            assert run_python("print(1)", isolation="rlimits_unsafe").mode == "rlimits_unsafe"
    finally:
        monkeypatch.undo()
        sandbox._bwrap_problem.cache_clear()
    assert sandbox.resolve_mode("auto") == "bwrap"


def test_caller_limits_are_untouched():
    before = [resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_NPROC)]
    bwrap("print(1)", memory_mb=64, max_processes=5)
    assert [resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_NPROC)] == before
