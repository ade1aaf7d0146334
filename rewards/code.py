"""Code rewards: run a completion's program against tests in the sandbox and score it.

Two kinds of tests, both run by ``rewards.sandbox.run_python``:

- stdin/stdout tests (Codeforces / LiveCodeBench style): the program runs once per
  (input, expected output) pair; a pair passes when the run ends ``"ok"`` (exit 0) and the
  whole stdout equals the expected output after ``normalize_output`` (trailing spaces of each
  line and trailing blank lines dropped). The grader compares the output itself, so exiting
  early or printing a success marker gains nothing.
- function tests (HumanEval style: prompt + completion, a ``check(candidate)`` test and an
  entry point). Each top-level statement of ``check`` that contains an ``assert`` is one test.

How function tests are graded without trusting the program:

- the verdict is never the exit code: a trusted harness, run in the same sandboxed process,
  writes one line per test, ``<nonce> <index> <0|1>``, and the grader counts only lines with
  the nonce; missing lines are failures, so ``sys.exit(0)``, ``os._exit(0)`` or a crash
  before or during the asserts cannot pass;
- the nonce (random per run) arrives on stdin, which the harness reads and replaces with
  ``/dev/null`` before any untrusted code runs; the program's own stdout is redirected to
  stderr so it cannot interleave with or forge verdict lines without the nonce;
- the prompt and ``check`` run in a namespace of their own, the completion in another, so
  the completion cannot redefine ``check``, helpers or the names the asserts use;
- every value the candidate returns must be a plain builtin (``int``, ``float``, ``bool``,
  ``str``, ``bytes``, ``complex``, ``None``, and ``list``/``tuple``/``set``/``frozenset``/
  ``dict`` of those, checked by exact type, recursively) before a test sees it, so objects
  whose ``__eq__`` always answers True, or subclasses of int/str/list, fail;
- after the completion's top level and after each call, the harness resets ``sys.settrace``
  and ``sys.setprofile`` and restores the bindings of ``builtins``, ``sys.modules`` and of
  the modules the test uses (e.g. ``abs`` or ``math.isclose`` swapped for a fake).

Not caught: code that introspects the interpreter (``gc``, frames, ``ctypes``) to read the
nonce or rewrite the harness; monkeypatching below module level (class attributes of
stdlib classes, objects inside modules); answers hard-coded for the visible tests; tests
that are themselves wrong or nondeterministic.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rewards.sandbox import ExecResult, run_python

_FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = ("python", "py", "python3")


@dataclass(frozen=True)
class CodeResult:
    """How a program did on its tests."""

    passed: int  # tests passed
    total: int  # tests run or skipped; a test not run counts as failed
    runs: tuple[ExecResult, ...]  # one per sandboxed run

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total


@dataclass(frozen=True)
class HumanEvalProblem:
    """One HumanEval task, as in ``HumanEval.jsonl.gz``."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


