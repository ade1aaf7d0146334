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
from typing import Callable

from r1kit.config import ConfigError, config_help, load_config


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def cmd_tiny(argv: list[str]) -> int:
    from r1kit.tiny import FAMILIES, build_tiny, default_cache_dir

    ap = argparse.ArgumentParser(
        prog="r1kit tiny",
        description="Build (or reuse from the cache) the embedded tiny policy: a random-init "
        "Qwen3-MoE, DeepSeek-V3 or dense Qwen3 (tied embeddings) with a locally trained "
        "tokenizer. Prints the checkpoint path.")
    ap.add_argument("--family", choices=[*FAMILIES, "all"], default="qwen3_moe")
    ap.add_argument("--seed", type=int, default=0, help="random-init seed (default 0)")
    ap.add_argument("--cache-dir", default=None,
                    help=f"where checkpoints are kept (default {default_cache_dir()})")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = ap.parse_args(argv)
    for family in FAMILIES if args.family == "all" else [args.family]:
        print(build_tiny(family, seed=args.seed, cache_dir=args.cache_dir, force=args.force))
    return 0


def _recipe_parser(prog: str, description: str, sections: list[str]) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (section.key=value):\n" + config_help(sections))


def cmd_generate(argv: list[str]) -> int:
    ap = _recipe_parser(
        "r1kit generate",
        "Sample groups of completions for a recipe's problems, score them with its rewards, and "
        "write completions.jsonl and metrics.json to log.out_dir.",
        ["model", "data", "rollout", "reward", "log"])
    ap.add_argument("recipe", nargs="?", help="recipe YAML (defaults apply without one)")
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    args = ap.parse_args(argv)
    recipe, overrides = args.recipe, args.overrides
    if recipe is not None and "=" in recipe:  # no recipe, only overrides
        recipe, overrides = None, [recipe, *overrides]
    cfg = load_config(recipe, overrides)
    _setup_logging(cfg.log.level)
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM's records go to engine.log
    from r1kit.generate import PromptTooLong, run_generate
    from rewards.scorer import RewardFailure

    start = time.perf_counter()
    try:
        metrics = run_generate(cfg)
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
    ap.add_argument("recipe", nargs="?", help="recipe YAML (defaults apply without one)")
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    if not argv:  # training is never started by accident
        ap.print_usage(sys.stderr)
        print("r1kit train: give a recipe and/or section.key=value settings", file=sys.stderr)
        return 2
    args = ap.parse_args(argv)
    recipe, overrides = args.recipe, args.overrides
    if recipe is not None and "=" in recipe:
        recipe, overrides = None, [recipe, *overrides]
    from r1kit.config import validate_training

    cfg = load_config(recipe, overrides)
    validate_training(cfg)
    _setup_logging(cfg.log.level)
    from grpo.setup import ResumeError, run_train
    from grpo.update import NonFiniteError
    from r1kit.generate import PromptTooLong
    from rewards.scorer import RewardFailure

    try:
        result = run_train(cfg, show_progress=not args.no_progress)
    except (ResumeError, PromptTooLong) as e:
        print(f"r1kit: {e}", file=sys.stderr)
        return 2
    except (NonFiniteError, RewardFailure) as e:
        print(f"r1kit: training stopped: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    return 0


def _delegate(module: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        return importlib.import_module(module).main(argv)

    return run


BENCHES: dict[str, str] = {
    "rollout": "rollouts.bench",
    "rewards": "rewards.bench",
    "train": "grpo.bench",
    "replay": "grpo.replay_bench",
}


def cmd_bench(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        print(f"usage: r1kit bench {{{','.join(BENCHES)}}} [options]\n"
              "  rollout  tokens/s of the HF and vLLM engines and weight-sync time\n"
              "  rewards  math grading and sandbox throughput against peers\n"
              "  train    GRPO seconds/step and peak memory against TRL\n"
              "  replay   what MoE routing replay does to off-policy updates", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return _delegate(BENCHES[argv[0]])(argv[1:])


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "tiny": (cmd_tiny, "build an embedded tiny policy (Qwen3-MoE, DeepSeek-V3, dense Qwen3)"),
    "generate": (cmd_generate, "sample and score groups of completions from a recipe"),
    "train": (cmd_train, "GRPO training from a recipe (resumable)"),
    "grade": (_delegate("rewards.math"), "grade math answers from a JSONL file"),
    "sandbox": (_delegate("rewards.sandbox"), "run a Python file in the sandbox, print JSON"),
    "bench": (cmd_bench, "benchmarks: rollout, rewards, train, replay"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:10s}{doc}" for name, (_, doc) in COMMANDS.items()]
        print("usage: r1kit COMMAND [options]\n\ncommands:\n" + "\n".join(lines)
              + "\n\nr1kit COMMAND --help for a command's options.",
              file=sys.stdout if argv else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"r1kit: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    try:
        return COMMANDS[argv[0]][0](argv[1:])
    except ConfigError as e:
        print(f"r1kit: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the server engine's handler has already said so on stderr
        return 130


if __name__ == "__main__":
    sys.exit(main())
