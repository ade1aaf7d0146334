"""``r1kit bench eval``: how fast an evaluation runs, in one run.

1. Grading throughput: a whole MATH-500 x 4 evaluation (load, prompts, grading, bootstrap
   intervals, outputs) with replayed completions: per problem the reference solution, the gold
   answer in R1 format, another problem's solution (mostly wrong), and text with no answer.
2. Sampling throughput: a GSM8K evaluation of the embedded tiny policy with the HF and the vLLM
   engine (same problems, n, budget), each engine warmed up first; tokens/s is new tokens over
   the engines' own generate time, problems/s the whole evaluation.

Prints a table and writes JSON. Run: ``r1kit bench eval [--data-dir DIR] [--out FILE]
[--quick]`` (also ``python -m bench.eval``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from bench.harness import machine, parser, table, timed, write_result

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _config(out: Path, overrides: list[str]):
    from r1kit.config import load_config

    return load_config(None, [f"log.out_dir={out}", "log.level=WARNING", *overrides])


def grading(data_dir: Path, work: Path, limit: int | None) -> dict:
    from eval.suites import SUITES, load_problems
    from r1kit.eval_plan import build_prompt
    from r1kit.evaluate import run_eval

    suite = SUITES["math500"]
    problems = load_problems(suite, str(data_dir))[:limit]
    replay = work / "math500_x4.jsonl"
    with open(replay, "w") as f:
        for i, p in enumerate(problems):
            other = problems[(i + 1) % len(problems)].reference
            comps = [p.reference, f"I worked it out.</think> <answer>{p.gold}</answer>", other,
                     "I am not sure how to finish this."]
            f.write(json.dumps({"prompt": build_prompt(suite, p, "r1_zero", None),
                                "completions": comps}) + "\n")
    cfg = _config(work / "grading", ["model.path=", "eval.engine=replay",
                                     f"eval.replay={replay}", "eval.suites=[math500]",
                                     "eval.n=4", f"eval.data_dir={data_dir}",
                                     "eval.prompt_style=r1_zero",
                                     f"eval.max_problems={len(problems)}"])
    summary, seconds = timed(run_eval, cfg, show_progress=False)
    return {"problems": len(problems), "completions": 4 * len(problems),
            "seconds": round(seconds, 3), "problems_per_s": round(len(problems) / seconds, 2),
            "completions_per_s": round(4 * len(problems) / seconds, 1),
            "avg@4": summary["suites"]["math500"]["metrics"]["avg@4"]["value"]}


def sampling(data_dir: Path, work: Path, problems: int, n: int, max_tokens: int) -> list[dict]:
    from r1kit.evaluate import _make_engine, prepare, run_eval
    from rollouts.types import Sampling

    rows = []
    for engine_name in ("hf", "vllm"):
        cfg = _config(work / engine_name, [
            "model.path=tiny:qwen3_moe", f"eval.engine={engine_name}", "eval.suites=[gsm8k]",
            f"eval.n={n}", f"eval.max_tokens={max_tokens}", f"eval.data_dir={data_dir}",
            f"eval.max_problems={problems}", f"eval.batch_problems={problems}"])
        model_path, tokenizer, plans, context = prepare(cfg)
        (work / engine_name).mkdir(parents=True, exist_ok=True)
        engine = _make_engine(cfg, model_path, tokenizer, context, work / engine_name)
        try:
            engine.generate(plans[0].prompts[:2], n, Sampling(max_tokens=max_tokens, seed=1))
            summary, seconds = timed(run_eval, cfg, show_progress=False, engine=engine)
        finally:
            engine.close()
        gen = summary["generation"]
        rows.append({"engine": engine_name, "problems": problems, "n": n,
                     "max_tokens": max_tokens, "new_tokens": gen["new_tokens"],
                     "generate_seconds": round(gen["seconds"], 3),
                     "tokens_per_s": round(gen["tokens_per_s"], 1),
                     "eval_seconds": round(seconds, 3),
                     "problems_per_s": round(problems / seconds, 2)})
        print(f"  {engine_name:5s} {rows[-1]['tokens_per_s']:9.1f} tok/s", file=sys.stderr)
    return rows


def _table(result: dict) -> str:
    g = result["grading"]
    rows = [(r["engine"], r["problems"], r["n"], r["max_tokens"], f"{r['tokens_per_s']:.1f}",
             f"{r['problems_per_s']:.2f}") for r in result["sampling"]]
    return "\n".join([
        (f"grading: MATH-500 x 4 replayed ({g['problems']} problems, {g['completions']} "
         f"completions): {g['problems_per_s']:.1f} problems/s, "
         f"{g['completions_per_s']:.0f} completions/s ({g['seconds']:.1f} s, "
         f"avg@4 {100 * g['avg@4']:.1f}%)"),
        table(("engine", "problems", "n", "max_tok", "tok/s", "problems/s"), rows,
              widths=(7, 8, 3, 7, 9, 10), align=">" * 6)])


def main(argv: list[str] | None = None) -> int:
    ap = parser("r1kit bench eval", __doc__, out="bench_eval.json",
                quick="small sizes (for smoke tests)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                    help=f"evaluation data laid out like shared/data (default {DEFAULT_DATA})")
    args = ap.parse_args(argv)
    if not (args.data_dir / "math500" / "test.jsonl").is_file():
        print(f"r1kit bench eval: no MATH-500 under {args.data_dir}; pass --data-dir",
              file=sys.stderr)
        return 2
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    with tempfile.TemporaryDirectory(prefix="r1kit-bench-eval-") as tmp:
        work = Path(tmp)
        result = {
            "benchmark": "eval",
            "machine": machine(),
            "grading": grading(args.data_dir, work, 20 if args.quick else None),
            "sampling": sampling(args.data_dir, work, 4 if args.quick else 32,
                                 2 if args.quick else 4, 16 if args.quick else 64),
        }
    print(_table(result))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
