"""The one way a benchmark writes its JSON: parent folders made, the path printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_result(path: str | Path, result: Any, **dumps: Any) -> Path:
    """Write ``result`` as JSON to ``path`` (``json.dumps`` options in ``dumps``, indent 1 by
    default), creating its folder, and print ``wrote PATH``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, **{"indent": 1, **dumps}), encoding="utf-8")
    print(f"wrote {out}")
    return out
