"""The ``r1kit`` console script: one entry point, a subcommand per job.

Recipe-driven subcommands take ``[RECIPE.yaml] [section.key=value ...]``; their ``--help`` lists
every setting from the config dataclasses' field docs. Tool subcommands (``grade``, ``sandbox``,
``bench``) hand their arguments to the module that owns them, which also runs as ``python -m``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from r1kit.config import ConfigError, Interrupted, config_help, folder_problem, load_config


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line; the usage is one ``--help`` away."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help for usage)\n")


class _ProgressSafeHandler(logging.StreamHandler):
    """Records on stderr through ``tqdm.write``: a progress bar on screen is cleared first and
    drawn again below, so no record lands on its line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001  (logging's own rule: a failing handler reports)
            self.handleError(record)


def _setup_logging(level: str = "INFO") -> None:
    handler = _ProgressSafeHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def cmd_tiny(argv: list[str]) -> int:
    from r1kit.tiny import FAMILIES, build_tiny, default_cache_dir

    ap = _Parser(
        prog="r1kit tiny",
        description="Build (or reuse from the cache) the embedded tiny policy: a random-init "
        "Qwen3-MoE, DeepSeek-V3, dense Qwen3 (tied embeddings; also as qwen3_dense, the "
        "distillation student) or Qwen2-style dense (tied) with a locally trained tokenizer. "
        "Prints the checkpoint path.")
    ap.add_argument("--family", choices=[*FAMILIES, "all"], default="qwen3_moe")
    ap.add_argument("--seed", type=int, default=0, help="random-init seed (default 0)")
    ap.add_argument("--cache-dir", default=None,
                    help=f"where checkpoints are kept (default {default_cache_dir()})")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--base", action="store_true",
                    help="the supervised base R1-Zero RL starts from (r1kit.base): the policy "
                    "pre-trained on worked arithmetic, deliberately imperfect; a few minutes")
    args = ap.parse_args(argv)
    why = folder_problem(args.cache_dir or default_cache_dir())
    if why:
        print(f"r1kit tiny: --cache-dir: {why}", file=sys.stderr)
        return 2
    for family in FAMILIES if args.family == "all" else [args.family]:
        if args.base:
            from r1kit.base import build_base

            print(build_base(family, seed=args.seed, cache_dir=args.cache_dir, force=args.force,
                             progress=True))
        else:
            print(build_tiny(family, seed=args.seed, cache_dir=args.cache_dir, force=args.force))
    return 0


def _recipe_and_overrides(args: argparse.Namespace, default: str | None = None):
    """(recipe, overrides) from ``RECIPE [section.key=value ...]``; a first argument holding
    ``=`` is an override, and the recipe is then ``default``."""
    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe:
        recipe, overrides = default, [recipe, *overrides]
    return recipe, overrides


def _recipe_parser(prog: str, description: str, sections: list[str]) -> argparse.ArgumentParser:
    return _Parser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (section.key=value):\n" + config_help(sections))