def load_humaneval(path: str | Path) -> list[HumanEvalProblem]:
    """Read ``HumanEval.jsonl(.gz)``."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    fields = HumanEvalProblem.__dataclass_fields__
    return [HumanEvalProblem(**{k: row[k] for k in fields}) for row in rows]


def extract_code(completion: str) -> str:
    """The last ```python fenced block, else the last fenced block, else the text.

    >>> extract_code("Try:\\n```python\\nprint(1)\\n```\\nor\\n```python\\nprint(2)\\n```")
    'print(2)\\n'
    >>> extract_code("```\\nx = 1\\n```")
    'x = 1\\n'
    >>> extract_code("print(3)")
    'print(3)'
    """
    blocks = _FENCE.findall(completion)
    python = [body for tag, body in blocks if tag.lower() in _PYTHON_TAGS]
    if python or blocks:
        return (python or [body for _, body in blocks])[-1]
    return completion


def normalize_output(text: str) -> str:
    """Drop trailing whitespace of each line and trailing blank lines.

    >>> normalize_output("1 2 \\r\\n3\\n\\n")
    '1 2\\n3'
    """
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")


def run_stdio_tests(
    code: str,
    tests: Sequence[tuple[str, str]],
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    stop_on_failure: bool = False,
    isolation: str = "auto",
) -> CodeResult:
    """Run ``code`` once per (stdin, expected stdout) pair; see the module docstring."""
    passed, runs = 0, []
    for stdin, expected in tests:
        run = run_python(code, stdin, timeout_s=timeout_s, memory_mb=memory_mb,
                         isolation=isolation)
        runs.append(run)
        ok = run.status == "ok" and normalize_output(run.stdout) == normalize_output(expected)
        passed += ok
        if stop_on_failure and not ok:
            break
    return CodeResult(passed, len(tests), tuple(runs))


def run_function_tests(
    prompt: str,
    completion: str,
    test: str,
    entry_point: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    isolation: str = "auto",
) -> CodeResult:
    """Run HumanEval-style ``test`` (defining ``check``) on ``prompt`` + ``completion``.

    ``completion`` is either the body that continues ``prompt`` or text whose extracted code
    defines ``entry_point`` itself (then it follows the prompt and replaces its stub).
    """
    code = extract_code(completion)
    defines = re.search(rf"^(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE)
    candidate = f"{prompt}\n{code}" if defines else prompt + completion
    instrumented, n_asserts = _instrument_check(test)
    nonce = secrets.token_hex(16)
    args = (prompt, instrumented, candidate, entry_point, _imports(prompt + test), n_asserts)
    program = _HARNESS + f"\n_r1kit_harness(*{args!r})\n"
    run = run_python(program, nonce + "\n", timeout_s=timeout_s, memory_mb=memory_mb,
                     isolation=isolation)
    total = max(n_asserts, 1)
    verdicts = {int(i): ok == "1" for i, ok in
                re.findall(rf"^{nonce} (\d+) ([01])$", run.stdout, re.MULTILINE)}
    passed = sum(bool(verdicts.get(i)) for i in range(total))
    return CodeResult(passed, total, (run,))


def _instrument_check(test: str) -> tuple[str, int]:
    """Wrap each top-level statement of ``check`` that asserts so it reports a verdict."""
    tree = ast.parse(test)
    check = next((node for node in tree.body
                  if isinstance(node, ast.FunctionDef) and node.name == "check"), None)
    if check is None:
        raise ValueError("function test defines no check(candidate)")
    body, n = [], 0
    for stmt in check.body:
        if not any(isinstance(node, ast.Assert) for node in ast.walk(stmt)):
            body.append(stmt)
            continue
        wrapped = ast.parse(
            "try:\n    pass\nexcept BaseException:\n"
            f"    __r1kit_verdict__({n}, 0)\nelse:\n    __r1kit_verdict__({n}, 1)\n"
        ).body[0]
        wrapped.body = [stmt]
        body.append(wrapped)
        n += 1
    check.body = body
    return ast.unparse(ast.fix_missing_locations(tree)), n


def _imports(source: str) -> list[str]:
    """Modules the trusted prompt and test import, imported before the candidate runs."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return sorted(names)


# The trusted part of every function-test program. Runs before any untrusted code.
_HARNESS = r'''
import builtins, os, sys

def _r1kit_harness(prompt, test, candidate, entry_point, imports, n_asserts):
    nonce = os.read(0, 64).decode().strip()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    verdicts = os.dup(1)
    os.dup2(2, 1)  # untrusted prints go to stderr; stdout carries only verdicts

    def verdict(i, ok, write=os.write):
        write(verdicts, ("%s %d %d\n" % (nonce, i, ok)).encode())

    for name in imports:
        try:
            __import__(name)
        except BaseException:
            pass
    tests = {"__name__": "__r1kit_test__", "__r1kit_verdict__": verdict}
    exec(compile(prompt, "<prompt>", "exec"), tests)
    exec(compile(test, "<test>", "exec"), tests)
    check = tests["check"]
    modules = [builtins, sys] + [sys.modules[n] for n in imports if n in sys.modules]
    modules += [v for v in tests.values() if type(v) is type(sys)]
    saved = ([(m, dict(vars(m))) for m in modules], dict(sys.modules))
    namespace = {"__name__": "__r1kit_candidate__"}
    try:
        exec(compile(candidate, "<candidate>", "exec"), namespace)
        function = namespace[entry_point]
    except BaseException:
        function = None
    _r1kit_restore(saved)
    guarded = _r1kit_guard(function, saved)
    tests[entry_point] = guarded  # the test may call the entry point by name
    try:
        check(guarded)
        whole = 1
    except BaseException:
        whole = 0
    if n_asserts == 0:
        verdict(0, whole)

def _r1kit_restore(saved, settrace=sys.settrace, setprofile=sys.setprofile, vars=vars):
    settrace(None)
    setprofile(None)
    module_dicts, modules = saved
    for module, before in module_dicts:
        now = vars(module)
        for key, value in before.items():
            if now.get(key, now) is not value:
                now[key] = value
    for key, value in modules.items():
        if sys.modules.get(key) is not value:
            sys.modules[key] = value

_R1KIT_SCALARS = frozenset(map(id, (int, float, bool, str, bytes, complex, type(None))))
_R1KIT_ITERABLES = frozenset(map(id, (list, tuple, set, frozenset)))

def _r1kit_plain(value, type=type, id=id, limit=10**6):
    stack = [value]
    while stack:
        item = stack.pop()
        kind = id(type(item))
        limit -= 1
        if limit < 0:
            return False
        if kind in _R1KIT_SCALARS:
            continue
        if kind in _R1KIT_ITERABLES:
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(dict.keys(item))
            stack.extend(dict.values(item))
        else:
            return False
    return True

def _r1kit_guard(function, saved, restore=_r1kit_restore, plain=_r1kit_plain):
    def candidate(*args, **kwargs):
        if function is None:
            raise NameError("the completion does not define the entry point")
        try:
            result = function(*args, **kwargs)
        finally:
            restore(saved)
        if not plain(result):
            raise TypeError("the candidate returned a value that is not a plain builtin")
        return result
    return candidate
'''


def _text(completion) -> str:
    """A completion as text: a string, or the last message of a conversation."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return completion["content"]
    return completion[-1]["content"]


def _as_pairs(tests) -> list[tuple[str, str]]:
    """(stdin, expected) pairs from a dataset column: pairs, [{input, output}],
    {inputs: [...], outputs: [...]}, or any of those as a JSON string."""
    if isinstance(tests, str):
        tests = json.loads(tests)
    if isinstance(tests, dict):
        tests = list(zip(tests["inputs"], tests["outputs"], strict=True))
    pairs = [(t["input"], t["output"]) if isinstance(t, dict) else tuple(t) for t in tests]
    if not all(len(p) == 2 and all(isinstance(s, str) for s in p) for p in pairs):
        raise ValueError("stdin/stdout tests must be (input, output) string pairs")
    return pairs


def _pool_map(fn, items: list) -> list:
    with ThreadPoolExecutor(max_workers=max(1, min(len(items), os.cpu_count() or 1))) as pool:
        return list(pool.map(fn, items))


def code_reward(completions: list, tests: list, **row) -> list[float]:
    """1.0 when the completion's program passes every stdin/stdout test of its row, else 0.0.

    >>> double = "```python\\nprint(2 * int(input()))\\n```"
    >>> code_reward([double, "print(6)"], tests=[[("3\\n", "6\\n"), ("5", "10")]] * 2)
    [1.0, 0.0]
    """
    return [1.0 if r.all_passed else 0.0 for r in _stdio_results(completions, tests, True)]


def code_partial_reward(completions: list, tests: list, **row) -> list[float]:
    """The fraction of its row's stdin/stdout tests each completion's program passes.

    >>> code_partial_reward(["print(6)"], tests=[[("3\\n", "6\\n"), ("5", "10")]])
    [0.5]
    """
    return [r.fraction for r in _stdio_results(completions, tests, False)]


def _stdio_results(completions: list, tests: list, stop: bool) -> list[CodeResult]:
    jobs = list(zip(map(_text, completions), tests, strict=True))
    return _pool_map(
        lambda job: run_stdio_tests(extract_code(job[0]), _as_pairs(job[1]),
                                    stop_on_failure=stop), jobs)


def humaneval_reward(
    completions: list, prompt: list, test: list, entry_point: list, **row
) -> list[float]:
    """1.0 when the completion passes every assert of its row's ``check``, else 0.0.

    >>> p = "def add(a, b):\\n    'Return a + b.'\\n"
    >>> t = "def check(candidate):\\n    assert candidate(1, 2) == 3\\n    assert candidate(2, 2) == 4\\n"
    >>> humaneval_reward(["    return a + b\\n", "    return 3\\n"], prompt=[p] * 2,
    ...                  test=[t] * 2, entry_point=["add"] * 2)
    [1.0, 0.0]
    """
    jobs = list(zip(map(_text, completions), prompt, test, entry_point, strict=True))
    results = _pool_map(lambda job: run_function_tests(job[1], job[0], job[2], job[3]), jobs)
    return [1.0 if r.all_passed else 0.0 for r in results]
