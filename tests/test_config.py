"""Recipes and overrides: every shipped recipe loads; every kind of bad input fails early."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from r1kit.config import (
    Config,
    ConfigError,
    config_help,
    field_docs,
    load_config,
    training_groups,
    validate_training,
)
from tests.conftest import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 3


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(recipe: Path, monkeypatch):
    # Real-model recipes name data files users bring and may need a GPU: everything else is
    # checked here (tests/test_dry_run.py runs each of them for two steps on CPU).
    cfg = load_config(recipe, check_data=False)
    assert cfg.source == str(recipe)
    if "train:" in recipe.read_text():
        validate_training(cfg, this_machine=False, groups=training_groups(cfg))
    if "eval:" in recipe.read_text():  # its suites load and its sampling settings resolve
        from r1kit.eval_plan import plan_suites

        monkeypatch.chdir(REPO)  # data_dir is relative to the project root
        assert plan_suites(cfg, None)
    # every non-default value in a recipe carries a comment saying why
    for line in recipe.read_text().splitlines():
        if line.startswith("  ") and ":" in line:
            assert "#" in line, f"{recipe.name}: uncommented setting {line.strip()!r}"


def _recipe(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_values_and_overrides_apply(tmp_path):
    p = _recipe(tmp_path, "rollout:\n  n: 3\n  temperature: 1\nreward:\n  weights: [1, 2]\n")
    cfg = load_config(p, ["rollout.max_tokens=17", "reward.funcs=[accuracy, format]"])
    assert cfg.rollout.n == 3
    assert cfg.rollout.temperature == 1.0 and isinstance(cfg.rollout.temperature, float)
    assert cfg.rollout.max_tokens == 17
    assert cfg.reward.weights == [1.0, 2.0]
    assert cfg.reward.funcs == ["accuracy", "format"]


@pytest.mark.parametrize(
    "text, overrides, needle",
    [
        ("rollout:\n  nn: 3\n", [], "unknown key rollout.nn"),
        ("rolout:\n  n: 3\n", [], "unknown section 'rolout'"),
        ("rollout:\n  n: three\n", [], "rollout.n: expected int, got 'three'"),
        ("rollout:\n  n: 2.5\n", [], "rollout.n: expected int"),
        ("rollout:\n  n: true\n", [], "rollout.n: expected int"),
        ("rollout:\n  engine: tgi\n", [], "rollout.engine: expected one of"),
        ("model:\n  path: /nonexistent/ckpt\n", [], "model.path: checkpoint folder"),
        ("model:\n  path: tiny:llama\n", [], "model.path: unknown tiny policy"),
        ("model:\n  path: tiny:qwen3_moe/big\n", [], "model.path: unknown tiny policy"),
        ("data:\n  source: /nope.jsonl\n", [], "data.source"),
        ("rollout:\n  n: 0\n", [], "rollout.n: must be >= 1"),
        ("rollout:\n  max_tokens: 2048\n", [], "rollout.max_tokens: 2048 leaves no room"),
        ("rollout:\n  top_p: 0\n", [], "rollout.top_p"),
        ("reward:\n  funcs: [accuracy]\n  weights: [1, 2]\n", [], "reward.weights: 2 weights for 1"),
        ("reward:\n  funcs: [no_such_reward]\n  weights: [1]\n", [], "reward.funcs"),
        ("reward:\n  funcs: [soft_overlong]\n  weights: [1]\n  overlong_buffer: 500\n", [],
         "reward.overlong_buffer: must be in (0, rollout.max_tokens=128)"),
        ("rollout: 3\n", [], "section 'rollout' must be a mapping"),
        ("- a\n- b\n", [], "expected a mapping of sections"),
        ("rollout:\n  n: [\n", [], "not valid YAML"),
        ("", ["rollout.n"], "expected section.key=value"),
        ("", ["rollout.n=x"], "command line: rollout.n: expected int"),
        ("", ["nosuch.key=1"], "unknown section 'nosuch'"),
    ],
)
def test_bad_input_names_key_and_file(tmp_path, text, overrides, needle):
    p = _recipe(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p, overrides)
    msg = str(e.value)
    assert needle in msg
    assert "\n" not in msg
    if not overrides:
        assert str(p) in msg


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config("/nonexistent/recipe.yaml")


def test_every_field_is_documented_and_in_help():
    help_text = config_help()
    for section, obj in vars(Config()).items():
        if section == "source":
            continue
        docs = field_docs(type(obj))
        for name in vars(obj):
            assert docs.get(name), f"{section}.{name} has no docstring"
            assert f"{section}.{name} (" in help_text
    assert "Completions per prompt (the GRPO group size)." in help_text


def test_cli_config_error_exits_2_with_one_line(tmp_path):
    p = _recipe(tmp_path, "rollout:\n  n: three\n")
    r = subprocess.run([sys.executable, "-m", "r1kit", "generate", str(p)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "rollout.n" in r.stderr and str(p) in r.stderr


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["rollout.n=1"], "rollout.n: GRPO compares completions within a group"),
        (["algo.mismatch_cap=0.9"], "need 0 < mismatch_low < 1 < mismatch_cap"),
        (["train.epochs=0"], "train.epochs: must be >= 1"),
        (["train.token_budget=100"], "train.token_budget: 100 is below rollout.max_model_len"),
        (["train.resume=/no/such/ckpt"], "train.resume: neither auto, never, nor a checkpoint"),
        (["algo.policy_loss=dual_clip", "algo.dual_clip=1.0"], "algo.dual_clip: must be > 1"),
        (["algo.routing_replay=true", "rollout.engine=vllm_server"],
         "algo.routing_replay: the vllm_server engine does not report routed experts"),
    ],
)
def test_training_settings_fail_before_work(overrides, needle):
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError) as e:
        validate_training(cfg)
    assert needle in str(e.value)


def test_float_settings_accept_yaml_exponents():
    # PyYAML reads 3e-3 (no dot) as a string; a float setting takes it as the number.
    assert load_config(None, ["train.lr=3e-3"]).train.lr == 0.003
    with pytest.raises(ConfigError, match="train.lr: expected float"):
        load_config(None, ["train.lr=fast"])


def test_routing_replay_with_vllm_on_cpu_fails_before_work():
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU vLLM reports routed experts")  # the CPU branch is what runs here
    cfg = load_config(None, ["algo.routing_replay=true", "rollout.engine=vllm"])
    with pytest.raises(ConfigError, match="vLLM reports routed experts only on GPU"):
        validate_training(cfg)


def test_recipe_that_is_not_utf8_is_one_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes(b"rollout:\n  n: 4  # \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: not UTF-8 text"):
        load_config(p)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["reward.weights=[.nan, 1]"], "reward.weights[0]: must be a finite number, got nan"),
        (["rollout.temperature=.inf"], "rollout.temperature: must be a finite number"),
        (["log.out_dir=/etc/hostname/run"],
         "log.out_dir: cannot create or write '/etc/hostname/run'"),
        # a NaN typed on a command line is a string to YAML; the same words as in a recipe
        (["rollout.temperature=nan"], "rollout.temperature: must be a finite number, got 'nan'"),
        (["train.lr=-inf"], "train.lr: must be a finite number, got '-inf'"),
        # os.access says root may write anywhere; creating the folder says otherwise
        (["log.out_dir=/proc/forbidden"], "log.out_dir: cannot create or write '/proc/forbidden'"),
    ],
)
def test_non_finite_numbers_and_unwritable_out_dir(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value)


def test_model_folder_must_hold_a_causal_lm(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    with pytest.raises(ConfigError, match="model.path: .* is not a causal language model"):
        load_config(None, [f"model.path={tmp_path}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="model.path: .* has no config.json"):
        load_config(None, [f"model.path={tmp_path / 'empty'}"])


def test_data_file_lines_need_the_configured_keys(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": "4"}\n')
    with pytest.raises(ConfigError, match=r"data.question_key: .*d.jsonl:2 has no field "
                                          r"'question' \(has: problem, answer\)"):
        load_config(None, [f"data.source={data}"])
    load_config(None, [f"data.source={data}", "data.num_prompts=1"])  # only line 1 is read
    data.write_text("not json\n")
    with pytest.raises(ConfigError, match=r"data.source: .*d.jsonl:1: not a JSON line"):
        load_config(None, [f"data.source={data}"])


def test_cosine_schedule_decays_to_zero_over_every_optimiser_step():
    """train.lr_schedule=cosine counts steps x epochs x minibatches optimiser steps: the
    learning rate is the full value right after warm-up, half of it half-way through the decay
    and near 0 at the last step; constant stays at the full value."""
    import torch

    from r1kit.config import load_config
    from r1kit.train import make_optimizer

    def lrs(schedule: str) -> list[float]:
        cfg = load_config(None, ["train.steps=5", "train.epochs=2", "train.minibatches=2",
                                 "train.warmup_steps=2", "train.lr=1.0",
                                 f"train.lr_schedule={schedule}"])
        opt, sched = make_optimizer(cfg, torch.nn.Linear(2, 2))
        out = []
        for _ in range(20):  # 5 x 2 x 2 optimiser steps
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    cos = lrs("cosine")
    assert cos[:3] == [0.5, 1.0, 1.0]
    assert cos[11] == pytest.approx(0.5)  # 9 of the 18 decay steps done
    assert 0 < cos[-1] < 0.01
    assert all(a >= b for a, b in zip(cos[1:], cos[2:]))
    assert lrs("constant")[1:] == [1.0] * 19


# --- a model folder's weights, found before any model loads ------------------------------------

CAUSAL_CONFIG = '{"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}'


def safetensors_bytes(numbers: int) -> bytes:
    """A valid safetensors file of one float32 tensor of ``numbers`` zeros."""
    import json

    header = json.dumps({"w": {"dtype": "F32", "shape": [numbers],
                               "data_offsets": [0, 4 * numbers]}}).encode()
    return len(header).to_bytes(8, "little") + header + bytes(4 * numbers)


def test_model_folder_needs_readable_weights(tmp_path):
    (tmp_path / "config.json").write_text(CAUSAL_CONFIG)
    with pytest.raises(ConfigError, match=r"^command line: model.path: .* has config.json but "
                                          r"no weights"):
        load_config(None, [f"model.path={tmp_path}"])
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(safetensors_bytes(100))
    assert load_config(None, [f"model.path={tmp_path}"]).model.path == str(tmp_path)
    weights.write_bytes(safetensors_bytes(100)[:300])  # an interrupted copy
    with pytest.raises(ConfigError, match=r"model.safetensors: truncated: 300 bytes, its "
                                          r"tensors need 4\d\d"):
        load_config(None, [f"model.path={tmp_path}"])
    weights.write_bytes(b"\xff" * 4)
    with pytest.raises(ConfigError, match="model.safetensors: truncated .*not a safetensors"):
        load_config(None, [f"model.path={tmp_path}"])
    weights.unlink()
    (tmp_path / "model.safetensors.index.json").write_text(
        '{"weight_map": {"w": "model-00001-of-00002.safetensors"}}')
    with pytest.raises(ConfigError, match="lists 1 missing shard"):
        load_config(None, [f"model.path={tmp_path}"])
    # plan (check_data=False) sizes a model from its config alone: no weights needed
    assert load_config(None, [f"model.path={tmp_path}"], check_data=False)


def test_a_file_as_model_path_is_called_a_file(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(safetensors_bytes(4))
    with pytest.raises(ConfigError, match=r"model.path: '.*model.safetensors' is a file; give "
                                          r"the checkpoint folder"):
        load_config(None, [f"model.path={f}"])


def test_errors_blame_where_the_value_was_given(tmp_path):
    recipe = _recipe(tmp_path, "rollout:\n  n: 0\n")
    with pytest.raises(ConfigError, match=r"^.*r\.yaml: rollout.n: must be >= 1"):
        load_config(recipe)
    fine = _recipe(tmp_path, "rollout:\n  n: 4\n")
    with pytest.raises(ConfigError, match=r"^command line: rollout.n: must be >= 1"):
        load_config(fine, ["rollout.n=0"])
    with pytest.raises(ConfigError, match=r"^command line: train.steps: must be >= 1"):
        validate_training(load_config(fine, ["train.steps=0"]))
    # the reward list given on the command line, its weights left at the default
    with pytest.raises(ConfigError, match=r"^command line: reward.funcs: 2 weights for 1"):
        load_config(fine, ["reward.funcs=[accuracy]"])


@pytest.mark.parametrize("func, tail", [
    ("package.module:function", ("reward 'package.module:function': cannot import module "
                                 "'package.module' (ModuleNotFoundError: No module named "
                                 "'package')")),
    ("os.path:nosuchfn", ("reward 'os.path:nosuchfn': module 'os.path' has no attribute "
                          "'nosuchfn'")),
])
def test_reward_errors_keep_their_closing_quotes(func, tail):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"reward.funcs=[{func}]", "reward.weights=[1]"])
    assert str(e.value) == f"command line: reward.funcs: {tail}"


def test_out_dir_check_holds_when_ranks_race(tmp_path):
    """Every rank of a launch checks ``log.out_dir`` at once: each must see a writable folder,
    although the others create (and remove) the same folders during its own check."""
    from concurrent.futures import ThreadPoolExecutor

    from r1kit.config import folder_problem

    for i in range(20):
        folder = tmp_path / f"run{i}" / "a" / "b"
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(folder_problem, [folder] * 4)) == [None] * 4
