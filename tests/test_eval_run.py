"""``r1kit eval`` end to end with the replay engine: gold references score as they must, outputs
are written, a killed run resumes without re-sampling, bad input fails before work, and
``r1kit eval compare`` tells noise from a real difference.

The engines that sample from the tiny policy are covered in ``test_eval_engines.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.suites import SUITES, load_problems
from r1kit.cli import main
from r1kit.eval_plan import build_prompt

DATA = Path(__file__).parents[2] / "shared" / "data"


@pytest.fixture(scope="module", autouse=True)
def _data():
    if not DATA.is_dir():
        pytest.fail(f"evaluation data missing at {DATA}")


def write_replay(path: Path, suite: str, make, limit: int | None = None) -> list:
    """A replay file answering every problem of ``suite`` with ``make(problem)`` (a list of
    completions) under the R1-Zero prompt."""
    s = SUITES[suite]
    problems = load_problems(s, str(DATA))[:limit]
    with open(path, "w") as f:
        for p in problems:
            f.write(json.dumps({"prompt": build_prompt(s, p, "r1_zero", None),
                                "completions": make(p)}) + "\n")
    return problems


def run(tmp: Path, *args: str) -> int:
    """``r1kit eval`` on replay files written by ``write_replay``: the R1-Zero prompt, and the
    whole completion graded (dataset references hold no think block)."""
    return main(["eval", "--data-dir", str(DATA), "--out-dir", str(tmp), "--no-progress",
                 "--prompt-style", "r1_zero", "--graded-text", "whole", *args])


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_math_gold_answers_score_full_marks(tmp_path):
    replay = tmp_path / "gold.jsonl"
    write_replay(replay, "math500", lambda p: [p.reference])
    with open(replay, "a") as f:  # GSM8K's worked answers end in "#### N"
        for p in load_problems(SUITES["gsm8k"], str(DATA)):
            f.write(json.dumps({"prompt": build_prompt(SUITES["gsm8k"], p, "r1_zero", None),
                                "completions": [p.reference]}) + "\n")
    out = tmp_path / "run"
    assert run(out, "--replay", str(replay), "--suite", "math500,gsm8k", "-n", "1") == 0
    s = summary(out)["suites"]
    assert s["math500"]["problems"] == 500 and s["gsm8k"]["problems"] == 1319
    assert s["math500"]["metrics"]["avg@1"]["value"] >= 0.99
    assert s["gsm8k"]["metrics"]["avg@1"]["value"] == 1.0
    for name in ("math500", "gsm8k"):
        rows = (out / "samples" / f"{name}.jsonl").read_text().splitlines()
        assert len(rows) == s[name]["problems"]
    report = (out / "report.md").read_text()
    assert "## math500" in report and "## gsm8k" in report


def test_competition_answers_and_wrong_answers(tmp_path):
    """AIME and AMC: the boxed gold answer scores 1, another problem's answer 0 (where the two
    differ), and maj@4 follows the majority."""
    replay = tmp_path / "r.jsonl"
    aime = load_problems(SUITES["aime24"], str(DATA))
    wrong = {p.id: aime[(i + 1) % len(aime)].gold for i, p in enumerate(aime)}
    # Two right, one wrong, one unanswered: avg 0.5, maj 1.
    write_replay(replay, "aime24", lambda p: [p.reference, f"\\boxed{{{wrong[p.id]}}}",
                                              "no idea", p.reference])
    out = tmp_path / "run"
    assert run(out, "--replay", str(replay), "--suite", "aime24", "-n", "4", "-k", "1,2,4") == 0
    m = summary(out)["suites"]["aime24"]["metrics"]
    assert m["avg@4"]["value"] == pytest.approx(0.5)
    assert m["maj@4"]["value"] == 1.0
    assert m["pass@2"]["value"] == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert m["pass@4"]["value"] == 1.0
    # Every problem alike: no problem variance, so only avg@4's within-problem resampling
    # gives its interval any width; the problems-only intervals of pass@k and maj collapse.
    assert m["avg@4"]["low"] < 0.5 < m["avg@4"]["high"]
    assert m["pass@2"]["low"] == m["pass@2"]["high"] == pytest.approx(1 - 1 / 6)
    assert m["maj@4"]["low"] == m["maj@4"]["high"] == 1.0


def test_resume_skips_finished_problems_and_drops_a_torn_line(tmp_path):
    replay = tmp_path / "r.jsonl"
    problems = write_replay(replay, "gsm8k", lambda p: [p.reference, "#### 0"], limit=20)
    out = tmp_path / "run"
    args = ["--suite", "gsm8k", "-n", "2", "--max-problems", "20",
            "eval.batch_problems=5"]
    assert run(out, "--replay", str(replay), *args) == 0
    first = summary(out)
    samples = out / "samples" / "gsm8k.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    assert len(lines) == 20
    # A kill after two batches, in the middle of writing the third.
    samples.write_text("".join(lines[:10]) + lines[10][:37])
    (out / "summary.json").unlink()
    # The rest only: a replay that lacks the finished problems fails if they are re-sampled.
    rest = replay  # the same source (a run's settings name it), now without them
    rest.write_text("".join(replay.read_text().splitlines(keepends=True)[10:]))
    assert run(out, "--replay", str(rest), *args) == 0
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    assert [r["id"] for r in rows] == [p.id for p in problems]
    assert summary(out)["suites"] == first["suites"]
    # The same replay in a fresh out_dir fails: the skipped problems were really needed.
    assert run(tmp_path / "fresh", "--replay", str(rest), *args) == 2


def test_other_settings_in_the_same_out_dir_are_refused(tmp_path, capsys):
    replay = tmp_path / "r.jsonl"
    write_replay(replay, "gsm8k", lambda p: [p.reference] * 2, limit=4)
    out = tmp_path / "run"
    assert run(out, "--replay", str(replay), "--suite", "gsm8k", "-n", "1",
               "--max-problems", "4") == 0
    capsys.readouterr()
    assert run(out, "--replay", str(replay), "--suite", "gsm8k", "-n", "2",
               "--max-problems", "4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and "n 1 -> 2" in err[0]


@pytest.mark.parametrize("args, says", [
    (["--suite", "math50"], "unknown suite 'math50'"),
    (["--suite", "gsm8k", "-n", "2", "-k", "4"], "pass@4 needs at least 4 samples"),
    (["--suite", "nowhere.jsonl:math"], "no file nowhere.jsonl"),
    (["--suite", "gsm8k", "--preset", "greedy", "-n", "4"], "identical samples"),
    (["--suite", "math500", "--prompt-style", "few_shot"], "no standard few-shot"),
    (["--suite", "gsm8k", "-n", "0"], "eval.n: must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, says):
    replay = tmp_path / "r.jsonl"
    replay.write_text("")
    assert run(tmp_path / "o", "--replay", str(replay), *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "o" / "samples").exists()  # nothing started


def test_missing_dataset_is_one_line_and_exit_2(tmp_path, capsys):
    replay = tmp_path / "r.jsonl"
    replay.write_text("")
    code = main(["eval", "--data-dir", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "o"),
                 "--replay", str(replay), "--suite", "aime24", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "aime24/test.jsonl not found" in err[0], err


def test_replay_without_a_completion_is_one_line_and_exit_2(tmp_path, capsys):
    replay = tmp_path / "r.jsonl"
    write_replay(replay, "gsm8k", lambda p: [p.reference], limit=3)
    assert run(tmp_path / "o", "--replay", str(replay), "--suite", "gsm8k",
               "--max-problems", "4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0 completion(s) for prompt" in err[0], err


def test_user_math_suite(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": 2 * i})
                            + "\n" for i in range(6)))
    from eval.suites import get_suite

    suite = get_suite(f"{data}:math")
    problems = load_problems(suite)
    replay = tmp_path / "r.jsonl"
    with open(replay, "w") as f:
        for p in problems:  # right for even i, wrong for odd
            i = int(p.id)
            f.write(json.dumps({"prompt": build_prompt(suite, p, "r1_zero", None),
                                "completions": [f"ok</think> <answer>{2 * i + i % 2}</answer>"]})
                    + "\n")
    out = tmp_path / "run"
    assert run(out, "--replay", str(replay), "--suite", f"{data}:math") == 0
    s = summary(out)["suites"]["mine"]
    assert s["metrics"]["avg@1"]["value"] == 0.5
    assert s["format"]["value"] == 1.0


def test_compare_tells_noise_from_a_real_difference(tmp_path, capsys):
    n = 60
    make = {  # B solves every problem, A a third; C equals A
        "a": lambda p: [p.reference if int(p.id.split("-")[1]) % 3 == 0 else "#### -1"] * 2,
        "b": lambda p: [p.reference] * 2,
    }
    for name in ("a", "b"):
        write_replay(tmp_path / f"{name}.jsonl", "gsm8k", make[name], limit=n)
        assert run(tmp_path / name, "--replay", str(tmp_path / f"{name}.jsonl"), "--suite",
                   "gsm8k", "-n", "2", "--max-problems", str(n)) == 0
    capsys.readouterr()
    out = tmp_path / "cmp.json"
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    m = json.loads(out.read_text())["suites"]["gsm8k"]["metrics"]["avg@n"]
    assert m["diff"] == pytest.approx(2 / 3) and m["low"] > 0.4 and m["p_value"] < 0.01
    assert "B is higher than A" in m["verdict"] and "distinguishable from noise" in m["verdict"]
    assert "| avg@n |" in text
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "a"),
                 "--out", str(out)]) == 0
    same = json.loads(out.read_text())["suites"]["gsm8k"]["metrics"]["avg@n"]
    assert same["diff"] == 0 and same["p_value"] == 1.0
    assert "not distinguishable" in same["verdict"] or "identical" in same["verdict"]


def test_compare_refuses_what_is_not_a_run(tmp_path, capsys):
    assert main(["eval", "compare", str(tmp_path), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a finished r1kit eval run" in err[0]


def _humaneval_stub(p) -> str:
    """The prompt's function with its body replaced by ``pass``."""
    return p.gold["prompt"] + "    pass\n"


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_stubs_fail(tmp_path):
    replay = tmp_path / "r.jsonl"
    write_replay(replay, "humaneval", lambda p: [p.reference, _humaneval_stub(p)])
    out = tmp_path / "run"
    assert run(out, "--replay", str(replay), "--suite", "humaneval", "-n", "2",
               "-k", "1,2") == 0
    rows = [json.loads(x) for x in (out / "samples" / "humaneval.jsonl").read_text().splitlines()]
    assert len(rows) == 164
    assert [r["id"] for r in rows if not r["completions"][0]["correct"]] == []  # pass@1 = 1.0
    assert [r["id"] for r in rows if r["completions"][1]["correct"]] == []  # stubs: 0.0
    m = summary(out)["suites"]["humaneval"]["metrics"]
    assert m["avg@2"]["value"] == 0.5 and m["pass@2"]["value"] == 1.0


