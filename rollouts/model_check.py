"""Checks on a checkpoint folder, made before any engine spends time loading it."""

from __future__ import annotations

import json
from pathlib import Path


class CheckpointError(ValueError):
    """The folder holds something r1kit cannot sample from."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The folder, or its ``config.json``, does not exist."""


def check_causal_lm(path: str | Path) -> dict:
    """Return the folder's ``config.json`` if it describes a causal LM; else raise.

    A causal LM is a config whose ``architectures`` names a class transformers registers for
    causal language modelling (or any ``*ForCausalLM``): what both transformers and vLLM load.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        raise MissingCheckpointError(f"checkpoint folder {str(path)!r} does not exist")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise MissingCheckpointError(f"{p} has no config.json: not an HF checkpoint folder")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    archs = cfg.get("architectures") or []
    if not any(a in causal or a.endswith("ForCausalLM") for a in archs):
        raise CheckpointError(
            f"{p} is not a causal language model checkpoint: config.json has "
            f"model_type={cfg.get('model_type')!r}, architectures={archs}"
        )
    return cfg
