"""Code rewards: extraction, output comparison, stdin/stdout and function tests, and
programs that try to pass without being right."""

import doctest

import pytest

import rewards.code
from rewards.code import (
    _as_pairs,
    code_partial_reward,
    code_reward,
    extract_code,
    humaneval_reward,
    normalize_output,
    run_function_tests,
    run_stdio_tests,
)

ADD_PROMPT = "import math\n\ndef add(a, b):\n    'Return a + b.'\n"
ADD_TEST = """
def check(candidate):
    assert candidate(1, 2) == 3
    assert math.isclose(candidate(0.5, 0.25), 0.75)
    for a in range(3):
        assert abs(candidate(a, 5) - (a + 5)) < 1e-9
    assert add(2, 2) == 4
"""


def test_doctests_pass():
    result = doctest.testmod(rewards.code)
    assert result.attempted >= 8 and result.failed == 0


@pytest.mark.parametrize(("completion", "code"), [
    ("a\n```python\nx = 1\n```\nb\n```python\nx = 2\n```\nc", "x = 2\n"),
    ("```py\nx = 1\n```\n```\nplain\n```", "x = 1\n"),
    ("```\nx = 3\n```", "x = 3\n"),
    ("```python3 title\nx = 4\n```", "x = 4\n"),
    ("no fence here", "no fence here"),
])
def test_extract_code(completion, code):
    assert extract_code(completion) == code


def test_normalize_output_only_drops_trailing_whitespace():
    assert normalize_output("a  \n b\t\n\n\n") == "a\n b"
    assert normalize_output("1\r\n2") == "1\n2"
    assert normalize_output("a b") != normalize_output("a  b")


def test_stdio_tests_count_matches_and_require_clean_exit():
    code = "n = int(input())\nprint(n * n, '  ')\nif n == 3:\n    raise ValueError"
    result = run_stdio_tests(code, [("2\n", "4\n"), ("3\n", "9"), ("4", "17")])
    assert (result.passed, result.total, result.fraction, result.all_passed) == \
        (1, 3, 1 / 3, False)
    assert [run.status for run in result.runs] == ["ok", "error", "ok"]


def test_stdio_stop_on_failure_skips_the_rest():
    result = run_stdio_tests("print(1)", [("", "2"), ("", "1")], stop_on_failure=True)
    assert (result.passed, result.total, len(result.runs)) == (0, 2, 1)


@pytest.mark.parametrize("cheat", [
    "import sys\nsys.exit(0)",
    "import os\nos._exit(0)",
    "print('All tests passed')",
    "raise SystemExit",
])
def test_stdio_cheats_fail(cheat):
    assert code_reward([cheat], tests=[[("5\n", "25\n")]]) == [0.0]


def test_stdio_test_formats():
    pairs = [("1", "2")]
    assert _as_pairs(pairs) == _as_pairs([{"input": "1", "output": "2"}]) == pairs
    assert _as_pairs({"inputs": ["1"], "outputs": ["2"]}) == pairs
    assert _as_pairs('[{"input": "1", "output": "2"}]') == pairs
    with pytest.raises(ValueError):
        _as_pairs([("1", 2)])


def test_code_rewards_on_a_batch():
    square = "```python\nprint(int(input()) ** 2)\n```"
    tests = [[("2", "4"), ("3", "9")]] * 3
    completions = [square, "print(4)", [{"role": "assistant", "content": square}]]
    assert code_reward(completions, tests=tests) == [1.0, 0.0, 1.0]
    assert code_partial_reward(completions, tests=tests) == [1.0, 0.5, 1.0]


def test_function_tests_count_each_asserting_statement():
    result = run_function_tests(ADD_PROMPT, "    return a + b\n", ADD_TEST, "add")
    assert (result.passed, result.total, result.all_passed) == (4, 4, True)
    partial = run_function_tests(ADD_PROMPT, "    return int(a + b)\n", ADD_TEST, "add")
    assert (partial.passed, partial.total) == (3, 4)


def test_function_tests_accept_a_full_function_in_a_fence():
    completion = "Here:\n```python\ndef add(a, b):\n    return b + a\n```"
    assert run_function_tests(ADD_PROMPT, completion, ADD_TEST, "add").all_passed


def test_function_tests_accept_a_body_in_a_fence():
    completion = "The body:\n```python\n    return a + b\n```\nDone."
    assert run_function_tests(ADD_PROMPT, completion, ADD_TEST, "add").all_passed


def test_lone_surrogates_score_zero_instead_of_raising():
    """Model text decoded from JSON can hold a lone surrogate that UTF-8 cannot encode."""
    bad = "```python\nprint('\ud800')\n```"
    assert code_reward([bad], tests=[[("", "x")]]) == [0.0]
    assert humaneval_reward(["    return '\ud800'\n"], prompt=[ADD_PROMPT], test=[ADD_TEST],
                            entry_point=["add"]) == [0.0]


def test_counter_and_ordered_dict_results_travel_exactly():
    """MBPP references return Counters; they compare equal to dicts and must keep their type
    (a Counter's missing key is 0, a dict's a KeyError)."""
    prompt = "import collections\ndef count(s):\n    pass\n"
    test = ("def check(candidate):\n    assert candidate('aab') == {'a': 2, 'b': 1}\n"
            "    assert candidate('aab')['z'] == 0\n")
    counter = "def count(s):\n    return collections.Counter(s)\n"
    plain = "def count(s):\n    return dict(collections.Counter(s))\n"
    assert run_function_tests(prompt, counter, test, "count").passed == 2
    assert run_function_tests(prompt, plain, test, "count").passed == 1
    ordered = "def count(s):\n    return collections.OrderedDict(a=2, b=1)\n"
    assert run_function_tests(prompt, ordered, test, "count").passed == 1


