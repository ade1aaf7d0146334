"""Code suites: HumanEval, MBPP and LiveCodeBench, graded in the sandbox by ``rewards.code``.

Every completion goes through the training rewards' own functions: the answer part
(``eval.types.answer_part``, ``<answer>`` tags dropped) is reduced to code by
``rewards.code.extract_code``, then graded by ``run_function_tests`` (function tests; the
candidate and the test never share a process) or ``run_stdio_tests`` (stdin/stdout tests),
one sandbox run per program, many completions at once on a thread pool. A completion is
correct when it passes every test; ``Grade.detail`` says ``"3/5 tests"`` (with the first run
that did not end ``ok``), or ``"no code found"``. Garbage never raises: it passes no test.

Where a suite departs from ``code_reward`` / ``humaneval_reward``:

- MBPP: ``test_list`` becomes a ``def check(candidate)`` holding the asserts (the harness
  binds the function's name to the replayer), with ``import`` lines for modules the asserts
  use. A few-shot completion is the code up to ``[DONE]``.
- LiveCodeBench: like LCB's own grader, the program gets LCB's import prelude (``from typing
  import *``, ``collections``, ``math``, ... and ``sys.setrecursionlimit(50000)``), since its
  starter code uses ``List[int]`` unimported. LeetCode ("functional") tests call
  ``Solution().<func_name>(*args)`` through a module-level wrapper appended to the program;
  the arguments are the test input's lines, each a JSON value, and the result must equal the
  JSON output (a tuple counts as a list, as in LCB). Public and private tests are both run where
  the rows carry ``private_test_cases`` (the hub's ``code_generation_lite`` does, as JSON or as
  LCB's base64 zlib pickle, read by ``lcb_private_tests`` without running any pickled code);
  ``meta["private_tests"]`` counts them, and the report labels a suite scored without them
  (the local ``public_tests_400.jsonl`` has none). As in LCB's runner (``lcb_runner/evaluation/
  testing_util.py``): every stdin test gets 6 seconds (``LCB_TIMEOUT_S``), a problem's tests
  stop at the first failure, and stdout matches when, after stripping the whole text and then
  each line, it has as many lines as the expected output and each line is equal or, read as
  whitespace-separated decimals, equal in value (``lcb_output_matches``). Where it departs: a
  stdin test is a fresh sandboxed process, so interpreter start-up counts against the 6 seconds
  and a non-zero exit fails the test (LCB runs the code in-process and ignores ``SystemExit``);
  the LeetCode tests of a problem run in one process with 6 seconds per test summed over them,
  all of them (the passed count goes on past a failure).
  ``eval.lcb_window`` keeps problems whose contest date falls in a window (``lcb_filter``).
"""

from __future__ import annotations

import ast
import base64
import builtins
import datetime
import io
import json
import os
import pickle
import re
import sys
import textwrap
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation

from eval.types import EvalProblem, Grade, Source, Suite, answer_part
from rewards.code import CodeResult, extract_code, run_function_tests, run_stdio_tests
from rewards.code import _as_pairs as stdio_pairs  # code_reward's reading of a tests column
from rewards.sandbox import run_python

# --- shared --------------------------------------------------------------------------------


def answer_text(completion) -> str:
    """The text that holds a completion's code: after ``</think>``, inside ``<answer>`` tags
    when there are any (the last pair), leading blank lines dropped; never raises.

    >>> answer_text("think</think> <answer>\\n```python\\nx = 1\\n```\\n</answer>")
    '```python\\nx = 1\\n```\\n'
    >>> answer_text(None)
    ''
    """
    if not isinstance(completion, str):
        return ""
    # Lone surrogates (from a JSON "\\ud800") cannot be encoded for the sandbox.
    text = answer_part(completion.encode("utf-8", "replace").decode("utf-8"))
    if "<answer>" in text:
        text = text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    return re.sub(r"\A(?:[ \t]*\r?\n)+", "", text)


def _verdict(result: CodeResult) -> Grade:
    """``3/5 tests``, with the first sandbox run that did not end ``ok``."""
    bad = next((run.status for run in result.runs if run.status != "ok"), None)
    detail = f"{result.passed}/{result.total} tests" + (f" ({bad})" if bad else "")
    return Grade(result.all_passed, None, detail)


