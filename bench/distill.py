"""``r1kit bench distill``: what each distillation method costs, in one run, on the tiny models.

Both methods run with the same teacher and student (``r1kit distill`` end to end, at bench
sizes, in a temporary folder), and the table shows per method:

- **teacher forward tokens per problem**: every token through the teacher's forward passes
  (SFT: prompt + completion of each of the ``rollout.n`` sampled traces, rejected ones
  included; on-policy: prompt + completion of each student sample scored), over the problems
  the method used;
- **student tokens/s**: tokens through the student's training forward and backward passes
  (prompt + completion) per second of the student's phase. For SFT that phase is the
  fine-tuning alone (the teacher's sampling is listed apart); for on-policy it is the whole
  loop: the student's sampling, the teacher's scoring and the update.

Teacher: ``--teacher`` (default: the GRPO demo's run folder ``runs/tiny_r1_zero`` if it holds a
checkpoint, else the random-init tiny Qwen3-MoE, with every trace kept so SFT has data).
Student: the random-init tiny dense Qwen3 (``tiny:qwen3_dense``). Prints a table and writes
JSON. Run: ``r1kit bench distill [--out FILE] [--quick]`` (also ``python -m bench.distill``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from bench.harness import machine, parser, table, write_result

REPO = Path(__file__).resolve().parent.parent


def _teacher(arg: str | None) -> tuple[str, list[str]]:
    """(teacher, extra overrides): a trained teacher verifies as the demo does; the random-init
    fallback keeps every trace (it solves nothing)."""
    from grpo.checkpoint import latest_checkpoint

    if arg:
        return arg, []
    if latest_checkpoint(REPO / "runs" / "tiny_r1_zero") is not None:
        return str(REPO / "runs" / "tiny_r1_zero"), []
    return "tiny:qwen3_moe", ["distill.threshold=-100"]


def measure(method: str, work: Path, teacher: str, extra: list[str], quick: bool) -> dict:
    from r1kit.config import load_config, validate_distill
    from r1kit.distillation import run_distill

    sizes = {"sft": ["data.num_prompts=16" if quick else "data.num_prompts=64",
                     "train.steps=4" if quick else "train.steps=20"],
             "on_policy": ["train.steps=2" if quick else "train.steps=6",
                           "train.prompts_per_step=4" if quick else "train.prompts_per_step=8",
                           "train.save_every=0", "train.tensorboard=false"]}[method]
    cfg = load_config(REPO / "recipes" / f"tiny_distill_{method}.yaml",
                      [f"distill.teacher={teacher}", "model.path=tiny:qwen3_dense",
                       f"log.out_dir={work / method}", "log.level=WARNING", *sizes, *extra])
    validate_distill(cfg)
    r = run_distill(cfg, show_progress=False)
    row = {"method": method, "problems": r["problems"], "teacher_tokens": r["teacher_tokens"],
           "teacher_tokens_per_problem": r["teacher_tokens"] / max(r["problems"], 1),
           "student_tokens": r["student_tokens"], "student_seconds": r["student_seconds"],
           "student_tokens_per_s": r["student_tokens"] / max(r["student_seconds"], 1e-9),
           "seconds": r["seconds"]}
    if method == "sft":
        meta = json.loads(Path(r["dataset"] + ".meta.json").read_text())
        row.update(teacher_sample_seconds=meta["sample_seconds"],
                   traces_sampled=r["traces_sampled"], traces_kept=r["traces_kept"])
    return row


def _table(result: dict) -> str:
    rows = [(r["method"], r["problems"], f"{r['teacher_tokens_per_problem']:.0f}",
             f"{r['student_tokens']:.0f}", f"{r['student_seconds']:.1f}",
             f"{r['student_tokens_per_s']:.0f}") for r in result["methods"]]
    sft = next(r for r in result["methods"] if r["method"] == "sft")
    return "\n".join([
        (f"r1kit bench distill  (teacher {result['teacher']}, student {result['student']}; "
         f"{result['machine']['cpus']} CPUs)"),
        table(("method", "problems", "teacher fwd tok/problem", "student tok", "student s",
               "student tok/s"), rows, widths=(10, 8, 24, 11, 9, 13)),
        (f"sft: teacher sampling {sft['teacher_sample_seconds']:.1f} s, "
         f"{int(sft['traces_kept'])} of {int(sft['traces_sampled'])} traces kept; "
         "on_policy student s include its sampling and the teacher's scoring")])


def main(argv: list[str] | None = None) -> int:
    ap = parser("r1kit bench distill", __doc__, out="bench_distill.json",
                quick="small sizes (for smoke tests)")
    ap.add_argument("--teacher", default=None,
                    help="teacher checkpoint or run folder (default: runs/tiny_r1_zero if "
                    "trained, else tiny:qwen3_moe)")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    teacher, extra = _teacher(args.teacher)
    with tempfile.TemporaryDirectory(prefix="r1kit-bench-distill-") as tmp:
        result = {"benchmark": "distill", "teacher": teacher, "student": "tiny:qwen3_dense",
                  "machine": machine(),
                  "methods": [measure(m, Path(tmp), teacher, extra, args.quick)
                              for m in ("sft", "on_policy")]}
    print(_table(result))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
