"""``pip install`` of the built package into a fresh virtual environment, then every package imported and the CLI run
from outside the checkout.

r1kit installs its packages under their own top-level names (``rewards``, ``rollouts``,
``grpo``, ``eval``, ``distill``, ``r1kit``, ``bench``), listed explicitly in ``pyproject.toml``
(``[tool.setuptools.packages.find]``). This checks that a non-editable install holds each of them,
that each imports from site-packages (not from the checkout), and that ``r1kit --help`` and
``r1kit bench --help`` (benchmarks found through entry points) work there.

The fresh environment gets the project's dependencies (torch, transformers, ...) by a ``.pth``
line pointing at this test run's own site-packages: a ``.pth`` line adds that folder to
``sys.path`` without running the ``.pth`` files inside it, so the checkout's editable install is
not active there, and the fresh install comes first on the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("rewards", "rollouts", "grpo", "eval", "distill", "r1kit", "bench")


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_pip_install_into_a_fresh_venv_imports_every_package_outside_the_checkout(tmp_path):
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    r = _run([base, "-m", "venv", str(venv)], tmp_path)
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp_path).stdout.strip())
    (site / "r1kit_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    # A copy of the checkout's tracked and untracked files: the build writes build/ and
    # *.egg-info next to pyproject.toml, which must not land in the working tree.
    src = tmp_path / "src"
    files = _run(["git", "ls-files", "-co", "--exclude-standard"], REPO).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((REPO / name).read_bytes())
    # The wheel is built with this environment's setuptools (a fresh venv's is older than
    # pyproject's build requirement, and an isolated build would fetch one), then pip-installed.
    wheels = tmp_path / "wheels"
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
              "--disable-pip-version-check", "-q", "-w", str(wheels), str(src)], tmp_path,
             timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    wheel, = wheels.glob("r1kit-*.whl")
    r = _run([str(py), "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q",
              str(wheel)], tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    code = ("import importlib\n"
            f"for name in {PACKAGES!r}:\n"
            "    m = importlib.import_module(name)\n"
            "    print('FILE', name, m.__file__)\n"
            "import eval.metrics, eval.types, bench.harness, rewards.math, grpo.losses\n")
    r = _run([str(py), "-c", code], outside)
    assert r.returncode == 0, r.stderr[-3000:]
    where = dict(line.split(" ", 2)[1:] for line in r.stdout.splitlines()
                 if line.startswith("FILE "))
    for name in PACKAGES:
        assert where[name].startswith(str(site)), (name, where[name])  # not the checkout's
    assert builtins_eval_ok(py, outside)

    r = _run([str(venv / "bin" / "r1kit"), "--help"], outside)
    assert r.returncode == 0 and "  train" in r.stdout, r.stderr[-2000:]
    r = _run([str(venv / "bin" / "r1kit"), "bench", "--help"], outside)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("rollout", "rewards", "train", "replay", "eval", "distill"):
        assert f"  {name} " in r.stderr, r.stderr


def builtins_eval_ok(py: Path, cwd: Path) -> bool:
    """Importing the ``eval`` package does not hide Python's builtin ``eval`` in other modules."""
    r = _run([str(py), "-c", "import eval, r1kit.cli; import builtins; "
                              "assert builtins.eval('1 + 1') == 2; print(eval.__name__)"], cwd)
    return r.returncode == 0 and r.stdout.strip() == "eval"
