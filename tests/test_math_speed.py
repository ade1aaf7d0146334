"""Work the math grader skips must not change a verdict: leaves decided in-process that already
fix the answer spare the helper call, and the helper's parse cache returns what parsing would."""

import pytest

from rewards.math import equiv, grade_one


@pytest.fixture
def helper_calls(monkeypatch):
    calls, run_bounded = [], equiv.run_bounded

    def counting(requests, timeout_s):
        calls.append(requests)
        return run_bounded(requests, timeout_s)

    monkeypatch.setattr(equiv, "run_bounded", counting)
    return calls


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        # the list matches item for item as strings; the cross pairs (sin against cos) need sympy
        (r"\boxed{v = \cos t, u = \sin t}", r"u = \sin t, v = \cos t", (True, "string")),
        # a tuple whose first items differ as rationals is unequal whatever its second items are
        (r"\boxed{(1, \sin t)}", r"(2, \cos t)", (False, "rational")),
    ],
)
def test_forced_verdict_needs_no_helper(helper_calls, pred, gold, expected):
    verdict = grade_one(pred, gold)
    assert (verdict.correct, verdict.reason) == expected
    assert helper_calls == []


def test_open_verdict_still_asks_the_helper(helper_calls):
    verdict = grade_one(r"\boxed{(2, \sin^2 t + \cos^2 t)}", "(2, 1)")
    assert verdict.correct and len(helper_calls) == 1


def test_parse_cache_returns_the_parse():
    from rewards.math import symbolic

    text = r"\frac{x^{2}}{3} + \sin(x)"
    symbolic._PARSED.pop(text, None)
    first = symbolic.parse(text)
    assert symbolic.parse(text) is first
    assert str(first) == "x**2/3 + sin(x)"
