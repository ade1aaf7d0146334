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
  JSON output (a tuple counts as a list, as in LCB). Only the public tests are used (the local
  file has no others), and stdout is compared by ``rewards.code.normalize_output`` (trailing
  spaces only), stricter than LCB's per-line strip.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from eval.types import EvalProblem, Grade, Source, Suite, answer_part
from rewards.code import CodeResult, extract_code, run_function_tests, run_stdio_tests
from rewards.code import _as_pairs as stdio_pairs  # code_reward's reading of a tests column

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
        tests = r["public_test_cases"]
        tests = json.loads(tests) if isinstance(tests, str) else tests
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
            {k: r.get(k) for k in ("question_title", "platform", "contest_date", "difficulty")}))
    return problems


def _lcb_one(problem: EvalProblem, text: str) -> Grade:
    """Grade an LCB answer on every public test: stdin tests by ``run_stdio_tests``, LeetCode
    tests by ``run_function_tests`` through ``Solution().<func_name>``."""
    code = _program(text)
    if code is None:
        return Grade(False, None, "no code found")
    gold, program = problem.gold, LCB_PRELUDE + code
    results = []
    if gold["stdio"]:
        results.append(run_stdio_tests(program, stdio_pairs(gold["stdio"])))
    if gold["functional"]:
        wrapper = (f"\n\ndef {_LCB_ENTRY}(*args):\n"
                   f"    return Solution().{gold['func_name']}(*args)\n")
        results.append(run_function_tests("", program + wrapper, lcb_check(gold["functional"]),
                                          _LCB_ENTRY))
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
