"""Code rewards: run a completion's program against tests in the sandbox and score it.

Two kinds of tests, both run by ``rewards.sandbox.run_python``:

- stdin/stdout tests (Codeforces / LiveCodeBench style): the program runs once per
  (input, expected output) pair; a pair passes when the run ends ``"ok"`` (exit 0) and the
  whole stdout equals the expected output after ``normalize_output`` (trailing spaces of each
  line and trailing blank lines dropped). The grader compares the output itself, so exiting
  early or printing a success marker gains nothing.
- function tests (HumanEval style: prompt + completion, a ``check(candidate)`` test and an
  entry point). Each top-level statement of ``check`` that contains an ``assert`` is one test.

How function tests are graded without trusting the program. Whatever runs in the
candidate's process can rewrite that process (frames, ``gc``, ``/proc/self/fd``, builtins,
``atexit``, its exit status), so no verdict is ever computed or reported there:

- the candidate's process only computes outputs: it gets the calls (plain-data inputs) on
  stdin, runs the completion, calls the entry point on each and writes one line per call,
  ``<k>\t["ok", result, [args, kwargs] after the call]`` or ``["raise", exception name]``.
  Results and arguments must be plain data (``None``, ``bool``, ``int``, ``float``,
  ``complex``, ``str``, ``bytes``, and ``list``/``tuple``/``dict``/``set``/``frozenset``/
  ``Counter``/``OrderedDict`` of those, exact types), serialised by ``_encode``; anything else is a failure, never an
  exception a test could expect;
- the grader reads only those lines: each is decoded by ``_decode`` into fresh plain
  objects and re-encoded, and a call with no valid line, or two, is "missing". The exit
  status, stderr and timing are never read, so exiting early, a signal death or a fake
  timeout only loses the calls not answered yet;
- the test runs in a process of its own where no candidate code ever runs: the prompt and
  ``check``, with ``candidate`` (and the entry point's name) bound to a replayer that
  returns the decoded output for each call (re-applying in-place changes to list, dict and
  set arguments, re-raising builtin exceptions by name). So every assert, tolerance and
  helper of the test is evaluated by the test's own code on plain data, with plain ``==``
  (NaN equals nothing, as in Python), and it works for any ``check``, not only
  ``assert f(x) == y`` lines;
- the inputs are found by running the test first: a call with no output yet is written
  out as wanted and answered with a placeholder that compares true and absorbs arithmetic,
  so loops and later asserts are explored too; ``random`` is reseeded before each test so
  every round draws the same inputs. Then the candidate runs on the wanted calls and the
  test runs again, up to ``_MAX_ROUNDS`` test runs (inputs computed from earlier outputs
  need one more round each). A test passes only if it ran to the end and every call it
  made was answered by the candidate: a placeholder, a missing output, or inputs that are
  not plain data (a lambda, an object) fail it.

A program can therefore only answer calls; whatever it writes is read as its answers, so
it can do no better than some function returning those answers. Not caught: answers
hard-coded for the visible tests (HumanEval prompts show examples); under the explicit
``rlimits_unsafe`` isolation (``auto`` never falls back to it), reading the dataset or other
processes of the same uid from disk;
tests that are themselves weak (``assert candidate(x)`` passes any truthy value) or
nondeterministic. A candidate gets each distinct input once, with all of them known up
front, so a function whose answer depends on call order or object identity (``is``
between an argument and the result) is graded as if it had none.
"""

from __future__ import annotations

