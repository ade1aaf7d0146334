"""The evaluation protocol of the papers: DeepSeek-R1's template word for word, the Qwen-Math and
chat-think templates, the answer part graded (not unfinished reasoning), the ``r1`` preset's
32,768-token budget and cons@64, and LiveCodeBench's private tests, date window, time limit and
per-line comparison. Hand-made problems; the replay engine stands in for sampling."""

from __future__ import annotations

import base64
import json
import pickle
import zlib
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from eval.code_suites import CODE_SUITES, LCB_TIMEOUT_S
from r1kit.cli import main
from r1kit.config import ConfigError, load_config
from r1kit.eval_plan import build_prompt, context_length, plan_suites
from rewards.format import format_reward
from rollouts.prompts import build_prompt as style_prompt

DATA = Path(__file__).parents[2] / "shared" / "data"

# DeepSeek-R1 (DeepSeek-AI 2025), Table 1, as printed, "prompt" standing for the question.
R1_TABLE_1 = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process "
    "here </think> <answer> answer here </answer>. User: prompt. Assistant:")


def word_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A real tokenizer with one token per whitespace-separated word (prompt lengths by hand)."""
    tok = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                   chat_template=chat_template)


PLAIN_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# --- prompt styles ---------------------------------------------------------------------------


def test_r1_zero_is_table_1_word_for_word_with_the_think_block_opened():
    prompt = style_prompt("What is 2 + 2?", "r1_zero")
    assert prompt == R1_TABLE_1.replace("User: prompt.", "User: What is 2 + 2?.") + " <think>"
    # The one addition keeps R1's format reward meaningful: completions start inside <think>.
    assert format_reward([" 2 + 2 = 4 </think> <answer>4</answer>"])[0] == 1.0


def test_qwen_math_and_chat_think_templates():
    assert style_prompt("What is 2 + 2?", "qwen_math") == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    tok = word_tokenizer(PLAIN_CHAT)
    assert style_prompt("Hi", "chat_think", tok) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n")
    opened = word_tokenizer(PLAIN_CHAT + "<think>\n")  # R1-distill templates open it already
    assert style_prompt("Hi", "chat_think", opened).count("<think>") == 1
    with pytest.raises(ValueError, match="unknown prompt style"):
        style_prompt("Hi", "r1", tok)


# --- what is graded ----------------------------------------------------------------------------


def _math_suite(tmp_path: Path, completions: list[str]) -> tuple[str, Path]:
    """A one-problem user math suite (2 + 2 = 4) and a replay answering it with ``completions``."""
    data = tmp_path / "sums.jsonl"
    data.write_text(json.dumps({"id": "p", "question": "What is 2 + 2?", "answer": "4"}) + "\n")
    spec = f"{data}:math"
    from eval.suites import get_suite, load_problems

    suite = get_suite(spec)
    p, = load_problems(suite)
    replay = tmp_path / "replay.jsonl"
    replay.write_text(json.dumps({"prompt": build_prompt(suite, p, "r1_zero", None),
                                  "completions": completions}) + "\n")
    return spec, replay


def _grades(tmp_path: Path, spec: str, replay: Path, *args: str) -> list[bool]:
    out = tmp_path / ("run" + "".join(a.strip("-") for a in args))
    assert main(["eval", "--suite", spec, "--replay", str(replay), "--prompt-style", "r1_zero",
                 "--out-dir", str(out), "--no-progress", *args]) == 0
    row = json.loads((out / "samples" / "sums.jsonl").read_text())
    return [c["correct"] for c in row["completions"]]


COMPLETIONS = [
    "Maybe \\boxed{4}, let me check that again and",  # cut inside the think block
    "Checked.</think> <answer>4</answer>",
    "Checked.</think> So the answer is $\\boxed{4}$.",
    "Perhaps \\boxed{4}.</think> <answer>5</answer>",  # a box in the reasoning does not count
]


def test_a_box_inside_an_unclosed_think_block_scores_zero(tmp_path):
    spec, replay = _math_suite(tmp_path, COMPLETIONS)
    n = str(len(COMPLETIONS))
    assert _grades(tmp_path, spec, replay, "-n", n) == [False, True, True, False]
    # Base models without tags: the whole text (what r1kit graded before), where the box in the
    # cut reasoning pays.
    assert _grades(tmp_path, spec, replay, "-n", n, "--graded-text", "whole") == \
        [True, True, True, False]
    # lighteval / Qwen2.5-Math: the last \boxed{} of the answer part, nothing else.
    assert _grades(tmp_path, spec, replay, "-n", n, "--boxed-only") == [False, False, True, False]


# --- the r1 preset -------------------------------------------------------------------------------


def test_r1_preset_budget_samples_and_report(tmp_path):
    from eval.suites import SUITES, load_problems

    aime = load_problems(SUITES["aime24"], str(DATA))[:2]
    replay = tmp_path / "aime.jsonl"
    with open(replay, "w") as f:
        for p in aime:  # 40 right, 20 wrong, 4 cut by the budget
            comps = ([f"ok</think> \\boxed{{{p.gold}}}"] * 40 + ["ok</think> \\boxed{1}"] * 20
                     + [{"text": "still thinking", "finish_reason": "length"}] * 4)
            f.write(json.dumps({"prompt": build_prompt(SUITES["aime24"], p, "r1_zero", None),
                                "completions": comps}) + "\n")
    out = tmp_path / "run"
    assert main(["eval", "--suite", "aime24", "--replay", str(replay), "--data-dir", str(DATA),
                 "--preset", "r1", "--prompt-style", "r1_zero", "--max-problems", "2",
                 "--out-dir", str(out), "--no-progress", "eval.bootstrap=50"]) == 0
    s = json.loads((out / "summary.json").read_text())["suites"]["aime24"]
    assert s["n"] == 64 and s["sampling"]["max_tokens"] == 32768
    assert s["sampling"]["budget_from"] == "preset r1"
    assert (s["truncated_count"], s["completions"]) == (8, 128)
    assert s["metrics"]["avg@64"]["value"] == pytest.approx(40 / 64)
    assert s["metrics"]["maj@64"]["value"] == 1.0
    assert s["template"].startswith("DeepSeek-R1 Table 1")
    report = (out / "report.md").read_text()
    assert "| maj@64 (= cons@64) |" in report
    assert "budget 32768 new tokens (preset r1); 8 of 128 (6.2%) completions truncated" in report
    assert "Prompt: `r1_zero`, DeepSeek-R1 Table 1 template" in report
    assert "Graded: the text after </think>." in report


def test_maj_below_64_is_not_called_cons64(tmp_path):
    from eval.report import metric_title

    assert metric_title("maj@16") == "maj@16 (not cons@64)"


def test_a_preset_budget_is_lowered_to_the_context_an_explicit_one_is_not():
    tok = word_tokenizer()
    base = [f"eval.data_dir={DATA}", "eval.suites=[gsm8k]", "eval.max_problems=3",
            "eval.prompt_style=r1_zero"]
    cfg = load_config(None, base)
    plan, = plan_suites(cfg, tok)
    longest = max(len(tok(p)["input_ids"]) for p in plan.prompts)
    assert context_length(cfg, [plan], tok, limit=4096) == 4096
    assert plan.max_tokens == 4096 - longest and "32768 (preset r1)" in plan.budget_capped
    cfg = load_config(None, [*base, "eval.max_tokens=8192"])
    plan, = plan_suites(cfg, tok)
    with pytest.raises(ConfigError, match="eval.max_tokens"):
        context_length(cfg, [plan], tok, limit=4096)
    greedy, = plan_suites(load_config(None, [*base, "eval.preset=greedy"]), tok)
    assert (greedy.n, greedy.temperature, greedy.max_tokens) == (1, 0.0, 1024)  # GSM8K's own


# --- LiveCodeBench -------------------------------------------------------------------------------


def _lcb_row(qid: str, public: list, private, date: str = "2024-09-01T00:00:00") -> dict:
    return {"question_title": qid, "question_content": "Double the number.", "platform": "atcoder",
            "question_id": qid, "contest_id": "x", "contest_date": date, "starter_code": "",
            "difficulty": "easy", "public_test_cases": json.dumps(public),
            "private_test_cases": private, "metadata": "{}"}


def _stdin(i: str, o: str) -> dict:
    return {"input": i, "output": o, "testtype": "stdin"}


def _encoded(tests: list) -> str:
    """LiveCodeBench lite's private tests: base64 of a zlib-compressed pickle of JSON text."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def test_lcb_private_tests_are_read_and_run():
    suite = CODE_SUITES["livecodebench"]
    rows = [_lcb_row("enc", [_stdin("2\n", "4\n")], _encoded([_stdin("7\n", "14\n")])),
            _lcb_row("json", [_stdin("2\n", "4\n")], json.dumps([_stdin("5\n", "10\n")])),
            _lcb_row("none", [_stdin("2\n", "4\n")], "")]
    enc, js, none = suite.to_problems(rows)
    assert [p.meta["private_tests"] for p in (enc, js, none)] == [1, 1, 0]
    right, public_only = "print(2 * int(input()))", "print(4)"
    grades = suite.grade([enc, enc, js, none], [right, public_only, public_only, public_only])
    assert [(g.correct, g.detail) for g in grades] == [
        (True, "2/2 tests"), (False, "1/2 tests"), (False, "1/2 tests"), (True, "1/1 tests")]