def _grade_all(one: Callable[[EvalProblem, str], Grade]) -> Callable:
    """A ``Suite.grade`` that runs ``one(problem, answer_text)`` for every completion on a
    thread pool (sandbox runs are subprocesses, so threads keep every core busy)."""

    def grade(problems: Sequence[EvalProblem], completions: Sequence[str]) -> list[Grade]:
        if len(problems) != len(completions):
            raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
        jobs = [(p, answer_text(c)) for p, c in zip(problems, completions)]
        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            return list(pool.map(lambda job: one(*job), jobs))

    grade.__doc__ = one.__doc__
    return grade


def _program(text: str) -> str | None:
    """A whole program from answer text (fenced block or bare code), None if empty."""
    code = textwrap.dedent(extract_code(text))
    return code if code.strip() else None


# --- function tests (HumanEval, user suites) -----------------------------------------------


def _function_one(problem: EvalProblem, text: str) -> Grade:
    """Grade against a HumanEval-style gold ``{prompt, test, entry_point}``: the code either
    continues the prompt (a body) or defines the entry point itself."""
    gold = problem.gold
    code = extract_code(text)
    if not code.strip():
        return Grade(False, None, "no code found")
    return _verdict(run_function_tests(gold["prompt"], code, gold["test"], gold["entry_point"]))


grade_function = _grade_all(_function_one)


def _humaneval(rows: list[dict]) -> list[EvalProblem]:
    return [EvalProblem(
        r["task_id"],
        "Complete the following Python function.\n\n"
        f"```python\n{r['prompt']}```\n\n"
        "Write the whole function, signature included, in one ```python code block.",
        {"prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"]},
        r["prompt"] + r["canonical_solution"]) for r in rows]


# --- stdin/stdout tests (user suites) ------------------------------------------------------


def _stdio_one(problem: EvalProblem, text: str) -> Grade:
    """Grade against gold ``{"stdio": tests}`` (any layout ``code_reward`` reads: pairs,
    ``[{input, output}]``, ``{inputs, outputs}``, as JSON text too): every pair in the sandbox."""
    code = _program(text)
    if code is None:
        return Grade(False, None, "no code found")
    return _verdict(run_stdio_tests(code, stdio_pairs(problem.gold["stdio"])))


grade_stdio = _grade_all(_stdio_one)


# --- MBPP ----------------------------------------------------------------------------------

MBPP_TEST_IDS = range(11, 511)  # the test split of the full MBPP (Austin et al. 2021)
MBPP_SHOT_IDS = (2, 3, 4)  # the prompt-split exemplars of the standard 3-shot prompt


def _mbpp_task(text: str, tests: Sequence[str]) -> str:
    tests_text = "\n".join(tests)
    return (f"You are an expert Python programmer, and here is your task: {text} "
            f"Your code should pass these tests:\n\n{tests_text}\n")


def mbpp_few_shot(problem: EvalProblem) -> str:
    """The standard 3-shot MBPP prompt (Austin et al. 2021): the model writes code, then
    ``[DONE]``.

    >>> p = EvalProblem("11", "?", {"tests": ["assert f(1) == 1"]}, meta={"text": "Do f.",
    ...                 "shots": "SHOTS\\n"})
    >>> print(mbpp_few_shot(p))
    SHOTS
    You are an expert Python programmer, and here is your task: Do f. Your code should pass these tests:
    <BLANKLINE>
    assert f(1) == 1
    [BEGIN]
    <BLANKLINE>
    """
    if not problem.meta.get("shots"):
        raise ValueError("the MBPP few-shot prompt needs the prompt-split rows (task ids 2-4); "
                         "load split 'prompt+test' or the whole mbpp.jsonl")
    return f"{problem.meta['shots']}{_mbpp_task(problem.meta['text'], problem.gold['tests'])}" \
           "[BEGIN]\n"


