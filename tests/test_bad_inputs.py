"""Bad inputs to every subcommand: exit code 2, one line on stderr naming the key or file, no
traceback, and nothing written to the output folder (every case here is found up front, before a
model loads). The CLI runs in this process (``r1kit.cli.main``); one case runs as a user does,
in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from r1kit.cli import main
from tests.conftest import REPO
from tests.test_compare_stats import write_run

TINY_RECIPE = str(REPO / "recipes" / "tiny_r1_zero.yaml")


@pytest.fixture
def files(tmp_path, monkeypatch) -> dict[str, str]:
    """Inputs the cases point at, in a fresh working folder; ``{out}`` is the output folder
    every case names (it must not exist afterwards)."""
    monkeypatch.chdir(tmp_path)
    f = {"out": str(tmp_path / "out"), "tmp": str(tmp_path)}
    causal = '{"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}'
    for name in ("noweights", "truncated"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(causal)
        f[name] = str(tmp_path / name)
    header = json.dumps({"w": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}})
    blob = len(header).to_bytes(8, "little") + header.encode() + bytes(256)
    (tmp_path / "truncated" / "model.safetensors").write_bytes(blob[:100])
    (tmp_path / "weights.safetensors").write_bytes(blob)
    f["file"] = str(tmp_path / "weights.safetensors")
    (tmp_path / "bad.jsonl").write_text('{"question": "1+1?", "answer": "2"}\nnot json\n')
    f["bad_jsonl"] = str(tmp_path / "bad.jsonl")
    (tmp_path / "pairs.jsonl").write_text('{"pred": "2", "gold": "2"}\n')
    f["pairs"] = str(tmp_path / "pairs.jsonl")
    (tmp_path / "prog.py").write_text("print(1)\n")
    f["prog"] = str(tmp_path / "prog.py")
    (tmp_path / "bad_key.yaml").write_text("rollout:\n  nn: 4\n")
    f["bad_key"] = str(tmp_path / "bad_key.yaml")
    (tmp_path / "replay.jsonl").write_text('{"prompt": "p", "completions": ["c"]}\n')
    f["replay"] = str(tmp_path / "replay.jsonl")
    (tmp_path / "empty").mkdir()
    f["empty"] = str(tmp_path / "empty")
    (tmp_path / "norun" / "checkpoints").mkdir(parents=True)
    f["norun"] = str(tmp_path / "norun")
    f["run_a"] = str(write_run(tmp_path / "run_a", {"s": [[True]] * 3}))
    return f


CASES = [
    # generate: model folders, settings, data, rewards, output folder
    (["generate", "model.path={noweights}", "log.out_dir={out}"], "has config.json but no weights"),
    (["generate", "model.path={truncated}", "log.out_dir={out}"], "model.safetensors: truncated"),
    (["generate", "model.path={file}", "log.out_dir={out}"], "weights.safetensors' is a file"),
    (["generate", "log.out_dir=/proc/forbidden"], "log.out_dir: cannot create or write"),
    (["generate", "rollout.temperature=nan", "log.out_dir={out}"],
     "command line: rollout.temperature: must be a finite number"),
    (["generate", "rollout.n=0", "log.out_dir={out}"], "command line: rollout.n: must be >= 1"),
    (["train", "rollout.engine=vllm_server", "rollout.data_parallel_size=0", "log.out_dir={out}"],
     "rollout.data_parallel_size: must be >= 1"),
    (["generate", "rollout.top_p=2", "log.out_dir={out}"], "rollout.top_p: must be in (0, 1]"),
    (["generate", "{bad_key}", "log.out_dir={out}"], "bad_key.yaml: unknown key rollout.nn"),
    (["generate", "/nonexistent/recipe.yaml"], "/nonexistent/recipe.yaml: recipe file not found"),
    (["generate", "data.source={tmp}/missing.jsonl", "log.out_dir={out}"], "data.source"),
    (["generate", "data.source={bad_jsonl}", "log.out_dir={out}"], "bad.jsonl:2"),
    (["generate", "reward.funcs=[os.path:nosuchfn]", "reward.weights=[1]", "log.out_dir={out}"],
     "has no attribute 'nosuchfn'"),
    (["generate", "rollout.n"], "rollout.n"),
    (["generate", "--bogus"], "unrecognized arguments: --bogus"),
    # train
    (["train", "model.path={noweights}", "log.out_dir={out}"], "has config.json but no weights"),
    (["train", "model.path={truncated}", "log.out_dir={out}"], "model.safetensors: truncated"),
    (["train", "train.steps=0", "log.out_dir={out}"], "command line: train.steps: must be >= 1"),
    (["train", "algo.clip_low=-1", "log.out_dir={out}"], "algo.clip_low: must be >= 0"),
    (["train", "train.resume=/nonexistent", "log.out_dir={out}"], "train.resume"),
    (["train", "train.lr=inf", "log.out_dir={out}"], "train.lr: must be a finite number"),
    (["train", "log.out_dir=/proc/forbidden"], "log.out_dir: cannot create or write"),
    # eval and eval compare
    (["eval", "--model", "{noweights}", "--out-dir", "{out}"], "has config.json but no weights"),
    (["eval", "--model", "{truncated}", "--out-dir", "{out}"], "model.safetensors: truncated"),
    (["eval", "--suite", "{bad_jsonl}:math", "--replay", "{replay}", "--out-dir", "{out}"],
     "command line: eval.suites: suite bad: cannot read"),
    (["eval", "--suite", "nosuchsuite", "--replay", "{replay}", "--out-dir", "{out}"],
     "eval.suites"),
    (["eval", "eval.temperature=nan", "--out-dir", "{out}"], "eval.temperature: must be a finite"),
    (["eval", "--out-dir", "/proc/forbidden"], "log.out_dir: cannot create or write"),
    (["eval", "-n", "x"], "argument -n: invalid int value: 'x'"),
    (["eval", "compare", "{empty}", "{empty}"], "is not a finished r1kit eval run"),
    (["eval", "compare", "{run_a}", "{run_a}", "--samples", "0"], "--samples must be >= 1"),
    (["eval", "compare", "{run_a}", "{run_a}", "--out", "/etc/hostname/x.json"], "--out"),
    # distill, demo, distill-demo, tiny
    (["distill", "distill.teacher=", "log.out_dir={out}"], "distill.teacher: empty"),
    (["distill", "distill.teacher={noweights}", "log.out_dir={out}"],
     "command line: distill.teacher: {noweights} has config.json but no weights"),
    (["distill", "model.path={truncated}", "distill.teacher=tiny:qwen3", "log.out_dir={out}"],
     "model.safetensors: truncated"),
    (["demo", TINY_RECIPE, "model.path=tiny:qwen3_moe", "log.out_dir={out}"],
     "model.path must be an embedded base"),
    (["demo", TINY_RECIPE, "train.steps=0", "log.out_dir={out}"], "train.steps: must be >= 1"),
    (["demo", "--heldout", "0"], "--heldout must be >= 1"),
    (["demo", "--base-steps", "0"], "--base-steps must be >= 1"),
    (["distill-demo", "-n", "0", "--out-dir", "{out}"], "-n must be >= 1"),
    (["distill-demo", "--out-dir", "/proc/forbidden"], "--out-dir: cannot create or write"),
    (["tiny", "--family", "nope"], "argument --family: invalid choice: 'nope'"),
    (["tiny", "--cache-dir", "/proc/forbidden"], "--cache-dir: cannot create or write"),
    # plan
    (["plan", "plan.gpu=a100_10g"], "plan.gpu: expected one of"),
    (["plan", "model.path=/nonexistent/ckpt"], "model.path"),
    (["plan", "plan.mfu=nan"], "plan.mfu: must be a finite number"),
    # a value typed on the command line is blamed on it, not on the recipe beside it
    (["plan", TINY_RECIPE, "plan.gpus=0"], "command line: plan.gpus: must be >= 1"),
    (["plan", TINY_RECIPE, "plan.mfu=2"], "command line: plan.mfu: must be in (0, 1]"),
    (["plan", TINY_RECIPE, "plan.gpus=3", "plan.engine_tp=2"],
     "command line: plan.engine_tp: 2 does not divide plan.gpus=3"),
    (["plan", TINY_RECIPE, "train.lora_rank=8", "train.lora_targets=[nosuch]"],
     "command line: train.lora_targets: no Linear module"),
    (["distill", TINY_RECIPE, "distill.teacher={norun}", "log.out_dir={out}"],
     "command line: distill.teacher: run folder '{norun}' holds no complete checkpoint"),
    # grade
    (["grade", "--jsonl", "{tmp}/missing.jsonl"], "missing.jsonl"),
    (["grade", "--jsonl", "{bad_jsonl}"], "bad.jsonl:1"),
    (["grade", "--jsonl", "{pairs}", "--out", "/etc/hostname/x"], "--out /etc/hostname/x"),
    (["grade", "--jsonl", "{pairs}", "--timeout-s", "nan"], "--timeout-s must be a positive"),
    # sandbox
    (["sandbox", "{prog}", "--timeout", "nan"], "--timeout must be a number of seconds"),
    (["sandbox", "{prog}", "--timeout", "inf"], "--timeout must be a number of seconds"),
    (["sandbox", "{prog}", "--timeout", "-1"], "--timeout must be a number of seconds"),
    (["sandbox", "{prog}", "--memory-mb", "-5"], "--memory-mb must be in [1,"),
    (["sandbox", "{prog}", "--memory-mb", "0"], "--memory-mb must be in [1,"),
    (["sandbox", "{tmp}/missing.py"], "no such file: "),
    # the console script itself, and bench
    (["trian"], "unknown command 'trian'"),
    (["bench", "nosuch"], "unknown benchmark 'nosuch'"),
]


def run_cli(argv: list[str], capfd) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's errors
        code = e.code
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, needle", CASES, ids=lambda x: " ".join(x)[:60]
                         if isinstance(x, list) else None)
def test_bad_input_is_one_line_and_exit_2(argv, needle, files, capfd):
    argv = [a.format(**files) for a in argv]
    code, _, err = run_cli(argv, capfd)
    lines = err.strip().splitlines()
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert len(lines) == 1, err
    assert needle.format(**files) in lines[0], lines[0]
    assert not Path(files["out"]).exists()


def test_there_are_at_least_40_cases_over_every_subcommand():
    from r1kit.cli import COMMANDS

    assert len(CASES) >= 40
    assert set(COMMANDS) <= {argv[0] for argv, _ in CASES} | {"trian"}


def test_a_broken_user_suite_has_no_data_dir_hint(files, capfd):
    code, _, err = run_cli(["eval", "--suite", f"{files['bad_jsonl']}:math", "--replay",
                            files["replay"], "--out-dir", files["out"]], capfd)
    assert code == 2 and "bad.jsonl:2: not JSON" in err and "eval.data_dir" not in err


def test_grade_checks_its_output_first_and_writes_as_it_grades(files, capfd):
    out = Path(files["tmp"]) / "graded.jsonl"
    code, _, err = run_cli(["grade", "--jsonl", files["pairs"], "--out", str(out)], capfd)
    assert code == 0 and "graded 1 pairs: 1 correct" in err
    assert json.loads(out.read_text())["correct"] is True


def test_as_a_user_runs_it(files):
    r = subprocess.run([sys.executable, "-m", "r1kit", "sandbox", files["prog"], "--timeout",
                        "inf"], capture_output=True, text=True, cwd=REPO, check=False)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == ("r1kit sandbox: --timeout must be a number of seconds in "
                                "(0, 86400.0], got inf")


def test_unsafe_sandbox_warning_is_said_once(files):
    r = subprocess.run([sys.executable, "-m", "r1kit", "sandbox", files["prog"], "--isolation",
                        "rlimits_unsafe"], capture_output=True, text=True, cwd=REPO, check=False)
    assert r.returncode == 0 and json.loads(r.stdout)["stdout"] == "1\n"
    assert r.stderr.count("SANDBOX UNSAFE") == 1, r.stderr


def test_grade_help_is_plain_text(capfd):
    code, out, _ = run_cli(["grade", "--help"], capfd)
    assert code == 0 and "Grade a JSON-lines file" in out and "``" not in out