def test_lcb_pickled_tests_cannot_run_code():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    blob = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        CODE_SUITES["livecodebench"].to_problems([_lcb_row("x", [], blob)])


def test_lcb_per_line_comparison_in_the_sandbox():
    suite = CODE_SUITES["livecodebench"]
    p, = suite.to_problems([_lcb_row("cmp", [_stdin("", "0.5 2\nYes\n")], "")])
    programs = ["print('0.50  2.0')\nprint('  Yes  ')\n\n",   # decimals equal, spaces stripped
                "print('0.5 2')\nprint()\nprint('Yes')",     # an extra line inside
                "print('0.5 2')\nprint('yes')",               # case matters
                "print('0.5000001 2')\nprint('Yes')"]         # no tolerance: decimals, exact
    assert [g.correct for g in suite.grade([p] * 4, programs)] == [True, False, False, False]


def test_lcb_time_limit_is_six_seconds_per_test():
    """Slower than the sandbox default of 5 s but within LCB's 6 s passes; looping forever
    fails at the limit. Both run at once (about 6 s of wall time)."""
    assert LCB_TIMEOUT_S == 6.0
    suite = CODE_SUITES["livecodebench"]
    p, = suite.to_problems([_lcb_row("slow", [_stdin("", "1\n")], "")])
    slow = ("import time\nt = time.monotonic()\nwhile time.monotonic() - t < 5.3:\n    pass\n"
            "print(1)")
    grades = suite.grade([p, p], [slow, "while True:\n    pass"])
    assert grades[0].correct, grades[0].detail
    assert not grades[1].correct and "timeout" in grades[1].detail


