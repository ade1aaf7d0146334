"""The code suites grade the datasets' own solutions correct and wrong programs wrong, in the
real sandbox, through the training rewards' graders."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.code_suites import CODE_SUITES, answer_text, grade_stdio
from eval.types import EvalProblem, read_rows

DATA = Path(__file__).parents[2] / "shared" / "data"

# MBPP test-split problems whose reference solution fails, each with why. Exact: a new failure
# or a fixed one fails the test, so this list cannot grow silently.
KNOWN_MISSES = {
    "367": "harness: the inputs are binary-tree Node objects built by test_setup_code from the "
           "solution's own class; rewards.code passes only plain data between processes, and "
           "the test's process never sees the solution's Node",
}


def rows(suite: str) -> list[dict]:
    path = DATA / CODE_SUITES[suite].source.local
    if not path.is_file():
        pytest.fail(f"evaluation data missing: {path} (see shared/data/README.md)")
    return read_rows(path)


def problems(suite: str) -> list[EvalProblem]:
    return CODE_SUITES[suite].to_problems(rows(suite))


def r1(code: str) -> str:
    """An R1-Zero completion whose answer is ``code`` in a fenced block."""
    return f"Let me think.</think> <answer>```python\n{code}\n```</answer>"


def test_suite_table():
    assert sorted(CODE_SUITES) == ["humaneval", "livecodebench", "mbpp"]
    for name, suite in CODE_SUITES.items():
        assert suite.name == name and suite.kind == "code"
        assert all(k <= suite.n for k in suite.ks)
    assert [len(problems(name)) for name in ("humaneval", "mbpp", "livecodebench")] == \
        [164, 500, 400]


def test_answer_text():
    assert answer_text("x</think> <answer>\n    return 1\n</answer>") == "    return 1\n"
    assert answer_text("```python\nprint(1)\n```") == "```python\nprint(1)\n```"
    assert answer_text("bad \ud800 text") == "bad ? text"


@pytest.mark.slow
def test_humaneval_bodies_and_r1_answers_pass_and_stubs_fail():
    suite, data = CODE_SUITES["humaneval"], rows("humaneval")
    probs = suite.to_problems(data)
    # The references themselves and `pass` stubs go through the replay engine in
    # tests/test_eval_run.py; here, the other ways a completion can carry the same code.
    variants = {
        "body": [r["canonical_solution"] for r in data],  # continues the prompt
        "r1": [r1(p.reference) for p in probs],
        "pass": [r["prompt"].rstrip() + "\n    pass\n" for r in data],
    }
    completions = [c for cs in variants.values() for c in cs]
    grades = suite.grade(probs * len(variants), completions)
    for i, name in enumerate(variants):
        chunk = grades[i * len(probs):(i + 1) * len(probs)]
        wrong = [p.id for p, g in zip(probs, chunk) if g.correct != (name != "pass")]
        assert wrong == [], name
        assert all(g.answer is None and g.detail.endswith("tests") for g in chunk)
    assert "```python\n" in probs[0].question and probs[0].id == "HumanEval/0"


def test_mbpp_few_shot():
    suite = CODE_SUITES["mbpp"]
    probs = problems("mbpp")
    p = next(p for p in probs if p.id == "11")  # remove first and last occurrence of a char
    prompt = suite.few_shot(p)
    shots = [r for r in rows("mbpp") if r["task_id"] in (2, 3, 4)]
    assert prompt.startswith("You are an expert Python programmer, and here is your task: "
                             + shots[0]["text"] + " Your code should pass these tests:\n\n")
    assert prompt.count("[BEGIN]\n") == 4 and prompt.count("\n[DONE]\n") == 3
    assert all(s["code"] in prompt for s in shots)
    assert prompt.endswith(p.gold["tests"][-1] + "\n[BEGIN]\n")
    assert p.gold["entry_point"] == "remove_Occ" and "[BEGIN]" not in p.question

    right = "def remove_Occ(s, ch):\n    s = s.replace(ch, '', 1)\n    i = s.rfind(ch)\n" \
            "    return s if i < 0 else s[:i] + s[i + 1:]\n"
    wrong = "def remove_Occ(s, ch):\n    return s.replace(ch, '', 1)\n"
    completions = [
        right + "[DONE]\n\nYou are an expert Python programmer, and here is your task: ...",
        right,  # the stop string "[DONE]" cut off by the engine
        "[BEGIN]\n" + right + "[DONE]",
        r1(right),
        wrong + "[DONE]",
        r1(wrong),
        "[DONE]",
    ]
    grades = suite.grade([p] * len(completions), completions)
    assert [g.correct for g in grades] == [True, True, True, True, False, False, False]
    assert grades[-1].detail == "no code found"
    assert grades[0].detail == "3/3 tests"


def test_mbpp_few_shot_needs_the_prompt_split():
    probs = CODE_SUITES["mbpp"].to_problems([r for r in rows("mbpp") if r["task_id"] > 10])
    with pytest.raises(ValueError, match="prompt-split"):
        CODE_SUITES["mbpp"].few_shot(probs[0])


# Hand-written LiveCodeBench solutions: (question_id, completion, correct, detail).
ABC301_A = """n = int(input())
s = input().strip()
t = s.count("T")
a = n - t
if t != a:
    print("T" if t > a else "A")
