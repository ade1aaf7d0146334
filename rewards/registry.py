"""Reward registry: names to functions, dotted paths for user code, weighted combination.

A reward is a plain function ``fn(completions: list[str], **row) -> list[float]``: ``row``
holds the dataset columns for those completions, each a list aligned with ``completions``
(TRL's convention). Convention for the rewards shipped here: parameters that are dataset
columns (``answer``, ``tests``, ...) are positional-or-keyword; settings (lengths, bounds)
are keyword-only, so a ``RewardSpec`` can set them from a recipe and ``build`` can check
them before training starts.

Guarantees: ``resolve`` returns a callable or raises ``RewardLookupError`` saying what
failed; ``build`` rejects unknown settings, missing required settings, non-finite weights
and duplicate labels; ``combine`` checks every reward returns one finite float per
completion. It does not guard against rewards that raise or hang: that is what
``rewards.scorer.Scorer`` is for; ``combine`` runs in-process, in order.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rewards.code import code_reward, humaneval_reward
from rewards.format import format_reward, tag_format_reward
from rewards.length import cosine_reward, soft_overlong_reward
from rewards.math import grade_batch
from rewards.math import warm_up as math_warm_up

RewardFn = Callable[..., list[float]]


def accuracy_reward(
    completions: list[str], answer: list[str], *, timeout_s: float = 5.0, **row: list
) -> list[float]:
    """1.0 where the completion's marked final answer equals the gold ``answer``
    (``rewards.math``). Marked only: the grader's last-number fallback is off here, so an
    unmarked completion whose last number happens to equal the gold (an intermediate result
    written last) earns nothing; a policy must state its answer. (``r1kit eval`` keeps the
    fallback for numeric golds, as GSM8K-style evaluation does.)

    >>> accuracy_reward(["so \\\\boxed{\\\\frac{1}{2}}", "so \\\\boxed{3}"], answer=["0.5", "4"])
    [1.0, 0.0]
    """
    verdicts = grade_batch(list(completions), list(answer), timeout_s=timeout_s,
                           last_number=False)
    return [1.0 if v.correct else 0.0 for v in verdicts]


def warm_up() -> None:
    """Pay the one-time costs of the shipped rewards now: lazy imports and the math grader's
    helper process (``rewards.scorer`` workers call this when they start)."""
    math_warm_up()  # starts the helper and waits until it is ready
    accuracy_reward(["\\boxed{x^2+2x+1}", "\\boxed{\\frac{1}{2}}"], answer=["(x+1)^2", "0.5"])
    format_reward(["r</think>\\boxed{1}"])


REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "tag_format": tag_format_reward,
    "soft_overlong": soft_overlong_reward,
    "cosine": cosine_reward,
    "code": code_reward,
    "humaneval": humaneval_reward,
}


class RewardLookupError(ValueError):
    """A reward name or dotted path that does not lead to a callable."""


class RewardConfigError(ValueError):
    """A reward spec whose weight, label or settings do not fit its function."""


def _import_dotted(path: str) -> Any:
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
    else:
        module_name, _, attr_path = path.rpartition(".")
    if not module_name or not attr_path:
        raise RewardLookupError(f"bad reward path {path!r}: expected 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise RewardLookupError(
            f"reward {path!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})"
        ) from exc
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError as exc:
            raise RewardLookupError(
                f"reward {path!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from exc
    return obj


def resolve(name_or_path: str) -> RewardFn:
    """The reward function for a registered name or a dotted import path.

    >>> resolve("format").__name__
    'format_reward'
    >>> resolve("rewards.format:tag_format_reward").__name__
    'tag_format_reward'
    >>> resolve("acuracy")
    Traceback (most recent call last):
    ...
    rewards.registry.RewardLookupError: unknown reward 'acuracy'; known: accuracy, code, \
cosine, format, humaneval, soft_overlong, tag_format; or give a dotted path 'package.module:function'
    """
    if name_or_path in REWARDS:
        return REWARDS[name_or_path]
    if "." not in name_or_path and ":" not in name_or_path:
        raise RewardLookupError(
            f"unknown reward {name_or_path!r}; known: {', '.join(sorted(REWARDS))}; "
            "or give a dotted path 'package.module:function'"
        )
    obj = _import_dotted(name_or_path)
    if not callable(obj):
        raise RewardLookupError(f"reward {name_or_path!r} is a {type(obj).__name__}, not callable")
    return obj


@dataclass(frozen=True)
class RewardSpec:
    """One reward as a recipe names it."""

    name: str
    """Registered name (``accuracy``, ``cosine``, ...) or dotted path ``pkg.mod:fn``."""
    weight: float = 1.0
    """Multiplier of this reward in the total."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword-only settings of the function, e.g. ``{"max_len": 4096}`` for ``cosine``."""
    label: str | None = None
    """Name its scores are reported under; defaults to ``name``. Must be unique."""


