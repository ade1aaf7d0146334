"""Everything about an evaluation decided before an engine starts: suites loaded, prompts built,
sampling resolved from preset and suite defaults, ks checked against n, context sized.

Any problem here is a one-line ``ConfigError`` (exit code 2), never a failure half-way through.
Sampling precedence: explicit ``eval.*`` setting > preset > suite default.

The presets:

- ``r1``: DeepSeek-R1's evaluation (DeepSeek-AI 2025, section 3.1 and its README): temperature
  0.6, top-p 0.95, up to 32,768 new tokens, and 64 samples on AIME and AMC, so the report carries
  pass@1 over 64 samples and cons@64 (maj@64). Where the model's context (or ``eval.max_model_len``)
  cannot hold prompt + 32,768, the budget is lowered to what fits and the report says so; an
  explicit ``eval.max_tokens`` that does not fit is an error.
- ``greedy``: temperature 0, one sample: Qwen2.5-Math's evaluation (``math_eval.py``:
  temperature 0, top-p 1, n_sampling 1), which reports GSM8K this way; its prompt is the
  ``qwen_math`` style.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from eval.code_suites import lcb_filter
from eval.suites import SuiteError, get_suite, load_problems
from eval.types import EvalProblem, Suite, SuitePlan
from r1kit.config import Config, ConfigError, origin
from rollouts.prompts import CHAT_STYLES, encode_prompt
from rollouts.prompts import build_prompt as style_prompt

PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeek-R1, section 3.1: temperature 0.6, top-p 0.95, 32,768 tokens, k = 64 on AIME.
    "r1": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 32768,
           "n": {"aime24": 64, "amc23": 64}},
    # Qwen2.5-Math's math_eval.py: temperature 0, top-p 1, one sample.
    "greedy": {"temperature": 0.0, "top_p": 1.0, "max_tokens": None, "n": {}},
}
WHOLE_TEXT_STYLES = ("qwen_math", "few_shot")
"""Prompt styles whose completions have no think block: ``graded_text: auto`` grades them whole."""


def default_ks(suite_ks: Sequence[int], n: int) -> list[int]:
    """pass@k values reported when ``eval.k`` is empty: 1, 2, 4, ... up to ``n``, ``n`` itself,
    and the suite's own ks up to ``n``, so that pass@k against k (the curve RL papers plot,
    DeepSeekMath section 5.2.2) is there for any suite sampled more than once.

    >>> default_ks((1, 10), 10), default_ks((1,), 4), default_ks((1, 8, 16), 1)
    ([1, 2, 4, 8, 10], [1, 2, 4], [1])
    """
    ladder = {2**i for i in range(n.bit_length()) if 2**i <= n} | {n}
    return sorted(ladder | {k for k in suite_ks if k <= n})


def _fail(cfg: Config, key: str, why: str) -> ConfigError:
    return ConfigError(f"{origin(cfg, key)}: {key}: {why}")


def check_settings(cfg: Config) -> None:
    """Checks that need no data: numbers in range, preset combinations, the replay file."""
    from pathlib import Path

    e = cfg.eval
    if not e.suites:
        raise _fail(cfg, "eval.suites", "no suites given")
    for key in ("n", "max_tokens", "max_problems", "max_model_len"):
        value = getattr(e, key)
        if value is not None and value < 1:
            raise _fail(cfg, f"eval.{key}", f"must be >= 1, got {value}")
    for key in ("batch_problems", "bootstrap"):
        if getattr(e, key) < 1:
            raise _fail(cfg, f"eval.{key}", f"must be >= 1, got {getattr(e, key)}")
    if any(k < 1 for k in e.k):
        raise _fail(cfg, "eval.k", f"every k must be >= 1, got {e.k}")
    if e.temperature is not None and e.temperature < 0:
        raise _fail(cfg, "eval.temperature", f"must be >= 0, got {e.temperature}")
    if e.top_p is not None and not 0 < e.top_p <= 1:
        raise _fail(cfg, "eval.top_p", f"must be in (0, 1], got {e.top_p}")
    if e.preset == "greedy" and e.n is not None and e.n > 1 and not e.temperature:
        raise _fail(cfg, "eval.n", f"greedy decoding gives {e.n} identical samples; use n=1 "
                    "or preset r1")
    if e.engine == "replay":
        if not e.replay or not Path(e.replay).expanduser().is_file():
            raise _fail(cfg, "eval.replay", f"the replay engine needs a JSONL file, got "
                        f"{e.replay!r}")
    elif e.replay:
        raise _fail(cfg, "eval.replay", f"set, but eval.engine is {e.engine!r}, not replay")


def plan_suites(cfg: Config, tokenizer: Any) -> list[SuitePlan]:
    """Load every suite and resolve its settings; raises ``ConfigError`` on the first problem."""

    e = cfg.eval
    check_settings(cfg)
    preset = PRESETS[e.preset]
    graded = e.graded_text if e.graded_text != "auto" else (
        "whole" if e.prompt_style in WHOLE_TEXT_STYLES else "after_think")
    plans = []
    for spec in dict.fromkeys(e.suites):
        try:
            suite = get_suite(spec)
            if suite.name == "livecodebench":
                suite = lcb_release(suite, e.lcb_release)
            problems = load_problems(suite, e.data_dir)
        except SuiteError as err:
            raise _fail(cfg, "eval.suites", str(err)) from None
        if suite.name == "livecodebench" and e.lcb_window:
            try:
                problems = lcb_filter(problems, e.lcb_window)
            except ValueError as err:
                raise _fail(cfg, "eval.lcb_window", str(err)) from None
        n = e.n or (1 if e.preset == "greedy" else preset["n"].get(suite.name, suite.n))
        ks = sorted(set(e.k)) if e.k else default_ks(suite.ks, n)
        if ks[-1] > n:
            raise _fail(cfg, "eval.k", f"pass@{ks[-1]} needs at least {ks[-1]} samples per "
                        f"problem; suite {suite.name} has n={n}")
        if e.prompt_style == "few_shot" and suite.few_shot is None:
            raise _fail(cfg, "eval.prompt_style", f"suite {suite.name} has no standard few-shot "
                        "prompt (GSM8K and MBPP do); use r1_zero or chat")
        total = len(problems)
        problems = problems[: e.max_problems] if e.max_problems else problems
        prompts = [build_prompt(suite, p, e.prompt_style, tokenizer) for p in problems]
        budget_from = ("eval.max_tokens" if e.max_tokens else
                       f"preset {e.preset}" if preset["max_tokens"] else "suite default")
        plans.append(SuitePlan(
            suite, problems, prompts, n, ks,
            temperature=preset["temperature"] if e.temperature is None else e.temperature,
            top_p=preset["top_p"] if e.top_p is None else e.top_p,
            max_tokens=e.max_tokens or preset["max_tokens"] or suite.max_tokens,
            stop=suite.few_shot_stop if e.prompt_style == "few_shot" else (),
            prompt_style=e.prompt_style, total_problems=total, graded_text=graded,
            boxed_only=e.boxed_only, budget_from=budget_from,
            lcb_window=e.lcb_window if suite.name == "livecodebench" else ""))
    return plans


def lcb_release(suite: Suite, release: str) -> Suite:
    """LiveCodeBench read at hub release ``release`` (a local file is what it is)."""
    return replace(suite, source=replace(suite.source, hub_config=release or None))


def build_prompt(suite: Suite, problem: EvalProblem, style: str, tokenizer: Any) -> str:
    """The text the engine continues for ``problem`` in prompt ``style``."""

    if style == "few_shot":
        return suite.few_shot(problem)
    if style in CHAT_STYLES:
        if tokenizer is None:
            raise ConfigError(f"eval.prompt_style: {style} needs a model with a tokenizer")
        try:
            return style_prompt(problem.question + suite.instruction, style, tokenizer)
        except ValueError as err:
            raise ConfigError(f"eval.prompt_style: {err}") from None
    return style_prompt(problem.question, style)


def context_length(cfg: Config, plans: list[SuitePlan], tokenizer: Any, limit: int | None) -> int:
    """The engine context: ``eval.max_model_len`` or the longest prompt + its budget; a
    ``ConfigError`` when that exceeds what the model supports (``limit``). A preset's budget
    that does not fit is lowered to what does (``SuitePlan.budget_capped`` says from what)."""

    room = cfg.eval.max_model_len or limit
    for plan in plans:
        if room is None or plan.budget_from == "eval.max_tokens" or not plan.prompts:
            continue
        longest = max(len(encode_prompt(tokenizer, p)) for p in plan.prompts)
        if longest + plan.max_tokens > room and room > longest:
            plan.budget_capped = f"{plan.max_tokens} ({plan.budget_from}), lowered to fit " \
                f"a {room}-token context"
            plan.max_tokens = room - longest
    need, where = 0, ""
    for plan in plans:
        for problem, prompt in zip(plan.problems, plan.prompts):
            size = len(encode_prompt(tokenizer, prompt)) + plan.max_tokens
            if size > need:
                need, where = size, f"{plan.suite.name} problem {problem.id}"
    if cfg.eval.max_model_len is not None:
        if need > cfg.eval.max_model_len:
            raise _fail(cfg, "eval.max_model_len", f"{cfg.eval.max_model_len} tokens, but "
                        f"{where} needs {need} (prompt + max_tokens)")
        return cfg.eval.max_model_len
    if limit is not None and need > limit:
        raise _fail(cfg, "eval.max_tokens", f"{where} needs {need} tokens (prompt + max_tokens) "
                    f"but the model's context is {limit}; lower eval.max_tokens")
    return need