def cmd_generate(argv: list[str]) -> int:
    ap = _recipe_parser(
        "r1kit generate",
        "Sample groups of completions for a recipe's problems, score them with its rewards, and "
        "write completions.jsonl (appended as it goes) and metrics.json to log.out_dir; "
        "re-running with the same out_dir and settings resumes.",
        ["model", "data", "rollout", "reward", "log"])
    ap.add_argument("recipe", nargs="?", help="recipe YAML (defaults apply without one)")
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    recipe, overrides = _recipe_and_overrides(args)
    cfg = load_config(recipe, overrides)
    _setup_logging(cfg.log.level)
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM's records go to engine.log
    from r1kit.generate import PromptTooLong, run_generate
    from rewards.scorer import RewardFailure

    start = time.perf_counter()
    try:
        metrics = run_generate(cfg, show_progress=not args.no_progress)
    except PromptTooLong as e:
        print(f"r1kit: {e}", file=sys.stderr)
        return 2
    except RewardFailure as e:
        print(f"r1kit: {e}", file=sys.stderr)
        return 1
    print(json.dumps(metrics, indent=1))
    print(f"r1kit: wrote {cfg.log.out_dir}/completions.jsonl and metrics.json in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def cmd_train(argv: list[str]) -> int:
    ap = _recipe_parser(
        "r1kit train",
        "GRPO training from a recipe: rollout -> score -> advantages -> update -> sync, with "
        "checkpoints in log.out_dir/checkpoints (train.resume=auto continues a run). Writes "
        "metrics.jsonl, TensorBoard events (tb/), samples.md, train.log and engine.log there.",
        ["model", "data", "rollout", "reward", "algo", "train", "log"])
    ap.add_argument("--dry-run", action="store_true",
                    help="2 steps on CPU of the recipe's architecture at toy size, random init "
                    "(r1kit/dryrun.py)")
    ap.add_argument("--keep", action="store_true",
                    help="with --dry-run and no log.out_dir: keep its run folder in the temp "
                    "directory (removed after a dry run that passes otherwise)")
    parsed = _job_args(ap, argv)
    if parsed is None:
        return 2
    args, recipe, overrides = parsed
    if args.dry_run:
        from r1kit.dryrun import dry_run

        _setup_logging("WARNING")
        return dry_run(recipe, overrides, show_progress=not args.no_progress, keep=args.keep)
    from r1kit.config import validate_training

    cfg = load_config(recipe, overrides)
    validate_training(cfg)
    _setup_logging(cfg.log.level)
    from r1kit.train import no_update_problem, run_train

    return _run_job(lambda: run_train(cfg, show_progress=not args.no_progress), "training",
                    verdict=no_update_problem)


def _job_args(ap: argparse.ArgumentParser, argv: list[str]):
    """``RECIPE [section.key=value ...] [--no-progress]`` of a training-like command: (args,
    recipe, overrides), or None after printing the usage when nothing was given (training is
    never started by accident)."""
    ap.add_argument("recipe", nargs="?", help="recipe YAML (defaults apply without one)")
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    if not argv:
        ap.print_usage(sys.stderr)
        print(f"{ap.prog}: give a recipe and/or section.key=value settings", file=sys.stderr)
        return None
    args = ap.parse_args(argv)
    return (args, *_recipe_and_overrides(args))


def _run_job(job, what: str, user_errors: tuple[type[Exception], ...] = (),
             verdict: Callable[[dict], str | None] | None = None) -> int:
    """Run a training-like ``job`` and print its result as JSON (exit 0); a setting or input
    problem prints one line (exit 2), a run that stopped on NaN or a failing reward one line
    naming ``what`` (exit 1), and so does a finished run that ``verdict`` finds wanting (its
    result is printed first)."""
    from grpo.update import NonFiniteError
    from r1kit.generate import PromptTooLong
    from r1kit.train import ResumeError
    from rewards.scorer import RewardFailure

    try:
        result = job()
    except (*user_errors, ResumeError, PromptTooLong) as e:
        print(f"r1kit: {e}", file=sys.stderr)
        return 2
    except (NonFiniteError, RewardFailure) as e:
        print(f"r1kit: {what} stopped: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    problem = verdict(result) if verdict else None
    if problem:
        print(f"r1kit: {problem}", file=sys.stderr)
        return 1
    return 0


def cmd_distill(argv: list[str]) -> int:
    ap = _recipe_parser(
        "r1kit distill",
        "Distil a teacher (distill.teacher) into the student (model.path): rejection-sampled SFT "
        "on verified teacher traces (distill.method=sft; writes traces.jsonl) or on-policy "
        "distillation with the teacher's per-token reverse KL (distill.method=on_policy). "
        "Checkpoints, metrics.jsonl, tb/ and distill.json (teacher forward tokens) go to "
        "log.out_dir.",
        ["model", "data", "rollout", "reward", "algo", "train", "log", "distill"])
    parsed = _job_args(ap, argv)
    if parsed is None:
        return 2
    args, recipe, overrides = parsed
    from r1kit.config import validate_distill

    cfg = load_config(recipe, overrides)
    validate_distill(cfg)
    _setup_logging(cfg.log.level)
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    from distill.on_policy import VocabularyMismatch
    from r1kit.distillation import run_distill

    return _run_job(lambda: run_distill(cfg, show_progress=not args.no_progress),
                    "distillation", (VocabularyMismatch,))


def cmd_distill_demo(argv: list[str]) -> int:
    ap = _Parser(
        prog="r1kit distill-demo",
        description="The RL-trained tiny MoE of `r1kit demo` (runs/tiny_r1_zero; trained first "
        "if absent) teaches a tiny dense Qwen3 by rejection-sampled SFT, by on-policy "
        "distillation, and by both in turn (SFT, then on-policy); held-out accuracy of teacher "
        "and student before/after each method, the teacher forward tokens each spent, and the "
        "paired comparison of SFT + on-policy against SFT alone, in report.md and report.json.")
    ap.add_argument("--out-dir", default="runs/tiny_distill", help="run folder")
    ap.add_argument("--teacher-run", default="runs/tiny_r1_zero",
                    help="the GRPO demo's run folder (trained with recipes/tiny_r1_zero.yaml "
                    "if it holds no checkpoint)")
    ap.add_argument("--heldout", type=int, default=200, help="held-out problems (default 200)")
    ap.add_argument("-n", type=int, default=2, help="samples per held-out problem (default 2)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if _bad_counts(ap.prog, heldout=args.heldout, n=args.n):
        return 2
    for flag, folder in (("--out-dir", args.out_dir), ("--teacher-run", args.teacher_run)):
        why = folder_problem(folder)
        if why:
            print(f"{ap.prog}: {flag}: {why}", file=sys.stderr)
            return 2
    _setup_logging("WARNING")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from r1kit.distill_demo import run_distill_demo

    result = run_distill_demo(args.out_dir, args.teacher_run, heldout=args.heldout, n=args.n,
                              progress=not args.no_progress)
    print(result["text"])
    print(f"r1kit distill-demo: everything is in {result['out_dir']} (report.md, report.json)",
          file=sys.stderr)
    return 0


_EVAL_FLAGS = {"model": "model.path", "suite": "eval.suites", "n": "eval.n", "k": "eval.k",
               "preset": "eval.preset", "engine": "eval.engine", "replay": "eval.replay",
               "data_dir": "eval.data_dir", "out_dir": "log.out_dir",
               "max_problems": "eval.max_problems", "prompt_style": "eval.prompt_style",
               "lcb_window": "eval.lcb_window", "lcb_release": "eval.lcb_release",
               "graded_text": "eval.graded_text", "boxed_only": "eval.boxed_only"}


def cmd_eval(argv: list[str]) -> int:
    if argv[:1] == ["compare"]:
        return cmd_eval_compare(argv[1:])
    ap = _recipe_parser(
        "r1kit eval",
        "Score a model on math and coding suites with the training graders: avg@n, pass@k, "
        "maj@n, format compliance and length, each with a 95% bootstrap interval. Writes "
        "samples/<suite>.jsonl, summary.json and report.md to log.out_dir; re-running with the "
        "same out_dir resumes. `r1kit eval compare RUN_A RUN_B` compares two runs.\n\n"
        "example: r1kit eval --model PATH --suite math500,humaneval -n 8 --preset r1",
        ["model", "eval", "log"])
    ap.add_argument("recipe", nargs="?", help="recipe YAML with an eval section (optional)")
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    ap.add_argument("--model", help="checkpoint folder or tiny:<family> (model.path)")
    ap.add_argument("--suite", help="comma-separated suites (eval.suites)")
    ap.add_argument("-n", type=int, help="samples per problem (eval.n)")
    ap.add_argument("-k", help="comma-separated pass@k values (eval.k)")
    ap.add_argument("--preset", choices=["r1", "greedy"], help="sampling preset (eval.preset)")
    ap.add_argument("--prompt-style", choices=["r1_zero", "r1kit_zero", "qwen_math", "chat",
                                               "chat_think", "few_shot"],
                    help="eval.prompt_style")
    ap.add_argument("--graded-text", choices=["auto", "after_think", "whole"],
                    help="what the grader reads (eval.graded_text)")
    ap.add_argument("--boxed-only", action="store_true", default=None,
                    help="math: grade only the last \\boxed{} (eval.boxed_only)")
    ap.add_argument("--lcb-window", help="LiveCodeBench contest dates START:END (eval.lcb_window)")
    ap.add_argument("--lcb-release", help="LiveCodeBench hub release, e.g. release_v5 "
                    "(eval.lcb_release)")
    ap.add_argument("--engine", choices=["hf", "vllm", "vllm_server", "replay"],
                    help="eval.engine")
    ap.add_argument("--replay", help="grade completions from this JSONL (implies --engine replay)")
    ap.add_argument("--data-dir", help="local copies laid out like shared/data (eval.data_dir)")
    ap.add_argument("--out-dir", help="output folder (log.out_dir)")
    ap.add_argument("--max-problems", type=int, help="first N problems per suite")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    recipe, overrides = _recipe_and_overrides(args)
    flags = []
    if args.replay and not args.engine:
        flags.append("eval.engine=replay")
        if not args.model:
            flags.append("model.path=")
    for name, address in _EVAL_FLAGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if name in ("suite", "k"):
            items = [v.strip() for v in str(value).split(",") if v.strip()]
            value = json.dumps([int(v) if name == "k" and v.isdigit() else v for v in items])
        flags.append(f"{address}={value}")
    cfg = load_config(recipe, flags + overrides)
    _setup_logging(cfg.log.level)
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    from eval.replay import ReplayError
    from r1kit.evaluate import run_eval

    start = time.perf_counter()
    try:
        summary = run_eval(cfg, show_progress=not args.no_progress)
    except ReplayError as e:
        print(f"r1kit: {e}", file=sys.stderr)
        return 2
    from eval.report import report_markdown

    print(report_markdown(summary))
    print(f"r1kit: wrote {cfg.log.out_dir}/report.md, summary.json and samples/ in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def cmd_eval_compare(argv: list[str]) -> int:
    from pathlib import Path

    ap = _Parser(
        prog="r1kit eval compare",
        description="Paired comparison of two eval runs over the problems both scored: the "
        "difference B - A per metric, the p-value of an exact paired sign-flip test over "
        "problems, a 95% interval from the paired bootstrap (from 30 shared problems), and "
        "whether it is distinguishable from noise (from 10 shared problems; fewer: too few to "
        "tell). Engines, prompt styles, sampling settings and suites that differ between the "
        "runs are listed.")
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--samples", type=int, default=2000,
                    help="bootstrap replicates, and random sign patterns when more than 20 "
                    "problems changed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the comparison as JSON here")
    args = ap.parse_args(argv)
    if args.samples < 1:
        print(f"r1kit eval compare: --samples must be >= 1, got {args.samples}", file=sys.stderr)
        return 2
    why = folder_problem(args.out.parent) if args.out else None
    if why or (args.out and args.out.is_dir()):
        print(f"r1kit eval compare: --out {args.out}: {why or 'is a folder'}", file=sys.stderr)
        return 2
    from eval.report import CompareError, compare_markdown, compare_runs

    try:
        result = compare_runs(args.run_a, args.run_b, samples=args.samples, seed=args.seed)
    except CompareError as e:
        print(f"r1kit: {e}", file=sys.stderr)
        return 2
    print(compare_markdown(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


def cmd_demo(argv: list[str]) -> int:
    ap = _recipe_parser(
        "r1kit demo",
        "R1-Zero that learns on a laptop: build the supervised base, evaluate it on held-out "
        "arithmetic, train it with GRPO, evaluate again, and report the paired difference, "
        "curves.png and report.md in log.out_dir. Re-running resumes.",
        ["model", "data", "rollout", "reward", "algo", "train", "log"])
    ap.add_argument("recipe", nargs="?", default="recipes/tiny_r1_zero.yaml",
                    help="recipe YAML (default recipes/tiny_r1_zero.yaml)")
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    ap.add_argument("--heldout", type=int, default=200, help="held-out problems (default 200)")
    ap.add_argument("-n", type=int, default=4, help="samples per held-out problem (default 4)")
    ap.add_argument("--base-steps", type=int, default=None,
                    help="supervised steps of the base (default: the cached base's)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if _bad_counts(ap.prog, heldout=args.heldout, n=args.n,
                   base_steps=1 if args.base_steps is None else args.base_steps):
        return 2
    recipe, overrides = _recipe_and_overrides(args, default="recipes/tiny_r1_zero.yaml")
    from r1kit.config import validate_training

    cfg = load_config(recipe, overrides)
    validate_training(cfg)
    if not cfg.model.path.startswith("tiny:") or not cfg.model.path.endswith("/base"):
        print("r1kit demo: model.path must be an embedded base, tiny:<family>/base",
              file=sys.stderr)
        return 2
    _setup_logging("WARNING")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars are noise in the story
    from r1kit.demo import run_demo

    result = run_demo(cfg, heldout=args.heldout, n=args.n, base_steps=args.base_steps,
                      progress=not args.no_progress)
    print(result["text"])
    print(f"r1kit demo: everything is in {result['out_dir']} (report.md, curves.png)",
          file=sys.stderr)
    return 0


def _bad_counts(prog: str, **counts: int) -> bool:
    """Says so on one line and returns True when a count flag is below 1."""
    for name, value in counts.items():
        if value < 1:
            flag = "-n" if name == "n" else "--" + name.replace("_", "-")
            print(f"{prog}: {flag} must be >= 1, got {value}", file=sys.stderr)
            return True
    return False


def _delegate(module: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        return importlib.import_module(module).main(argv)

    return run


def benches() -> dict[str, Any]:
    """The installed benchmarks, ``name -> entry point`` of group ``r1kit.bench``.

    The benchmarks (package ``bench``) sit on the floor above this CLI, so it never imports
    them by name: the distribution declares each one as an entry point in ``pyproject.toml``
    and ``r1kit bench NAME`` loads the one asked for."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="r1kit.bench")}


def _summary(entry: Any) -> str:
    """The first line of a benchmark module's docstring, less its ``r1kit bench NAME``: head."""
    main = entry.load()
    doc = (sys.modules[main.__module__].__doc__ or "").strip().splitlines()
    return doc[0].split(": ", 1)[-1] if doc else ""


def cmd_bench(argv: list[str]) -> int:
    found = benches()
    if argv and argv[0] not in ("-h", "--help") and argv[0] not in found:
        print(f"r1kit bench: unknown benchmark {argv[0]!r} (known: {', '.join(sorted(found))})",
              file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        lines = [f"  {name:<8} {_summary(ep)}" for name, ep in sorted(found.items())]
        print(f"usage: r1kit bench {{{','.join(sorted(found))}}} [options]\n" + "\n".join(lines),
              file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return found[argv[0]].load()(argv[1:])


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "tiny": (cmd_tiny, "build an embedded tiny policy (Qwen3-MoE, DeepSeek-V3, dense Qwen3/2)"),
    "generate": (cmd_generate, "sample and score groups of completions from a recipe"),
    "train": (cmd_train, "GRPO training from a recipe (resumable)"),
    "demo": (cmd_demo, "R1-Zero that learns on a laptop: base, eval, GRPO, eval, report"),
    "eval": (cmd_eval, "score a model on math and code suites; compare two runs"),
    "distill": (cmd_distill, "distil a teacher into a student: rejection-sampled SFT or on-policy"),
    "distill-demo": (cmd_distill_demo, "the RL policy of `demo` teaches a tiny dense student"),
    "plan": (_delegate("r1kit.plan"), "per-GPU memory and step-time estimate of a recipe"),
    "grade": (_delegate("rewards.math"), "grade math answers from a JSONL file"),
    "sandbox": (_delegate("rewards.sandbox"), "run a Python file in the sandbox, print JSON"),
    "bench": (cmd_bench, "benchmarks: rollout, rewards, train, replay, eval, distill"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in ("-h", "--help") and argv[0] not in COMMANDS:
        print(f"r1kit: unknown command {argv[0]!r} (r1kit --help lists them)", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        lines = [f"  {name:14s}{doc}" for name, (_, doc) in COMMANDS.items()]
        print("usage: r1kit COMMAND [options]\n\ncommands:\n" + "\n".join(lines)
              + "\n\nr1kit COMMAND --help for a command's options.",
              file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    try:
        return COMMANDS[argv[0]][0](argv[1:])
    except ConfigError as e:
        print(f"r1kit: config error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"r1kit: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("r1kit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
