"""One direction of dependency between the packages (../shared/STYLE.md, principle 11).

The seven top-level packages are floors, from top to bottom:

    bench -> r1kit -> distill -> grpo | eval -> rewards | rollouts

A package imports only packages on lower floors: never one above, never its sibling on the same
floor. import-linter checks this with the contracts in pyproject.toml ([tool.importlinter]), and
`test_contracts_hold` runs it, so `make test` is the CI gate; function-local and type-only
imports count there too.

What the tool's contracts do not say, checked here on the syntax trees of the source:

- A library (rewards, rollouts, grpo, eval, distill) imports another project package only at
  module level. A function-local one hides a dependency from the module's header and is most
  often a cycle worked around. Function-local imports of heavy optional third-party libraries
  (vllm, transformers, ...) stay allowed.
- No import cycle between modules through module-level imports, nor between packages through any
  import. The contracts imply both; asserting them without the tool means that a contract
  weakened by mistake still cannot let a cycle in. Imports under `if TYPE_CHECKING:` count: a
  type-only import is still a dependency.

Each check also runs on a small synthetic tree, to show that it can fail as well as pass.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "r1kit", "distill", "grpo", "eval", "rewards", "rollouts")
LIBRARIES = ("rewards", "rollouts", "grpo", "eval", "distill")

Graph = dict[str, dict[str, str]]  # importer -> {imported: "path:line" of the import}


class Import(NamedTuple):
    line: int
    module: str  # absolute: `from .x import y` in package p gives "p.x"
    names: tuple[str, ...]  # the `y` of `from x import y`; () for `import x`
    local: bool  # inside a function or method body


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every module of `packages` under `root` by dotted name; a package is its __init__.py."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports(module: str, path: Path) -> Iterator[Import]:
    """The import statements of one file, relative ones made absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, local: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(child.lineno, alias.name, (), local)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # `from ..x import y`: up level - 1 packages from this one
                    anchor = package.rsplit(".", child.level - 1)[0]
                    base = f"{anchor}.{base}" if base else anchor
                yield Import(child.lineno, base, tuple(a.name for a in child.names), local)
            inner = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            yield from visit(child, local or inner)

    yield from visit(ast.parse(path.read_text(), str(path)), local=False)


def targets(imp: Import, modules: dict[str, Path]) -> set[str]:
    """The project modules an import names: `from a import b` is `a.b` if that is a module."""
    names = [f"{imp.module}.{name}" for name in imp.names] or [imp.module]
    return {module for name in names if (module := longest_module(name, modules))}


def longest_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is a project module (`a.b.func` -> `a.b`)."""
    parts = name.split(".")
    prefixes = (".".join(parts[:n]) for n in range(len(parts), 0, -1))
    return next((prefix for prefix in prefixes if prefix in modules), None)


def module_graph(root: Path, packages: Iterable[str], *, local: bool = False) -> Graph:
    """Module -> the project modules it imports; function-local imports only if `local`."""
    modules = module_files(root, packages)
    graph: Graph = {module: {} for module in modules}
    for module, path in modules.items():
        for imp in imports(module, path):
            if imp.local and not local:
                continue
            for target in targets(imp, modules) - {module}:
                graph[module].setdefault(target, f"{path.relative_to(root)}:{imp.line}")
    return graph


def package_graph(modules: Graph) -> Graph:
    """The module graph with each module replaced by its top-level package."""
    graph: Graph = {}
    for importer, imported in modules.items():
        edges = graph.setdefault(importer.split(".")[0], {})
        for target, where in imported.items():
            if target.split(".")[0] != importer.split(".")[0]:
                edges.setdefault(target.split(".")[0], where)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one node, each as an import list."""
    reach = {node: reachable(graph, node) for node in graph}
    components = {frozenset(n for n in reach[node] if node in reach[n]) for node in graph}
    return sorted(
        sorted(f"{a} -> {b} ({where})" for a in c for b, where in graph[a].items() if b in c)
        for c in components
        if len(c) > 1
    )


def reachable(graph: Graph, start: str) -> set[str]:
    """The nodes at the end of a path of one edge or more from `start` (itself if on a cycle)."""
    seen, stack = set(), [start]
    while stack:
        for node in graph.get(stack.pop(), {}):
            if node not in seen:
                seen.add(node)
                stack.append(node)
    return seen


def function_local_imports(root: Path, libraries: Iterable[str]) -> list[str]:
    """`path:line: module` of each import of another project package inside a function."""
    offenders = []
    for module, path in module_files(root, libraries).items():
        for imp in imports(module, path):
            top = imp.module.split(".")[0]
            if imp.local and top in PACKAGES and top != module.split(".")[0]:
                offenders.append(f"{path.relative_to(root)}:{imp.line}: {imp.module}")
    return offenders


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """Run the venv's lint-imports in `cwd`, on the contracts of `cwd`/pyproject.toml."""
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), f"{lint} is missing: `make setup` installs the dev extra"
    command = [lint, "--no-cache", "--no-logo"]  # no cache folder left in the tree
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """The seven packages, empty, under `root`, plus `files` (path -> source) and our contracts."""
    (root / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    for package in PACKAGES:
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
    for name, source in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source)
    return root