else:
    print("A" if s[-1] == "T" else "T")  # the last game decided who reached it second
"""
ABC301_A_WRONG = """n = int(input())
s = input()
print("T" if s.count("T") > s.count("A") else "A")  # ties are not A's
"""
ABC302_A = "a, b = map(int, input().split())\nprint(-(-a // b))\n"
ABC302_A_WRONG = "import math\na, b = map(int, input().split())\nprint(math.ceil(a / b))\n"
BUY_CHOCO = """class Solution:
    def buyChoco(self, prices: List[int], money: int) -> int:
        a, b = sorted(prices)[:2]
        return money - a - b if a + b <= money else money
"""
BUY_CHOCO_WRONG = """class Solution:
    def buyChoco(self, prices, money):
        a, b = sorted(prices)[:2]
        return money - a - b
"""
DISTINCT_DIFF = """class Solution:
    def distinctDifferenceArray(self, nums: List[int]) -> List[int]:
        return tuple(len(set(nums[:i + 1])) - len(set(nums[i + 1:])) for i in range(len(nums)))
"""
DISTINCT_DIFF_WRONG = """class Solution:
    def distinctDifferenceArray(self, nums):
        return [len(set(nums[:i])) - len(set(nums[i:])) for i in range(len(nums))]
"""
LCB_CASES = [
    ("abc301_a", r1(ABC301_A), True, "3/3 tests"),
    ("abc301_a", ABC301_A_WRONG, False, "1/3 tests"),  # fails the 2nd; LCB stops there
    ("abc302_a", f"Here:\n```python\n{ABC302_A}```", True, "3/3 tests"),
    ("abc302_a", r1(ABC302_A_WRONG), False, "2/3 tests"),  # float rounding at 1e18
    ("2756", r1(BUY_CHOCO), True, "2/2 tests"),  # List comes from LCB's prelude
    ("2756", r1(BUY_CHOCO_WRONG), False, "1/2 tests"),
    ("2777", r1(DISTINCT_DIFF), True, "2/2 tests"),  # a tuple counts as a list, as in LCB
    ("2777", r1(DISTINCT_DIFF_WRONG), False, "0/2 tests"),
    # attacks: the first test's output only; a constant; answers printed instead of returned
    ("abc301_a", r1('print("T")'), False, "2/3 tests"),
    ("abc302_a", r1("print(3)"), False, "1/3 tests"),
    ("2756", r1("class Solution:\n    def buyChoco(self, prices, money):\n        return 0"),
     False, "1/2 tests"),
    ("2777", r1("print([-3, -1, 1, 3, 5])\nprint([-2, -1, 0, 2, 3])"), False, "0/2 tests"),
    ("2756", r1("import sys\nprint('V 0 1')\nprint('V 1 1')\nsys.exit(0)"), False, "0/2 tests"),
    ("2756", "", False, "no code found"),
]


def test_livecodebench_hand_written_solutions():
    suite = CODE_SUITES["livecodebench"]
    by_id = {p.id: p for p in problems("livecodebench")}
    assert by_id["abc301_a"].gold["stdio"] and not by_id["abc301_a"].gold["functional"]
    assert by_id["2756"].gold["func_name"] == "buyChoco" and not by_id["2756"].gold["stdio"]
    assert "class Solution:" in by_id["2756"].question and "stdin" in by_id["abc301_a"].question
    probs = [by_id[q] for q, *_ in LCB_CASES]
    grades = suite.grade(probs, [c for _, c, *_ in LCB_CASES])
    got = [(q, g.correct, g.detail) for (q, *_), g in zip(LCB_CASES, grades)]
    assert got == [(q, ok, detail) for q, _, ok, detail in LCB_CASES]


GARBAGE = ["", "</think>", "<answer></answer>", "```python\n```", "```\n\x00\n```", "\ud800",
           "def (", "import os\nos._exit(0)", "raise SystemExit(3)", "}" * 5000,
           "```python\ndef f(:\n```", "print('x' * 10**7)"]


@pytest.mark.parametrize("name", sorted(CODE_SUITES))
def test_garbage_is_incorrect_never_an_error(name):
    suite, p = CODE_SUITES[name], problems(name)[1]
    grades = suite.grade([p] * (len(GARBAGE) + 1), [*GARBAGE, None])
    assert not any(g.correct for g in grades)
    assert all(g.detail == "no code found" or "tests" in g.detail for g in grades)
    with pytest.raises(ValueError, match="completions"):
        suite.grade([p], [])


def test_grade_stdio_user_rows():
    p = EvalProblem("0", "double it", {"stdio": [{"input": "3\n", "output": "6\n"},
                                               ["5", "10"]]})
    as_text = EvalProblem("1", "double it", {"stdio": '{"inputs": ["4"], "outputs": ["8"]}'})
    grades = grade_stdio([p, p, as_text], ["print(2 * int(input()))", "print(6)",
                                           "```python\nprint(2 * int(input()))\n```"])
    assert [(g.correct, g.detail) for g in grades] == [(True, "2/2 tests"), (False, "1/2 tests"),
                                                       (True, "1/1 tests")]
