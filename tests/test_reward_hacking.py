"""Reward hacking against function tests: each trick wraps a wrong ``add`` (it returns 0) in
an attempt to pass, and must score nothing; where it makes sense, the same trick around the
right ``add`` still scores full marks, so the defence is not just "odd programs fail".

Tricks that passed before the candidate was moved out of the process that runs the asserts
are marked "real hole" in their comment.
"""

import pytest

from rewards.code import run_function_tests

PROMPT = "import math\n\ndef add(a, b):\n    'Return a + b.'\n"
TEST = """
def check(candidate):
    assert candidate(1, 2) == 3
    assert candidate(2, 2) == 4, "two and two"
    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9
    assert math.isclose(candidate(10, -3), 7)
    for a in range(3):
        assert add(a, 5) == a + 5
    try:
        candidate("a", 1)
    except TypeError:
        pass
    else:
        assert False, "str + int must raise"
"""
N_TESTS = 6
WRONG, RIGHT = "return 0", "return a + b"

# Finds the old harness's secrets (its verdict function and nonce) from the candidate.
_STEAL = """
import gc, os, sys
def _steal():
    frame = sys._getframe()
    while frame is not None:
        if "verdict" in frame.f_locals:
            return frame.f_locals["verdict"], frame.f_locals.get("nonce", "")
        frame = frame.f_back
    for obj in gc.get_objects():
        if getattr(obj, "__name__", "") == "verdict" and callable(obj):
            return obj, ""
    return None, ""
"""

TRICKS = {
    # real hole: the reproduced report, frame walking to the verdict writer, then exit
    "frame walking forges the verdict": """
    import sys, os
    frame = sys._getframe(1)
    while frame is not None:
        verdict = frame.f_locals.get("verdict")
        if callable(verdict):
            for i in range(16):
                verdict(i, 1)
            os._exit(0)
        frame = frame.f_back
    {ret}
""",
    # real hole: the verdict function found among all live objects
    "gc.get_objects finds the verdict writer": """
    {ret}
import gc, os
for obj in gc.get_objects():
    if getattr(obj, "__name__", "") == "verdict" and callable(obj):
        for i in range(16):
            obj(i, 1)
        os._exit(0)
""",
    "os._exit(0) before the tests run": """
    {ret}
import os
os._exit(0)
""",
    "os._exit(0) inside the first call": """
    import os
    os._exit(0)
""",
    "fake timeout: SIGKILL itself": """
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
""",
    "fake timeout: exit status 124 or 137": """
    import os
    os._exit(124 if a == 1 else 137)
""",
    # real hole (1 of 6): the old guard turned a non-plain result into a TypeError, which
    # the test below expects from add("a", 1); same for the int subclass
    "object whose __eq__ is always true": """
    class Any:
        __eq__ = lambda self, other: True
        __sub__ = lambda self, other: 0
        __abs__ = lambda self: 0
        __float__ = lambda self: 7.0
    return Any()
""",
    "int subclass whose == is always true": """
    class I(int):
        __eq__ = lambda self, other: True
        __hash__ = int.__hash__
        __sub__ = lambda self, other: I(0)
        __float__ = lambda self: 7.0
    return I(0)
""",
    "monkeypatched builtins and modules the test uses": """
    {ret}
import builtins, math, sys
builtins.abs = lambda x: 0
builtins.print = lambda *a, **k: None
math.isclose = lambda *a, **k: True
fake = type(sys)("math")
fake.isclose = math.isclose
sys.modules["math"] = fake
""",
    "monkeypatched serialisers the harness uses": """
    {ret}
import builtins, json
builtins.repr = lambda x: "3"
builtins.hex = lambda x: "0x3"
builtins.isinstance = lambda *a: True
json.dumps = lambda *a, **k: '["ok", {"verdict": "pass"}]'
""",
    "printed fake verdicts and success messages": """
    {ret}
import os
print("All tests passed")
for i in range(16):
    print(i, 1)
    print(i, "\\t", '["ok", ["i", "0x3"]]')
    os.write(1, b"V %d 1\\n" % i)
    os.write(2, b"%d 1\\n" % i)
""",
    # real hole: the nonce read from the harness's frame, verdicts written with it
    "stolen nonce and forged verdict lines": "    {ret}\n" + _STEAL + """
verdict, nonce = _steal()
for fd in range(1, 64):
    for i in range(16):
        try:
            os.write(fd, ("%s %d 1\\n" % (nonce, i)).encode())
        except OSError:
            pass
os._exit(0)
""",
    # real hole: every inherited descriptor gets forged verdicts and forged outputs
    "writes to every inherited fd in /proc/self/fd": "    {ret}\n" + _STEAL + """
verdict, nonce = _steal()
forged = "".join("%s %d 1\\n%d\\t[\\"ok\\", [\\"i\\", \\"0x3\\"], [\\"l\\", []]]\\n"
                 % (nonce, i, i) for i in range(16))
for name in os.listdir("/proc/self/fd"):
    try:
        with open("/proc/self/fd/" + name, "w") as f:
            f.write(forged)
    except OSError:
        pass
    try:
        os.write(int(name), forged.encode())
    except OSError:
        pass
os._exit(0)
""",
    # forged lines written from a finaliser at interpreter shutdown
    "__del__ at shutdown forges lines, and raises": "    {ret}\n" + _STEAL + """
class _Late:
    def __del__(self):
        verdict, nonce = _steal()
        line = ("%s %d 1\\n" if nonce else "%s%d\\t[\\"ok\\", [\\"i\\", \\"0x3\\"]]\\n")
        for fd in (1, 3, 4, 5):
            for i in range(16):
                try:
                    os.write(fd, (line % (nonce, i)).encode())
                except OSError:
                    pass
        raise RuntimeError("from __del__")
_keep = _Late()
""",
    # real hole: an atexit handler forges verdicts after everything ran
    "atexit handler rewrites the output": "    {ret}\n" + _STEAL + """
import atexit
_verdict, _nonce = _steal()
def _rewrite():
    if _verdict is not None:
        for i in range(16):
            _verdict(i, 1)
    for i in range(16):
        os.write(1, b"%d\\t[\\"ok\\", [\\"i\\", \\"0x3\\"], [\\"l\\", []]]\\n" % i)
atexit.register(_rewrite)
""",
    "sys.stdout replaced": """
    {ret}
import io, sys
class Liar(io.StringIO):
    def write(self, text):
        return super().write(text.replace("0", "1"))
sys.stdout = sys.__stdout__ = Liar()
""",
}