@pytest.mark.slow
def test_mbpp_reference_code_scores_at_least_99_percent(tmp_path):
    from tests.test_eval_code_suites import KNOWN_MISSES

    replay = tmp_path / "r.jsonl"
    write_replay(replay, "mbpp", lambda p: [p.reference])
    out = tmp_path / "run"
    assert run(out, "--replay", str(replay), "--suite", "mbpp") == 0
    rows = [json.loads(x) for x in (out / "samples" / "mbpp.jsonl").read_text().splitlines()]
    missed = {r["id"] for r in rows if not r["completions"][0]["correct"]}
    assert len(rows) == 500 and missed == set(KNOWN_MISSES)  # reasons are listed there
    assert summary(out)["suites"]["mbpp"]["metrics"]["avg@1"]["value"] >= 0.99


def test_hub_loading_passes_dataset_config_and_split(monkeypatch):
    """The hub cannot be reached here, so ``datasets.load_dataset`` is replaced by a stand-in
    that records its arguments and returns the local copy's rows as a real ``datasets.Dataset``:
    what is tested is r1kit's side (id, config, split, row layout), not the download."""
    import datasets

    from eval.types import read_rows

    calls = []

    def fake_load(path, name=None, split=None):
        calls.append((path, name, split))
        local = {"openai/gsm8k": "gsm8k/test.jsonl", "HuggingFaceH4/MATH-500": "math500/test.jsonl"}
        return datasets.Dataset.from_list(read_rows(DATA / local[path])[:5])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    gsm = load_problems(SUITES["gsm8k"])
    math = load_problems(SUITES["math500"])
    assert calls == [("openai/gsm8k", "main", "test"), ("HuggingFaceH4/MATH-500", None, "test")]
    assert len(gsm) == len(math) == 5 and gsm[0].gold == "18" and math[0].id.startswith("test/")