def test_lcb_window_and_public_only_label(tmp_path, capsys):
    """The local copy has public tests only: the report and summary say so; the window keeps
    the problems dated inside it."""
    from eval.suites import SUITES, load_problems

    lcb = [p for p in load_problems(SUITES["livecodebench"], str(DATA))
           if "2023-09-01" <= p.meta["contest_date"][:10] <= "2023-09-10"]
    replay = tmp_path / "lcb.jsonl"
    replay.write_text("".join(json.dumps({
        "prompt": build_prompt(SUITES["livecodebench"], p, "r1_zero", None),
        "completions": ["no code"]}) + "\n" for p in lcb))
    out = tmp_path / "run"
    args = ["eval", "--suite", "livecodebench", "--replay", str(replay), "--data-dir", str(DATA),
            "--prompt-style", "r1_zero", "-n", "1", "--out-dir", str(out), "--no-progress"]
    assert main([*args, "--lcb-window", "2023-09-01:2023-09-10"]) == 0
    s = json.loads((out / "summary.json").read_text())["suites"]["livecodebench"]
    assert s["problems"] == s["of"] == len(lcb) > 0
    assert s["tests"] == "public tests only" and s["lcb_window"] == "2023-09-01:2023-09-10"
    report = (out / "report.md").read_text()
    assert "Tests: public tests only (not comparable with LiveCodeBench's published" in report
    capsys.readouterr()
    assert main([*args, "--lcb-window", "2024-08-01:2025-01-31"]) == 2
    err = capsys.readouterr().err
    assert "eval.lcb_window" in err and "2023-05" in err  # says what the data spans
    assert main([*args, "--lcb-window", "August"]) == 2