def _parse(source: str) -> ast.Module:
    """``ast.parse`` without the warnings of old code (``"\\w"`` escapes in MBPP)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(source)


def mbpp_entry_point(tests: Sequence[str], code: str) -> str:
    """The function the asserts test: the first one they call that ``code`` defines, else the
    first called name that is not a builtin.

    >>> mbpp_entry_point(["assert set(f([1])) == {1}"], "def g(): pass\\ndef f(x): return x")
    'f'
    """
    called = [node.func.id for test in tests for node in ast.walk(_parse(test))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
    try:
        defined = {node.name for node in ast.walk(_parse(code))
                   if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    except SyntaxError:
        defined = set()
    name = next((name for name in called if name in defined),
                next((name for name in called if not hasattr(builtins, name)), None))
    if name is None:
        raise ValueError(f"MBPP tests call no function: {tests[:1]}")
    return name


def mbpp_check(tests: Sequence[str], setup: str = "") -> str:
    """``test_list`` as a ``check(candidate)``: imports of the standard modules the asserts
    use, the setup code, then the asserts (one test each).

    >>> print(mbpp_check(["assert math.isclose(f(2), 4.0)"]))
    def check(candidate):
        import math
        assert math.isclose(f(2), 4.0)
    <BLANKLINE>
    """
    names = {node.id for test in tests for node in ast.walk(_parse(test))
             if isinstance(node, ast.Name)}
    imports = [f"import {name}\n" for name in sorted(names & sys.stdlib_module_names)]
    setup = setup.replace("\r\n", "\n").strip()
    body = "".join(imports) + (setup + "\n" if setup else "") + "".join(t + "\n" for t in tests)
    return "def check(candidate):\n" + textwrap.indent(body, "    ")


def _mbpp(rows: list[dict]) -> list[EvalProblem]:
    by_id = {int(r["task_id"]): r for r in rows}
    shots = "" if not all(i in by_id for i in MBPP_SHOT_IDS) else "".join(
        f"{_mbpp_task(by_id[i]['text'], by_id[i]['test_list'])}[BEGIN]\n{by_id[i]['code']}\n"
        "[DONE]\n" for i in MBPP_SHOT_IDS)
    problems = []
    for r in rows:
        if int(r["task_id"]) not in MBPP_TEST_IDS:
            continue
        tests = list(r["test_list"])
        question = (f"{r['text']} Your code should pass these tests:\n\n" + "\n".join(tests) +
                    "\n\nWrite the function in one ```python code block.")
        gold = {"tests": tests, "setup": r.get("test_setup_code") or "",
                "entry_point": mbpp_entry_point(tests, r["code"])}
        problems.append(EvalProblem(str(r["task_id"]), question, gold, r["code"],
                                    {"text": r["text"], "shots": shots}))
    return problems


def mbpp_code(text: str) -> str:
    """The code of an MBPP answer: between ``[BEGIN]`` and ``[DONE]`` (few-shot style; either
    may be missing), then the last fenced block if there is one.

    >>> mbpp_code("def f(x):\\n    return x\\n[DONE]\\nYou are an expert ...")
    'def f(x):\\n    return x\\n'
    """
    if "[BEGIN]" in text:
        text = text.split("[BEGIN]", 1)[1]
    return extract_code(text.split("[DONE]", 1)[0])


def _mbpp_one(problem: EvalProblem, text: str) -> Grade:
    """Grade an MBPP answer: its asserts run on plain data, the program in its own process."""
    code = textwrap.dedent(mbpp_code(text))
    if not code.strip():
        return Grade(False, None, "no code found")
    gold = problem.gold
    return _verdict(run_function_tests("", code, mbpp_check(gold["tests"], gold["setup"]),
                                       gold["entry_point"]))


grade_mbpp = _grade_all(_mbpp_one)


# --- LiveCodeBench -------------------------------------------------------------------------

_LCB_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math",
                "random", "statistics", "itertools", "functools", "operator", "io", "sys",
                "json")
LCB_PRELUDE = (
    "".join(f"from {m} import *\n" for m in (*_LCB_MODULES, "builtins", "typing"))
    + "".join(f"import {m}\n" for m in _LCB_MODULES) + "sys.setrecursionlimit(50000)\n"
)
"""What LCB's grader puts before every program (``lcb_runner``'s ``import_string``)."""

_LCB_ENTRY = "_r1kit_lcb_entry"
_LCB_EQUAL = '''
def _r1kit_lcb_equal(result, expected):
    """LCB's comparison: a tuple result counts as a list."""
    if type(result) is tuple:
        result = list(result)
    return result == expected
