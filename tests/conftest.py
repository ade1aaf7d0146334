"""Shared test set-up: a per-run cache for the tiny policies and small vLLM CPU memory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# vLLM's CPU backend reserves this many GiB of KV cache per engine; tests need little.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """One cache of tiny checkpoints for the whole run (each family is built once)."""
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="session")
def tiny_qwen(tiny_cache) -> Path:
    from r1kit.tiny import build_tiny

    return build_tiny("qwen3_moe", cache_dir=tiny_cache)


@pytest.fixture(scope="session")
def tiny_deepseek(tiny_cache) -> Path:
    from r1kit.tiny import build_tiny

    return build_tiny("deepseek_v3", cache_dir=tiny_cache)
