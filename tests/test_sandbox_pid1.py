"""What the program in the bwrap sandbox can read of the process that started it: bwrap's own
pid 1 in the sandbox's pid namespace, whose command line must carry no host path but the
interpreter's (which the program sees anyway: ``sys.executable``)."""

from __future__ import annotations

import json
import os
import sys

from rewards.sandbox import find_bwrap, run_python

READ_PID1 = """
import json, sys
print(json.dumps({"argv": open("/proc/1/cmdline", "rb").read().decode().split("\\0")[:-1],
                  "python": sys.executable}))
"""


def test_pid_1_command_line_names_no_host_path():
    result = run_python(READ_PID1, "", isolation="bwrap")
    assert result.status == "ok", result.stderr
    seen = json.loads(result.stdout)
    text = "\0".join(seen["argv"])
    assert seen["argv"][0] == "./" + os.path.basename(find_bwrap())
    venv = [sys.prefix] if sys.prefix != sys.base_prefix else []
    for host in (find_bwrap(), os.path.dirname(find_bwrap()), *venv, os.getcwd(),
                 "--ro-bind", "--seccomp", "site-packages"):
        assert host not in text, (host, seen["argv"][:8])
    paths = [a for a in seen["argv"] if a.startswith("/")]
    assert paths == [seen["python"], "/tmp/main.py"], seen["argv"][:8]