'''

_LCB_STDIN = ("Read the inputs from stdin, solve the problem and write the answer to stdout (do "
              "not directly test on the sample inputs). Enclose your code within delimiters as "
              "follows. Ensure that when the python program runs, it reads the inputs, runs the "
              "algorithm and writes output to STDOUT.")
_LCB_STARTER = ("You will use the following starter code to write the solution to the problem "
                "and enclose your code within delimiters.")


LCB_TIMEOUT_S = 6.0
"""Seconds per test: ``lcb_runner``'s ``run_test(..., timeout=6)``, an alarm per test."""


def _lcb_lines(text: str) -> list[str]:
    """LCB's ``get_stripped_lines``: the text stripped, split on newlines, each line stripped."""
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(word) for word in line.split()]
    except (InvalidOperation, ValueError):
        return None


def lcb_output_matches(output: str, expected: str) -> bool:
    """LCB's stdout comparison: same number of lines after stripping, and each line equal as
    text or as whitespace-separated decimals.

    >>> lcb_output_matches("1 2  \\n 3\\n\\n", "1 2\\n3"), lcb_output_matches("0.50", "0.5")
    (True, True)
    >>> lcb_output_matches("1 2", "1  2"), lcb_output_matches("1\\n\\n2", "1\\n2")
    (True, False)
    >>> lcb_output_matches("0.333", "0.3333333"), lcb_output_matches("YES", "yes")
    (False, False)
    """
    got, want = _lcb_lines(output), _lcb_lines(expected)
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g == w:
            continue
        dg, dw = _decimals(g), _decimals(w)
        if dg is None or dw is None or dg != dw:
            return False
    return True


def run_lcb_stdio(program: str, tests: Sequence[tuple[str, str]]) -> CodeResult:
    """Each (stdin, expected) test in its own sandboxed run of ``LCB_TIMEOUT_S`` seconds,
    compared by ``lcb_output_matches``; stops at the first failure, as LCB does (the tests not
    run count as failed)."""
    passed, runs = 0, []
    for stdin, expected in tests:
        run = run_python(program, stdin, timeout_s=LCB_TIMEOUT_S)
        runs.append(run)
        if run.status != "ok" or not lcb_output_matches(run.stdout, expected):
            break
        passed += 1
    return CodeResult(passed, len(tests), tuple(runs))


class _TextOnly(pickle.Unpickler):
    """Unpickles plain data only: any class or function reference is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refused: {module}.{name}")


def lcb_private_tests(value) -> list[dict]:
    """LCB's ``private_test_cases``: a list, JSON text, or (the hub's lite release) base64 of a
    zlib-compressed pickle of JSON text; empty or missing gives ``[]``.

    >>> blob = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(
    ...     [{"input": "1\\n", "output": "2\\n", "testtype": "stdin"}])))).decode()
    >>> lcb_private_tests(blob)[0]["output"], lcb_private_tests(""), lcb_private_tests("[]")
    ('2\\n', [], [])
    """
    if not value:
        return []
    if isinstance(value, list):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raw = zlib.decompress(base64.b64decode(value))
        return json.loads(_TextOnly(io.BytesIO(raw)).load())


def lcb_filter(problems: list[EvalProblem], window: str) -> list[EvalProblem]:
    """The problems whose contest date lies in ``window`` (``START:END``, ISO dates, inclusive,
    either side may be empty); ``ValueError`` for a malformed window or an empty result.

    >>> ps = [EvalProblem(d, "q", {}, meta={"contest_date": d + "T00:00:00"})
    ...       for d in ("2024-07-31", "2024-08-01", "2025-01-31", "2025-02-01")]
    >>> [p.id for p in lcb_filter(ps, "2024-08-01:2025-01-31")]
    ['2024-08-01', '2025-01-31']
    >>> [p.id for p in lcb_filter(ps, "2025-01-01:")]
    ['2025-01-31', '2025-02-01']
    """
    start, sep, end = window.partition(":")
    try:
        if not sep:
            raise ValueError
        lo = datetime.date.fromisoformat(start) if start else datetime.date.min
        hi = datetime.date.fromisoformat(end) if end else datetime.date.max
    except ValueError:
        raise ValueError(f"LiveCodeBench window {window!r}: expected START:END as ISO dates, "
                         "e.g. 2024-08-01:2025-01-31") from None
    kept = [p for p in problems
            if lo <= datetime.date.fromisoformat(str(p.meta["contest_date"])[:10]) <= hi]
    if not kept:
        dates = sorted(str(p.meta["contest_date"])[:10] for p in problems)
        raise ValueError(f"no LiveCodeBench problem dated in {window} (the data spans "
                         f"{dates[0]} to {dates[-1]})")
    return kept


def lcb_check(tests: Sequence[tuple[str, str]]) -> str:
    """Functional tests as a ``check``: each calls the entry point with the input's JSON lines
    as arguments and compares with the JSON output, all in the test's process.

    >>> print(lcb_check([("[1, 2]\\n3", "true")]).split("def check")[1])
    (candidate):
        import json
        assert _r1kit_lcb_equal(candidate(*[json.loads(a) for a in '[1, 2]\\n3'.split('\\n')]), json.loads('true'))
    <BLANKLINE>
    """
    lines = [f"    assert _r1kit_lcb_equal(candidate(*[json.loads(a) for a in "
             f"{stdin.strip()!r}.split('\\n')]), json.loads({expected!r}))\n"
             for stdin, expected in tests]
    return f"{_LCB_EQUAL}\ndef check(candidate):\n    import json\n" + "".join(lines)


def _livecodebench(rows: list[dict]) -> list[EvalProblem]:
    problems = []
    for r in rows:
        public = r["public_test_cases"]
        public = json.loads(public) if isinstance(public, str) else public
        private = lcb_private_tests(r.get("private_test_cases"))
        tests = [*public, *private]
        meta = r.get("metadata") or {}
        meta = json.loads(meta) if isinstance(meta, str) else meta
        starter = r.get("starter_code") or ""
        gold = {"stdio": [[t["input"], t["output"]] for t in tests if t["testtype"] == "stdin"],
                "functional": [[t["input"], t["output"]] for t in tests
                               if t["testtype"] == "functional"],
                "func_name": meta.get("func_name")}
        if gold["functional"] and not gold["func_name"]:
            raise ValueError(f"LiveCodeBench {r['question_id']}: functional tests, no func_name")
        fmt = (f"{_LCB_STARTER}\n```python\n{starter}\n```" if starter
               else f"{_LCB_STDIN}\n```python\n# YOUR CODE HERE\n```")
        question = (f"### Question:\n{r['question_content']}\n\n### Format: {fmt}\n\n"
                    "### Answer: (use the provided format with backticks)\n")
        problems.append(EvalProblem(
            r["question_id"], question, gold, None,
            {**{k: r.get(k) for k in ("question_title", "platform", "contest_date",
                                      "difficulty")}, "private_tests": len(private)}))
    return problems


def _lcb_one(problem: EvalProblem, text: str) -> Grade:
    """Grade an LCB answer on its tests: stdin tests by ``run_lcb_stdio``, LeetCode tests by
    ``run_function_tests`` through ``Solution().<func_name>``."""
    code = _program(text)
    if code is None:
        return Grade(False, None, "no code found")
    gold, program = problem.gold, LCB_PRELUDE + code
    results = []
    if gold["stdio"]:
        results.append(run_lcb_stdio(program, stdio_pairs(gold["stdio"])))
    if gold["functional"]:
        wrapper = (f"\n\ndef {_LCB_ENTRY}(*args):\n"
                   f"    return Solution().{gold['func_name']}(*args)\n")
        results.append(run_function_tests("", program + wrapper, lcb_check(gold["functional"]),
                                          _LCB_ENTRY,
                                          timeout_s=LCB_TIMEOUT_S * len(gold["functional"])))
    return _verdict(CodeResult(sum(r.passed for r in results), sum(r.total for r in results),
                               tuple(run for r in results for run in r.runs)))


grade_livecodebench = _grade_all(_lcb_one)


# --- the table -----------------------------------------------------------------------------

CODE_SUITES: dict[str, Suite] = {
    # 164 problems: 10 samples give the Codex paper's pass@10 and cut the sampling noise of
    # pass@1 by up to sqrt(10), for 1,640 short completions.
    "humaneval": Suite(
        "humaneval", "code",
        Source("openai/openai_humaneval", "test", local="humaneval/HumanEval.jsonl.gz"),
        _humaneval, grade_function, ks=(1, 10), n=10),
    # 500 problems: one sample, pass@1, as MBPP is usually reported (Austin et al.; EvalPlus).
    # "prompt+test" loads the exemplars of the 3-shot prompt along with the test split.
    "mbpp": Suite(
        "mbpp", "code",
        Source("google-research-datasets/mbpp", "prompt+test", "full", local="mbpp/mbpp.jsonl"),
        _mbpp, grade_mbpp, few_shot=mbpp_few_shot, few_shot_stop=("[DONE]",), ks=(1,), n=1),
    # LCB's own reporting: pass@1 estimated from 10 samples per problem (Jain et al. 2024);
    # contest problems need longer reasoning than HumanEval's one-liners.
    "livecodebench": Suite(
        "livecodebench", "code",
        Source("livecodebench/code_generation_lite", "test",
               local="livecodebench/public_tests_400.jsonl"),
        _livecodebench, grade_livecodebench, ks=(1,), n=10, max_tokens=8192),
}
