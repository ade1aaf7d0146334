"""``r1kit grade``: grade a JSON-lines file of predictions against gold answers.

Input lines are ``{"pred": ..., "gold": ...}``; output lines are
``{"correct": ..., "extracted": ..., "reason": ...}``, one per input line in
the same order, to ``--out`` or stdout. A summary (count, accuracy) goes to
stderr. A missing file or a bad line is a one-line error and exit code 2;
nothing is written to ``--out`` in that case.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from rewards.math.grade import grade_batch


class InputError(Exception):
    """A problem with the input file, reported as one line."""


def _read(path: Path) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    preds, golds = [], []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not all(
                isinstance(row.get(k), str) for k in ("pred", "gold")
            ):
                raise InputError(f'{path}:{number}: expected {{"pred": str, "gold": str}}')
            preds.append(row["pred"])
            golds.append(row["gold"])
    return preds, golds


def main(argv: list[str] | None = None) -> int:
    """Run the grader CLI; return the exit code (0 ok, 2 bad input)."""
    parser = argparse.ArgumentParser(prog="r1kit grade", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--jsonl", required=True, type=Path, help='input lines {"pred": ..., "gold": ...}'
    )
    parser.add_argument("--out", type=Path, help="output JSON lines (default: stdout)")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="time bound per pair, seconds")
    args = parser.parse_args(argv)
    try:
        preds, golds = _read(args.jsonl)
    except (InputError, OSError, UnicodeDecodeError) as exc:
        print(f"r1kit grade: error: {exc}", file=sys.stderr)
        return 2
    verdicts = grade_batch(preds, golds, timeout_s=args.timeout_s)
    lines = "".join(json.dumps(dataclasses.asdict(v)) + "\n" for v in verdicts)
    if args.out is None:
        sys.stdout.write(lines)
    else:
        args.out.write_text(lines, encoding="utf-8")
    correct = sum(v.correct for v in verdicts)
    accuracy = correct / len(verdicts) if verdicts else 0.0
    print(
        f"graded {len(verdicts)} pairs: {correct} correct, accuracy {accuracy:.4f}", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
