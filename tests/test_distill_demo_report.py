"""``r1kit distill-demo``'s report from its figures: every method's row with the teacher tokens it
spent (SFT + on-policy charged both), and the paired verdict of SFT + on-policy against SFT alone.
The runs themselves are measured by ``make distill-demo`` (docs/BENCHMARKS.md)."""

from __future__ import annotations

from r1kit.distill_demo import paired_verdict, report, summarise


def summary(value: float) -> dict:
    return {"suites": {"heldout": {"metrics": {"avg@2": {"value": value, "low": value - 0.05,
                                                        "high": value + 0.05}}}}}


def run(method: str, tokens: int, **extra) -> dict:
    return {"method": method, "teacher_tokens": tokens, "problems": 100, "steps": 20, "n": 1,
            "seconds": 10.0, "checkpoint": f"/x/{method}", **extra}


SFT = run("sft", 1000, traces_verified=80, traces_sampled=100, traces_kept=80,
          problems_kept=60)


def comparison(diff: float, low: float, high: float) -> dict:
    return {"suites": {"heldout": {"metrics": {"avg@n": {
        "diff": diff, "low": low, "high": high, "p_value": 0.5, "verdict": "v"}}}}}


def test_after_sft_row_charges_both_methods_and_states_the_paired_verdict():
    evals = {"teacher": summary(0.7), "student": summary(0.3), "sft": summary(0.6),
             "on_policy": summary(0.45), "after_sft": summary(0.62)}
    runs = {"sft": SFT, "on_policy": run("on_policy", 700), "after_sft": run("on_policy", 300)}
    f = summarise(evals, runs, "heldout", 2, 200, paired_verdict(comparison(0.02, -0.01, 0.05),
                                                                 "heldout"))
    assert f["teacher_tokens"] == {"sft": 1000, "on_policy": 700, "after_sft": 1300}
    assert f["targets"]["after_sft_not_lower_than_sft"] is True
    f["timings_s"] = {"total": 1.0}
    text = report(f)
    assert "| student after SFT, then on-policy distillation | 62.0 (57.0 to 67.0) | 89% | 1,300 |" \
        in text
    assert "not lower than SFT alone (paired over the same problems): yes (+2.0 points" in text
    assert "300 teacher tokens on top of SFT's" in text


def test_an_interval_below_zero_is_lower():
    low = paired_verdict(comparison(-0.06, -0.1, -0.01), "heldout")
    assert low["not_lower"] is False and low["difference"] == -0.06
    assert paired_verdict(comparison(-0.04, -0.1, 0.0), "heldout")["not_lower"] is True
    assert paired_verdict(comparison(0.0, None, None), "heldout")["not_lower"] is False