import ast
import gzip
import inspect
import json
import os
import re
from collections import Counter as _Counter
from collections import OrderedDict as _OrderedDict
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
    defines ``entry_point`` itself (then it follows the prompt and replaces its stub). The
    candidate and the test never share a process; see the module docstring.
    """
    code = extract_code(completion)
    defines = re.search(rf"^(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE)
    # A fenced body continues the prompt like a bare one (the fence itself would not parse).
    candidate = f"{prompt}\n{code}" if defines else prompt + code
    instrumented, n_asserts = _instrument_check(test)
    limits = {"timeout_s": timeout_s, "memory_mb": memory_mb, "isolation": isolation}
    test_program = _program(_TEST_HARNESS, "_r1kit_tests", prompt, instrumented, entry_point,
                            n_asserts)
    candidate_program = _program(_CANDIDATE_HARNESS, "_r1kit_candidate", candidate, entry_point)
    known: dict[str, list] = {}  # call (canonical JSON) -> the candidate's checked outcome
    runs = []
    for round_ in range(_MAX_ROUNDS):
        run = _first_test_run(test_program, limits) if round_ == 0 else \
            run_python(test_program, json.dumps(known), **limits)
        runs.append(run)
        verdicts, wanted = _read_test_run(run.stdout)
        new = [call for call in dict.fromkeys(wanted) if call not in known]
        if not new or round_ == _MAX_ROUNDS - 1:
            break
        calls = json.dumps([json.loads(call) for call in new])
        run = run_python(candidate_program, calls, **limits)
        runs.append(run)
        known.update(zip(new, _read_candidate_run(run.stdout, len(new)), strict=True))
    total = max(n_asserts, 1)
    passed = sum(verdicts.get(i, False) for i in range(total))
    return CodeResult(passed, total, tuple(runs))


_MAX_ROUNDS = 4  # test runs per grading; calls whose inputs depend on outputs need more
_FIRST_RUNS: dict[tuple, ExecResult] = {}  # first test runs, the same for every completion


def _first_test_run(program: str, limits: dict) -> ExecResult:
    """The test run with no outputs known yet; cached, since it only depends on the test
    (GRPO grades many completions of one prompt)."""
    key = (program, *sorted(limits.items()))
    if key not in _FIRST_RUNS:
        run = run_python(program, "{}", **limits)
        if run.status != "ok":
            return run  # a slow machine or a broken test: try again next time
        if len(_FIRST_RUNS) >= 1024:
            _FIRST_RUNS.pop(next(iter(_FIRST_RUNS)), None)
        _FIRST_RUNS[key] = run
    return _FIRST_RUNS[key]


def _read_test_run(stdout: str) -> tuple[dict[int, bool], list[str]]:
    """Verdicts (``V <i> <0|1>``) and calls still wanted (``W <call>``) of a test run.

    Only trusted code ran in that process; its own prints went to stderr.
    """
    verdicts, wanted = {}, []
    for line in stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "V":
            index, ok = rest.split()
            verdicts[int(index)] = ok == "1"
        elif tag == "W":
            wanted.append(rest)
    return verdicts, wanted


def _read_candidate_run(stdout: str, n: int) -> list[list]:
    """The outcome of each of ``n`` calls from an untrusted ``<k>\\t<json>`` listing.

    Every line is checked and re-encoded here; a call with no valid line, or with two
    lines, is ``["missing"]``, which fails every test that makes it. Nothing else of the
    run (exit status, stderr, timing) is read.
    """
    found: dict[int, list] = {}
    twice = set()
    for line in stdout.splitlines():
        index, tab, payload = line.partition("\t")
        if tab and re.fullmatch(r"[0-9]{1,9}", index) and int(index) < n:
            twice.update({int(index)} & found.keys())
            found[int(index)] = _checked_outcome(payload)
    return [found[k] if k in found and k not in twice else ["missing"] for k in range(n)]


def _checked_outcome(payload: str) -> list:
    """``["ok", result, [args, kwargs] after the call]`` or ``["raise", exception name]``,
    re-encoded from plain data, else ``["missing"]``."""
    try:
        outcome = json.loads(payload)
        if outcome[0] == "ok" and len(outcome) == 3:
            result, after = _decode(outcome[1]), _decode(outcome[2])
            if type(after) is list and len(after) == 2 and type(after[1]) is dict:
                return ["ok", _encode(result), _encode(after)]
        name = outcome[1] if outcome[0] == "raise" and len(outcome) == 2 else None
        if type(name) is str and name.isidentifier() and len(name) < 100:
            return ["raise", name]
    except (ValueError, TypeError, KeyError, IndexError, RecursionError, OverflowError):
        pass
    return ["missing"]


def _read_stdin_keep_stdout():
    """In a harness process: the JSON document on stdin, and a private copy of stdout; fd 1
    then points at stderr, so what the code under test prints never reaches the grader."""
    import json
    import os

    chunks = []
    while chunk := os.read(0, 1 << 16):
        chunks.append(chunk)
    data = json.loads(b"".join(chunks))
    out = os.dup(1)
    os.dup2(2, 1)
    return data, out


# The codec's source is copied into the harnesses: they import these names the same way.
_CODEC_IMPORTS = "from collections import Counter as _Counter, OrderedDict as _OrderedDict"


def _encode(value):
    """Plain data as JSON-ready tagged lists, exact types only (``collections.Counter`` and
    ``OrderedDict`` count as plain: they rebuild exactly from their items); anything else
    raises TypeError. Sets are sorted, so equal inputs encode alike.

    >>> _encode((1, [2.5, "a"], {None: {True}}))
    ['t', [['i', '0x1'], ['l', [['f', '2.5'], ['s', 'a']]], ['d', [[['n'], ['e', [['b', 1]]]]]]]]
    """
    kind = type(value)
    if value is None:
        return ["n"]
    if kind is bool:
        return ["b", int(value)]
    if kind is int:
        return ["i", hex(value)]
    if kind is float:
        return ["f", repr(value)]
    if kind is complex:
        return ["c", repr(value.real), repr(value.imag)]
    if kind is str:
        return ["s", value]
    if kind is bytes:
        return ["y", value.hex()]
    if kind is list or kind is tuple:
        return ["l" if kind is list else "t", [_encode(item) for item in value]]
    if kind is dict or kind is _Counter or kind is _OrderedDict:
        tag = "d" if kind is dict else "C" if kind is _Counter else "O"
        return [tag, [[_encode(k), _encode(v)] for k, v in value.items()]]
    if kind is set or kind is frozenset:
        return ["e" if kind is set else "z", sorted((_encode(v) for v in value), key=repr)]
    raise TypeError(f"not plain data: {kind.__name__}")


def _decode(data):
    """The plain value ``_encode`` made ``data`` from; ValueError/TypeError if malformed.

    >>> x = (1, [2.5, float("inf")], {"k": {3j, b"x"}}, frozenset(), False, -7)
    >>> _decode(_encode(x)) == x and _encode(_decode(_encode(x))) == _encode(x)
    True
    """
    tag, *rest = data if type(data) is list else [None]
    arg = rest[0] if len(rest) == 1 else None
    if tag == "n" and not rest:
        return None
    if tag == "b" and arg in (0, 1) and type(arg) is int:
        return bool(arg)
    if type(arg) is str and tag in ("i", "f", "s", "y"):
        if tag == "i":
            return int(arg, 16)
        return float(arg) if tag == "f" else arg if tag == "s" else bytes.fromhex(arg)
    if tag == "c" and len(rest) == 2 and all(type(part) is str for part in rest):
        return complex(float(rest[0]), float(rest[1]))
    if tag in ("l", "t", "e", "z") and type(arg) is list:
        kind = {"l": list, "t": tuple, "e": set, "z": frozenset}[tag]
        return kind(_decode(item) for item in arg)
    if tag in ("d", "C", "O") and type(arg) is list and all(
            type(p) is list and len(p) == 2 for p in arg):
        items = {_decode(key): _decode(value) for key, value in arg}
        return items if tag == "d" else _Counter(items) if tag == "C" else _OrderedDict(items)
    raise ValueError(f"malformed plain data: {str(data)[:80]}")


def _instrument_check(test: str) -> tuple[str, int]:
    """Wrap each top-level statement of ``check`` that asserts so it reports a verdict, and
    turn its asserts into ``__r1kit_failed__`` calls (which raise only while no placeholder
    was met, so that exploring a test goes on past asserts it already failed)."""
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
        begin, wrapped = ast.parse(
            f"__r1kit_begin__({n})\ntry:\n    pass\nexcept BaseException:\n"
            f"    __r1kit_verdict__({n}, 0)\nelse:\n    __r1kit_verdict__({n}, 1)\n"
        ).body
        wrapped.body = [_SoftAsserts().visit(stmt)]
        body += [begin, wrapped]
        n += 1
    check.body = body
    return ast.unparse(ast.fix_missing_locations(tree)), n


class _SoftAsserts(ast.NodeTransformer):
    """``assert test, msg`` -> ``if not test: __r1kit_failed__(msg)``."""

    def visit_Assert(self, node: ast.Assert) -> ast.If:
        failed = ast.Call(ast.Name("__r1kit_failed__", ast.Load()),
                          [node.msg or ast.Constant(None)], [])
        return ast.If(ast.UnaryOp(ast.Not(), node.test), [ast.Expr(failed)], [])


def _program(harness: str, main: str, *args) -> str:
    """A harness with the codec's and the stdin reader's source, then a call of its ``main``
    on ``args``."""
    codec = "\n".join([_CODEC_IMPORTS] + [inspect.getsource(f)
                       for f in (_read_stdin_keep_stdout, _encode, _decode)])
    return f"{harness}\n{codec}\n{main}(*{args!r})\n"


# The candidate's process: it gets the calls (plain data) on stdin and writes one line per
# call on stdout. Nothing it writes is trusted: the grader checks every line.
_CANDIDATE_HARNESS = r'''
import json, os

def _r1kit_candidate(source, entry_point):
    calls, out = _read_stdin_keep_stdout()  # the candidate's own prints go to stderr
    namespace = {"__name__": "__r1kit_candidate__"}
    try:
        exec(compile(source, "<candidate>", "exec"), namespace)
        function = namespace[entry_point]
    except BaseException:
        function = None
    for k, call in enumerate(calls):
        args, kwargs = _decode(call)
        try:
            if function is None:
                raise NameError("the completion does not define " + entry_point)
            result = function(*args, **kwargs)
        except BaseException as err:
            outcome = ["raise", type(err).__name__]
        else:
            try:
                outcome = ["ok", _encode(result), _encode([args, kwargs])]
            except BaseException:
                outcome = ["not plain data"]  # read as missing: fails, never an exception
        os.write(out, b"%d\t%s\n" % (k, json.dumps(outcome).encode()))
'''

# The test's process: only the prompt, the test and this harness run here. ``candidate``
# answers from the outcomes the grader checked; a call with no outcome yet is recorded as
# wanted and answered by a placeholder so that the rest of the test can still be explored.
# A test that met a placeholder, a missing outcome or inputs that are not plain data fails.
_TEST_HARNESS = r'''
import builtins, json, os, random

class _R1kitPending:
    """Stands in for an output not known yet: compares true, absorbs arithmetic."""
    def _true(self, *args):
        return True
    def _same(self, *args):
        return self
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __contains__ = __bool__ = _true
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = _same
    __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = _same
    __rpow__ = __neg__ = __pos__ = __abs__ = __round__ = __getitem__ = __call__ = _same
    __getattr__ = _same
    __hash__ = __len__ = __int__ = __index__ = lambda self: 0
    __float__ = lambda self: 0.0
    __iter__ = lambda self: iter(())

class _R1kitNoOutput(BaseException):
    """The candidate gave no valid output for this call."""

class _R1kitRaised(Exception):
    """The candidate raised an exception that is not a builtin one."""

def _r1kit_tests(prompt, test, entry_point, n_asserts):
    known, out = _read_stdin_keep_stdout()  # the test's own prints go to stderr
    clean = [True]  # the current test met no placeholder and no missing output

    def write(line):
        os.write(out, (line + "\n").encode())

    def begin(i):
        clean[0] = True
        random.seed(i)  # the same inputs in every round

    def verdict(i, ok):
        write("V %d %d" % (i, ok and clean[0]))

    def failed(message):
        if clean[0]:
            raise AssertionError(message)

    def candidate(*args, **kwargs):
        try:
            call = json.dumps(_encode([list(args), kwargs]))
        except (TypeError, RecursionError):
            clean[0] = False
            return _R1kitPending()
        if call not in known:
            clean[0] = False
            write("W " + call)
            return _R1kitPending()
        return _r1kit_replay(known[call], args, kwargs, clean)

    tests = {"__name__": "__r1kit_test__", "__r1kit_begin__": begin,
             "__r1kit_verdict__": verdict, "__r1kit_failed__": failed}
    random.seed(0)
    exec(compile(prompt, "<prompt>", "exec"), tests)
    exec(compile(test, "<test>", "exec"), tests)
    check = tests["check"]
    tests[entry_point] = candidate  # the test may call the entry point by name
    begin(0)
    try:
        check(candidate)
        whole = 1
    except BaseException:
        whole = 0
    if n_asserts == 0:
        verdict(0, whole)

def _r1kit_replay(outcome, args, kwargs, clean):
    if outcome[0] == "ok":
        after_args, after_kwargs = _decode(outcome[2])
        for old, new in zip([*args, *kwargs.values()], [*after_args, *after_kwargs.values()]):
            if type(old) is type(new) and type(old) is list:
                old[:] = new  # the candidate changed its argument in place
            elif type(old) is type(new) and type(old) in (dict, set):
                old.clear()
                old.update(new)
        return _decode(outcome[1])
    if outcome[0] == "raise":
        kind = getattr(builtins, outcome[1], None)
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            kind = _R1kitRaised
        try:
            error = kind("raised by the candidate")
        except Exception:
            error = _R1kitRaised(outcome[1])
        raise error
    clean[0] = False
    raise _R1kitNoOutput()
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
