"""Every config ``Literal`` that selects an entry of a table names exactly that table's keys.

A name added to a table but not to the setting's ``Literal`` cannot be chosen from a recipe; a
name added to the ``Literal`` but not to the table passes the recipe check and fails in the
middle of a run. The tables are the runtime's; the ``Literal`` s are the config's.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Literal, get_args, get_origin, get_type_hints

import pytest

from grpo import losses, routing
from grpo.settings import AlgoConfig, TrainConfig
from r1kit import estimate, eval_plan
from r1kit.config import SECTIONS, EvalConfig, PlanConfig
from rollouts import factory, prompts
from rollouts.moe_routers import TOPK_ROUTERS
from rollouts.settings import RolloutConfig


def choices(cls: type, name: str) -> set[str]:
    hint = get_type_hints(cls)[name]
    assert get_origin(hint) is Literal, f"{cls.__name__}.{name} is not a Literal"
    return set(get_args(hint))


CASES = [
    (AlgoConfig, "advantage", set(losses.ADVANTAGES)),
    (AlgoConfig, "policy_loss", set(losses.POLICY_LOSSES)),
    (AlgoConfig, "aggregation", set(losses.AGGREGATIONS)),
    (AlgoConfig, "kl_estimator", set(losses.KL_ESTIMATORS)),
    (AlgoConfig, "mismatch", {"auto", *losses.MISMATCH_CORRECTIONS}),  # auto: chosen by engine
    (RolloutConfig, "engine", set(factory.ENGINES)),
    (RolloutConfig, "prompt_style", set(prompts.PROMPT_STYLES)),
    (EvalConfig, "engine", {*factory.ENGINES, "replay"}),  # replay: eval.replay.ReplayEngine
    (EvalConfig, "preset", set(eval_plan.PRESETS)),
    (EvalConfig, "prompt_style", {*prompts.PROMPT_STYLES, "few_shot"}),  # few_shot: the suite's
    (PlanConfig, "gpu", set(estimate.GPUS)),
]


@pytest.mark.parametrize(("cls", "name", "table"), CASES,
                         ids=[f"{c.__name__}.{n}" for c, n, _ in CASES])
def test_literal_names_exactly_the_table_it_selects_from(cls, name, table):
    assert choices(cls, name) == table


def test_scale_rewards_choices_are_the_ones_scale_knows():
    """``losses.scale`` branches on its argument rather than a table: every choice must be
    accepted, and an unknown one refused."""
    import torch

    r = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    for how in choices(AlgoConfig, "scale_rewards"):
        losses.scale(r - r.mean(), r, how, 1e-4)
    with pytest.raises(ValueError):
        losses.scale(r - r.mean(), r, "bogus", 1e-4)


def test_replay_knows_the_gate_weights_of_every_topk_router_the_recorder_finds():
    assert set(routing._GATE_WEIGHTS) == set(TOPK_ROUTERS)


def test_every_section_dataclass_documents_every_field():
    """The field docstring is the one place a setting is documented (``r1kit <cmd> --help``)."""
    from r1kit.config import field_docs

    for section, cls in SECTIONS.items():
        missing = [f.name for f in fields(cls) if f.name not in field_docs(cls)]
        assert not missing, f"{section}: fields without a docstring: {missing}"
    assert {AlgoConfig, TrainConfig, RolloutConfig} <= set(SECTIONS.values())