# ---- the repository


def test_contracts_hold():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_libraries_import_project_packages_at_module_level_only():
    offenders = function_local_imports(ROOT, LIBRARIES)
    assert not offenders, "function-local imports of another package:\n" + "\n".join(offenders)


def test_no_import_cycle_between_modules():
    found = cycles(module_graph(ROOT, PACKAGES))
    assert not found, "module import cycles:\n" + "\n\n".join("\n".join(c) for c in found)


def test_no_import_cycle_between_packages():
    found = cycles(package_graph(module_graph(ROOT, PACKAGES, local=True)))
    assert not found, "package import cycles:\n" + "\n\n".join("\n".join(c) for c in found)


# ---- the checks themselves, on synthetic trees

CLEAN = {
    "rewards/math/__init__.py": "from .grade import grade\n",
    "rewards/math/grade.py": "from ..format import fmt\ndef grade(): ...\n",
    "rewards/format.py": "import re\ndef fmt(): ...\n",
    "rollouts/engine.py": "def load():\n    import vllm\n    from .types import T\n",
    "rollouts/types.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n",
    "grpo/trainer.py": "from rewards.format import fmt\nfrom rollouts import engine\n",
    "distill/sft.py": "from grpo.trainer import x\nfrom eval import metrics\n",
    "r1kit/cli.py": "import distill.sft\n",
    "bench/train.py": "from r1kit import cli\n",
}


def test_checks_pass_on_a_clean_tree(tmp_path):
    root = write_tree(tmp_path, CLEAN)
    assert function_local_imports(root, LIBRARIES) == []
    graph = module_graph(root, PACKAGES, local=True)
    assert graph["rewards.math.grade"] == {"rewards.format": "rewards/math/grade.py:1"}
    assert set(graph["rewards.math"]) == {"rewards.math.grade"}
    assert set(graph["grpo.trainer"]) == {"rewards.format", "rollouts.engine"}
    assert cycles(graph) == [] and cycles(package_graph(graph)) == []
    run = lint_imports(root)
    assert run.returncode == 0, run.stdout + run.stderr


def test_function_local_import_of_another_package_is_found(tmp_path):
    source = (
        "import rewards\n"
        "class Engine:\n"
        "    def step(self):\n"
        "        import vllm\n"
        "        from . import types\n"
        "        async def inner():\n"
        "            from grpo.routing import route\n"
    )
    root = write_tree(tmp_path, {"rollouts/engine.py": source})
    assert function_local_imports(root, LIBRARIES) == ["rollouts/engine.py:7: grpo.routing"]


def test_module_cycle_is_found_type_only_and_relative_imports_included(tmp_path):
    files = {
        "grpo/update.py": "from grpo.parallel import unpack\n",
        "grpo/parallel.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .update import Sums\n"
        ),
    }
    root = write_tree(tmp_path, files)
    assert cycles(module_graph(root, PACKAGES)) == [
        [
            "grpo.parallel -> grpo.update (grpo/parallel.py:3)",
            "grpo.update -> grpo.parallel (grpo/update.py:1)",
        ]
    ]


def test_package_cycle_is_found_through_a_function_local_import(tmp_path):
    files = {"eval/report.py": "import grpo\n", "grpo/trainer.py": "def f():\n    import eval\n"}
    root = write_tree(tmp_path, files)
    assert cycles(module_graph(root, PACKAGES)) == []
    assert cycles(package_graph(module_graph(root, PACKAGES, local=True))) == [
        ["eval -> grpo (eval/report.py:1)", "grpo -> eval (grpo/trainer.py:2)"]
    ]


@pytest.mark.parametrize(
    ("files", "culprit"),
    [
        ({"rewards/sandbox.py": "def f():\n    import torch.nn\n"}, "rewards.sandbox -> torch"),
        ({"rollouts/hf.py": "from rewards import x\n"}, "rollouts.hf -> rewards"),
        ({"grpo/setup.py": "def f():\n    import r1kit\n"}, "grpo.setup -> r1kit"),
        (
            {"eval/a.py": "from eval import b\n", "eval/b.py": "def f():\n    import eval.a\n"},
            "No cycles are allowed in eval",
        ),
    ],
    ids=["rewards-torch", "siblings", "upward", "cycle"],
)
def test_contracts_break_on_a_violation(tmp_path, files, culprit):
    run = lint_imports(write_tree(tmp_path, files))
    assert run.returncode == 1 and "BROKEN" in run.stdout, run.stdout + run.stderr
    assert culprit in run.stdout, run.stdout
