"""An engine that returns given completions instead of sampling: for tests, and for grading
completions made elsewhere (another harness, an API model, an earlier r1kit run).

``ReplayEngine`` satisfies ``rollouts.engine.Engine``. It maps each prompt text to its list of
completions and returns the first ``n``; a prompt it does not know, or one with fewer than ``n``
completions, is an error naming the prompt, raised before anything is returned. Token counts come
from a tokenizer when one is given, else ``token_ids`` are empty and lengths are counted in
characters by the caller.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rollouts.engine import check_generate_args
from rollouts.types import Completion, GenerationStats, Group, Sampling


class ReplayError(ValueError):
    """The replay source has no (or too few) completions for a prompt."""


class ReplayEngine:
    """Return stored completions for each prompt, in stored order."""

    def __init__(self, completions: Mapping[str, Sequence[str]], tokenizer: Any = None,
                 finish_reasons: Mapping[str, Sequence[str]] | None = None):
        self.completions = {p: list(cs) for p, cs in completions.items()}
        # Per prompt, each completion's stored finish reason ("stop" where none is stored).
        self.finish_reasons = {p: list(rs) for p, rs in (finish_reasons or {}).items()}
        self.tokenizer = tokenizer
        self.last_stats: GenerationStats | None = None

    @classmethod
    def from_jsonl(cls, path: str | Path, tokenizer: Any = None) -> ReplayEngine:
        """Rows ``{"prompt": str, "completions": [str | {"text": str, "finish_reason"?}, ...]}``:
        what ``r1kit eval`` writes per problem, so an earlier run can be re-graded (its
        truncated completions stay truncated)."""
        table: dict[str, list[str]] = {}
        reasons: dict[str, list[str]] = {}
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    texts = [c if isinstance(c, str) else c["text"] for c in row["completions"]]
                    why = [c.get("finish_reason") or "stop" if isinstance(c, dict) else "stop"
                           for c in row["completions"]]
                    table.setdefault(row["prompt"], []).extend(texts)
                    reasons.setdefault(row["prompt"], []).extend(why)
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ReplayError(f"{path}:{lineno}: expected {{prompt, completions}} "
                                      f"({type(e).__name__}: {e})") from None
        return cls(table, tokenizer, reasons)

    def check(self, prompts: Sequence[str], n: int) -> None:
        """Raise ``ReplayError`` unless every prompt has at least ``n`` completions."""
        for p in prompts:
            have = len(self.completions.get(p, ()))
            if have < n:
                short = p if len(p) <= 80 else p[:40] + " ... " + p[-35:]
                raise ReplayError(f"replay has {have} completion(s) for prompt {short!r}, "
                                  f"{n} needed")

    def generate(self, prompts: Sequence[str], n: int, sampling: Sampling) -> list[Group]:
        check_generate_args(prompts, n)
        self.check(prompts, n)
        start = time.perf_counter()
        groups = []
        for p in prompts:
            prompt_ids = self._ids(p)
            why = self.finish_reasons.get(p, [])
            comps = [Completion(t, self._ids(t), [], why[i] if i < len(why) else "stop")
                     for i, t in enumerate(self.completions[p][:n])]
            groups.append(Group(p, prompt_ids, comps))
        new = sum(len(c.token_ids) for g in groups for c in g.completions)
        self.last_stats = GenerationStats(len(prompts), len(prompts) * n, new,
                                          time.perf_counter() - start, 0)
        return groups

    def _ids(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def update_weights(self, model: Any) -> None:
        raise ReplayError("a replay engine has no weights to update")

    def sleep(self) -> None:
        """Nothing to give back."""

    def wake(self) -> None:
        """Nothing to restore."""

    def close(self) -> None:
        self.completions = {}