def test_check_without_asserts_is_one_test():
    test = "def check(candidate):\n    if candidate(1, 1) != 2:\n        raise ValueError\n"
    good = run_function_tests(ADD_PROMPT, "    return a + b\n", test, "add")
    bad = run_function_tests(ADD_PROMPT, "    return 0\n", test, "add")
    assert (good.passed, good.total, bad.passed, bad.total) == (1, 1, 0, 1)


CHEATS = {
    "sys.exit in the body": "    import sys\n    sys.exit(0)\n",
    "os._exit in the body": "    import os\n    os._exit(0)\n",
    "SystemExit at top level": "    pass\nraise SystemExit\n",
    "os._exit at top level": "    pass\nimport os\nos._exit(0)\n",
    "always-equal object": (
        "    class Any:\n        def __eq__(self, other):\n            return True\n"
        "        def __sub__(self, other):\n            return 0\n"
        "        def __float__(self):\n            return 0.0\n    return Any()\n"
    ),
    "int subclass": "    class I(int):\n        __eq__ = lambda s, o: True\n    return I(0)\n",
    "str subclass": "    class S(str):\n        __eq__ = lambda s, o: True\n    return S()\n",
    "list subclass": "    class L(list):\n        __eq__ = lambda s, o: True\n    return L()\n",
    "fake verdicts": (
        "    pass\nimport os\nfor i in range(4):\n    print('0', i, 1)\n"
        "    os.write(1, b'%d 1\\n' % i)\nprint('All tests passed')\n"
    ),
    "stolen stdin": (
        "    pass\nimport os, sys\nnonce = sys.stdin.read().strip()\n"
        "for i in range(4):\n    os.write(1, ('%s %d 1\\n' % (nonce, i)).encode())\n"
    ),
    "patched builtins and math": (
        "    import builtins, math\n    builtins.abs = lambda x: 0\n"
        "    math.isclose = lambda *a, **k: True\n    return 3\n"
    ),
    "replaced module in sys.modules": (
        "    return 3\nimport sys, types\nfake = types.ModuleType('math')\n"
        "fake.isclose = lambda *a, **k: True\nsys.modules['math'] = fake\n"
    ),
    "redefined check": (
        "    return 3\ndef check(candidate):\n    pass\nimport builtins\n"
        "builtins.check = check\n"
    ),
    "trace hook left installed": (
        "    import sys\n    sys.settrace(lambda *a: None)\n    return 3\n"
    ),
}


@pytest.mark.parametrize("name", CHEATS)
def test_cheating_completions_do_not_pass(name):
    result = run_function_tests(ADD_PROMPT, CHEATS[name], ADD_TEST, "add")
    assert not result.all_passed
    assert result.passed <= 1  # at most `candidate(1, 2) == 3` for the `return 3` cheats


def test_missing_entry_point_fails_every_test():
    result = run_function_tests(ADD_PROMPT, "```python\ndef plus(a, b):\n    return a + b\n```",
                                ADD_TEST, "add")
    assert (result.passed, result.total) == (0, 4)


def test_test_without_check_is_rejected():
    with pytest.raises(ValueError, match="check"):
        run_function_tests(ADD_PROMPT, "    return a + b\n", "assert True\n", "add")


def test_humaneval_reward_on_a_batch():
    completions = ["    return a + b\n", "    return a - b\n",
                   [{"role": "assistant", "content": "```python\ndef add(a, b):\n    return a+b\n```"}]]
    n = len(completions)
    rewards = humaneval_reward(completions, prompt=[ADD_PROMPT] * n, test=[ADD_TEST] * n,
                               entry_point=["add"] * n)
    assert rewards == [1.0, 0.0, 1.0]


def test_outputs_that_feed_later_inputs_take_extra_rounds():
    prompt = "def inc(x):\n    'x + 1'\n"
    test = "def check(candidate):\n    assert candidate(candidate(candidate(1))) == 4\n"
    good = run_function_tests(prompt, "    return x + 1\n", test, "inc")
    assert good.all_passed and len(good.runs) == 7  # 4 test runs, 3 candidate runs
    assert not run_function_tests(prompt, "    return 4 if x == 3 else 0\n", test, "inc").passed


def test_in_place_changes_and_raised_exceptions_reach_the_test():
    prompt = "def sort_in_place(xs):\n    'Sort xs; ValueError if it is empty.'\n"
    test = ("def check(candidate):\n    xs = [3, 1, 2]\n    assert candidate(xs) is None\n"
            "    assert xs == [1, 2, 3]\n    try:\n        candidate([])\n"
            "    except ValueError:\n        pass\n    else:\n        assert False\n")
    good = "    if not xs:\n        raise ValueError\n    xs.sort()\n"
    assert run_function_tests(prompt, good, test, "sort_in_place").passed == 3
    lazy = "    if not xs:\n        raise KeyError\n    return None\n"
    assert run_function_tests(prompt, lazy, test, "sort_in_place").passed == 1


def test_candidate_output_lines_are_checked():
    ok = '["ok", ["i", "0x3"], ["l", [["l", []], ["d", []]]]]'
    stdout = f"0\t{ok}\n1\t{ok}\n1\t{ok}\n2\t[\"ok\", [\"x\"]]\n3\t[\"raise\", \"ValueError\"]\nx\n"
    outcomes = rewards.code._read_candidate_run(stdout, 5)
    assert outcomes[0] == ["ok", ["i", "0x3"], ["l", [["l", []], ["d", []]]]]
    assert outcomes[1:3] == [["missing"], ["missing"]]  # twice, malformed
    assert outcomes[3:] == [["raise", "ValueError"], ["missing"]]
