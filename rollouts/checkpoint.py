"""Checks on a checkpoint folder, made before any engine spends time loading it."""

from __future__ import annotations

import json
from pathlib import Path


class CheckpointError(ValueError):
    """The folder is missing or holds something r1kit cannot sample from."""


def check_causal_lm(path: str | Path) -> dict:
    """Return the folder's ``config.json`` if it describes a causal LM; else raise.

    A causal LM is recognised by an ``architectures`` entry ending in ``ForCausalLM`` or by a
    ``model_type`` that transformers maps to a causal-LM class.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        raise CheckpointError(f"checkpoint folder {str(path)!r} does not exist")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{p} has no config.json: not an HF checkpoint folder")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    archs = cfg.get("architectures") or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return cfg
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not archs and cfg.get("model_type") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return cfg
    what = ", ".join(archs) or f"model_type {cfg.get('model_type')!r}"
    raise CheckpointError(f"{p} is not a causal language model ({what}); r1kit samples from "
                          "*ForCausalLM checkpoints only")
