"""``r1kit grade``: grade a JSON-lines file of predictions against gold answers.

Input lines are ``{"pred": ..., "gold": ...}``; output lines are
``{"correct": ..., "extracted": ..., "reason": ...}``, one per input line in
the same order, to ``--out`` or stdout, each written as soon as it is graded. A summary
(count, accuracy) goes to stderr. A missing file, a bad line, an output path that cannot be
written or a time bound that is not a positive number is a one-line error and exit code 2,
found before any pair is graded; nothing is written to ``--out`` in that case.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from rewards.math.grade import grade_one


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
    parser = argparse.ArgumentParser(
        prog="r1kit grade", description="Grade a JSON-lines file of predictions against gold "
        'answers: input lines {"pred": ..., "gold": ...}, output lines {"correct": ..., '
        '"extracted": ..., "reason": ...} in the same order; a summary goes to stderr.')
    parser.add_argument(
        "--jsonl", required=True, type=Path, help='input lines {"pred": ..., "gold": ...}'
    )
    parser.add_argument("--out", type=Path, help="output JSON lines (default: stdout)")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="time bound per pair, seconds")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.timeout_s) and args.timeout_s > 0):
        print(f"r1kit grade: error: --timeout-s must be a positive number of seconds, got "
              f"{args.timeout_s}", file=sys.stderr)
        return 2
    try:
        preds, golds = _read(args.jsonl)
    except (InputError, OSError, UnicodeDecodeError) as exc:
        print(f"r1kit grade: error: {exc}", file=sys.stderr)
        return 2
    try:
        out = sys.stdout if args.out is None else args.out.open("w", encoding="utf-8")
    except OSError as exc:
        print(f"r1kit grade: error: cannot write --out {args.out}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    correct = 0
    try:
        for pred, gold in zip(preds, golds):
            verdict = grade_one(pred, gold, timeout_s=args.timeout_s)
            correct += verdict.correct
            out.write(json.dumps(dataclasses.asdict(verdict)) + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    accuracy = correct / len(preds) if preds else 0.0
    print(f"graded {len(preds)} pairs: {correct} correct, accuracy {accuracy:.4f}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