def needed_columns(spec: RewardSpec) -> list[str]:
    """The dataset columns ``spec``'s function needs: its parameters after ``completions`` that
    have no default and are not set by the spec.

    >>> needed_columns(RewardSpec("code"))
    ['tests']
    >>> needed_columns(RewardSpec("format"))
    []
    """
    params = inspect.signature(resolve(spec.name)).parameters
    return [n for n, p in params.items() if n != "completions" and n not in spec.kwargs
            and p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


@dataclass(frozen=True)
class WeightedReward:
    """A resolved reward: the function with its settings bound, and its weight."""

    label: str
    fn: RewardFn
    weight: float


def _check_kwargs(spec: RewardSpec, fn: RewardFn) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return  # builtins and some C callables have no signature to check against
    settable = {
        n
        for n, p in params.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "completions"
    }
    unknown = sorted(set(spec.kwargs) - settable)
    if unknown:
        raise RewardConfigError(
            f"reward {spec.name!r} has no setting {', '.join(unknown)}; "
            f"its parameters: {', '.join(sorted(settable)) or '(none)'}"
        )
    missing = sorted(
        n
        for n, p in params.items()
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty and n not in spec.kwargs
    )
    if missing:
        raise RewardConfigError(f"reward {spec.name!r} needs setting(s) {', '.join(missing)}")


def build(specs: Sequence[RewardSpec]) -> list[WeightedReward]:
    """Resolve specs into weighted rewards, checking settings against each signature.

    >>> [(r.label, r.weight) for r in build([RewardSpec("accuracy"), RewardSpec("format", 0.5)])]
    [('accuracy', 1.0), ('format', 0.5)]
    >>> build([RewardSpec("soft_overlong", kwargs={"max_len": 100})])
    Traceback (most recent call last):
    ...
    rewards.registry.RewardConfigError: reward 'soft_overlong' needs setting(s) cache_len
    """
    out: list[WeightedReward] = []
    for spec in specs:
        label = spec.label or spec.name
        if any(r.label == label for r in out):
            raise RewardConfigError(f"two rewards labelled {label!r}; give one a distinct label")
        if not math.isfinite(spec.weight):
            raise RewardConfigError(f"reward {label!r} has non-finite weight {spec.weight}")
        fn = resolve(spec.name)
        _check_kwargs(spec, fn)
        bound = functools.partial(fn, **spec.kwargs) if spec.kwargs else fn
        out.append(WeightedReward(label=label, fn=bound, weight=float(spec.weight)))
    return out


def parse_specs(items: Sequence[str | Mapping[str, Any]]) -> list[RewardSpec]:
    """Specs from a recipe's list: a bare name, or a mapping of ``RewardSpec`` fields.

    >>> parse_specs(["format", {"name": "cosine", "weight": 2, "kwargs": {"max_len": 512}}])[1]
    RewardSpec(name='cosine', weight=2.0, kwargs={'max_len': 512}, label=None)
    """
    fields = {"name", "weight", "kwargs", "label"}
    specs = []
    for item in items:
        if isinstance(item, str):
            specs.append(RewardSpec(item))
            continue
        unknown = sorted(set(item) - fields)
        if unknown or "name" not in item:
            raise RewardConfigError(
                f"reward entry {dict(item)!r}: unknown key(s) {unknown} or no 'name'; "
                f"allowed keys: {sorted(fields)}"
            )
        specs.append(
            RewardSpec(
                name=str(item["name"]),
                weight=float(item.get("weight", 1.0)),
                kwargs=dict(item.get("kwargs") or {}),
                label=item.get("label"),
            )
        )
    return specs


def check_scores(label: str, scores: Any, n: int) -> list[float]:
    """``scores`` as ``n`` finite floats, or ``ValueError`` naming the reward.

    >>> check_scores("r", [1, 0.5], 2)
    [1.0, 0.5]
    """
    values = [float(s) for s in scores]
    if len(values) != n:
        raise ValueError(f"reward {label!r} returned {len(values)} scores for {n} completions")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"reward {label!r} returned a non-finite score: {values}")
    return values


@dataclass(frozen=True)
class CombinedScores:
    """Weighted total and the unweighted score of each reward, per completion."""

    total: list[float]
    per_reward: dict[str, list[float]]


def combine(
    rewards: Sequence[WeightedReward], completions: list[str], **row: list
) -> CombinedScores:
    """Run each reward in-process and sum with weights.

    >>> r = combine(build([RewardSpec("format"), RewardSpec("tag_format", 0.5)]),
    ...             ["ok</think><answer>1</answer>", "no"])
    >>> r.total, r.per_reward["tag_format"]
    ([1.5, 0.0], [1.0, 0.0])
    """
    n = len(completions)
    per_reward = {r.label: check_scores(r.label, r.fn(completions, **row), n) for r in rewards}
    total = [sum(r.weight * per_reward[r.label][i] for r in rewards) for i in range(n)]
    return CombinedScores(total=total, per_reward=per_reward)