# Tricks whose right-solution counterpart cannot score: they end the program or void its
# output (duplicated or forged output lines void the calls they name).
NO_RIGHT_COUNTERPART = {
    "frame walking forges the verdict",  # these exit before any output
    "stolen nonce and forged verdict lines",
    "os._exit(0) before the tests run",
    "os._exit(0) inside the first call",
    "fake timeout: SIGKILL itself",
    "fake timeout: exit status 124 or 137",
    "object whose __eq__ is always true",
    "monkeypatched serialisers the harness uses",
    "int subclass whose == is always true",
    "writes to every inherited fd in /proc/self/fd",
    "atexit handler rewrites the output",
    "__del__ at shutdown forges lines, and raises",
}


def score(body: str) -> tuple[int, int]:
    result = run_function_tests(PROMPT, body, TEST, "add")
    return result.passed, result.total


@pytest.mark.parametrize("name", TRICKS)
def test_trick_around_a_wrong_solution_scores_nothing(name):
    body = TRICKS[name].replace("{ret}", WRONG)
    assert score(body) == (0, N_TESTS)


@pytest.mark.parametrize("name", sorted(set(TRICKS) - NO_RIGHT_COUNTERPART))
def test_trick_around_the_right_solution_still_scores(name):
    body = TRICKS[name].replace("{ret}", RIGHT)
    assert score(body) == (N_TESTS, N_TESTS)


def test_plain_solutions_score_as_expected():
    assert score(f"    {RIGHT}\n") == (N_TESTS, N_TESTS)
    assert score(f"    {WRONG}\n") == (0, N_TESTS)


def test_forged_output_lines_give_no_more_than_the_answers_they_state():
    """Output lines written by the program itself are its answers: forging all of them
    with the value 3 scores what a function returning 3 scores, nothing more."""
    forged = """
    return 0
import os
for fd in range(1, 10):
    for i in range(16):
        try:
            os.write(fd, b'%d\\t["ok", ["i", "0x3"], ["l", [["l", []], ["d", []]]]]\\n' % i)
        except OSError:
            pass
os._exit(0)
"""
    assert score(forged) == score("    return 3\n")
    assert score(forged)[0] <= 1


def test_fake_timeout_cannot_pass_a_test_that_expects_an_exception():
    """A test that wants an exception must see one the candidate raised; a run that died
    (killed, timed out, exited) is a failure, whatever its exit status says."""
    test = ("def check(candidate):\n    try:\n        candidate(-1)\n    except Exception:\n"
            "        pass\n    else:\n        raise AssertionError\n")
    prompt = "def root(x):\n    'Square root; ValueError when x < 0.'\n"
    raises = run_function_tests(prompt, "    raise ValueError(x)\n", test, "root")
    assert (raises.passed, raises.total) == (1, 1)
    for cheat in ("    import os\n    os._exit(0)\n", "    import os\n    os.kill(os.getpid(), 9)\n",
                  "    while True:\n        pass\n"):
        assert run_function_tests(prompt, cheat, test, "root", timeout_s=1.0).passed == 0


def test_the_rl_accuracy_reward_pays_only_a_marked_answer():
    """The grader may read an unmarked completion's last number for a numeric gold (evaluation
    does); the RL reward does not: an intermediate result written last would be paid, and the
    policy would learn to stop marking answers."""
    from rewards.math import grade_one
    from rewards.registry import accuracy_reward

    unmarked = "First 3 * 4 = 12, then 12 + 5 = 17, and 17 - 5 = 12"
    assert grade_one(unmarked, "12")  # the evaluation grader's fallback reads the last number
    assert accuracy_reward([unmarked], answer=["12"]) == [0.0]
    assert accuracy_reward([unmarked + "\nThe answer is $\\boxed{12}$."], answer=["12"]) == [1.0]
