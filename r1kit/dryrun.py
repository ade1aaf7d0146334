"""``r1kit train RECIPE --dry-run``: a real-model recipe's GRPO, two steps on CPU at toy size.

What runs is ``r1kit.train.run_train``, the code path of the real run, on a checkpoint of the
recipe's architecture (``r1kit.archs.reduced_config``: same model type, attention, MoE layout and
routing, toy widths) with random weights and the embedded tiny tokenizer (``r1kit.tiny``); nothing
is downloaded. The checkpoint is built once and cached under ``$R1KIT_CACHE/dryrun``.

Kept from the recipe: the whole ``algo`` section (advantage, scaling, loss, aggregation, clip, KL,
mismatch correction, dynamic sampling, routing replay), LoRA settings, rewards, prompt style,
learning-rate schedule, minibatch structure. Changed, each printed:

- ``train.steps=2``, ``train.device=cpu``, ``model.dtype=float32``, ``train.wandb=false``,
  ``train.offload=false``;
  ``log.out_dir`` a fresh temporary folder unless given as an override;
- sizes that would take minutes on CPU, capped (``CAPS``); the soft overlong buffer scaled with
  ``rollout.max_tokens`` so it stays inside it;
- data: the synthetic arithmetic family when the recipe's data file is not there;
- ``rollout.engine=hf`` where vLLM cannot serve the recipe on CPU: routing replay needs each
  token's routed experts, which vLLM reports only on GPU (``rollouts/vllm_engine.py``); and for
  the colocated vLLM engine under a multi-process launch, which ``r1kit train`` refuses;
- the random LM head's EOS row scaled by ``EOS_SCALE``: a random policy would almost never end
  within ``rollout.max_tokens``, and with overlong filtering (``algo.mask_truncated``) an update
  of only truncated completions trains on no token at all;
- one reward added, ``rewards.toy:digit_share``: a random-init policy scores 0 on math and code,
  every group would have zero reward variance, and no step would reach the update. The recipe's
  own rewards are still computed and logged.

Under ``torchrun --nproc_per_node N`` (gloo on CPU) every rank runs the dry run: the recipe's
``train.parallel`` (ddp or fsdp2) runs as on GPUs. Rank 0 builds the reduced checkpoint (the
others wait on a file lock), prints and checks; the run folder is one temporary folder named
after the launch (``TORCHELASTIC_RUN_ID``), so every rank writes into the same one.

A recipe whose data file is not here trains on the synthetic arithmetic family, or, when it
names ``data.columns: [tests]`` (the code reward), on synthetic stdin/stdout problems.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from grpo import routing
from r1kit import archs
from r1kit.config import Config, ConfigError, load_config, parse_override, validate_training
from r1kit.tiny import build_tokenizer, default_cache_dir, fill_hash_tables, save_checkpoint
from r1kit.train import run_train

log = logging.getLogger("r1kit.dryrun")

BUILD_VERSION = 2  # bump when the reduced checkpoints change, so old caches are not reused
CAPS = {  # setting -> largest value a dry run keeps (CPU seconds, not correctness)
    "data.num_prompts": 64, "train.prompts_per_step": 2, "rollout.n": 4,
    "rollout.max_tokens": 24, "rollout.max_model_len": 256, "train.minibatches": 2,
    "reward.workers": 1,
}
TOY_REWARD = "rewards.toy:digit_share"
EOS_SCALE = 25.0  # the random LM head's EOS row is scaled by this: a share of completions end early


class DryRunError(RuntimeError):
    """The recipe cannot run here, or its dry run did not exercise the update; one line."""


def dry_run(recipe: str | None, overrides: list[str], show_progress: bool = False,
            keep: bool = False) -> int:
    """Run the dry run; print the plan and a summary; 0 on success, 1 with one line if not.
    The run folder it makes in the temp directory (when no ``log.out_dir`` is given) and any
    stand-in data are removed after a dry run that passes, unless ``keep``; a failed one keeps
    them for its ``train.log``."""

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # a toy model needs little KV cache
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    logging.basicConfig(level="WARNING", stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        result = _run(recipe, list(overrides), show_progress, keep)
    except ConfigError:
        raise  # the CLI prints it as a config error, exit 2
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"r1kit: dry run failed: {type(e).__name__}: {first}", file=sys.stderr)
        log.debug("dry run failure", exc_info=True)
        return 1
    if _rank() == 0:
        print(f"dry run: done in {time.perf_counter() - start:.1f} s; {result}")
    return 0


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _run(recipe: str | None, overrides: list[str], show_progress: bool, keep: bool) -> str:

    source, data_fix = _data_override(recipe, overrides)
    first = load_config(recipe, overrides + data_fix)  # also checks every reward's columns
    changes = _reductions(first, overrides)
    model_dir, arch_line, routing_note = build_reduced(first.model.path, first.train.seed,
                                                       first.algo.routing_replay)
    forced = [f"model.path={model_dir}", *(f"{k}={v}" for k, (_, v) in changes.items())]
    cfg = load_config(recipe, overrides + data_fix + forced)
    validate_training(cfg)
    main = _rank() == 0
    if not main:  # every rank trains; rank 0 prints the plan and checks the run
        run_train(cfg, show_progress=False)
        return ""
    print(f"dry run of {recipe or '<defaults>'}: {first.model.path} as {arch_line}")
    print(f"  checkpoint (random init, tiny tokenizer): {model_dir}")
    if routing_note:
        print(f"  routing replay: {routing_note}")
    if data_fix:
        print(f"  data: {source!r} is not here; using {data_fix[0].split('=', 1)[1]} "
              "(synthetic problems)")
    for key, (old, new) in changes.items():
        print(f"  {key}: {old} -> {new}")
    result = run_train(cfg, show_progress=show_progress)
    rows = [json.loads(ln) for ln in (Path(cfg.log.out_dir) / "metrics.jsonl").read_text()
            .splitlines() if ln.strip()]
    updates = sum(r.get("grad_norm", 0.0) > 0 for r in rows)  # an update that moved something
    if result["step"] != cfg.train.steps or not updates:
        raise DryRunError(f"{result['step']} steps done, {updates} reached the update "
                          f"(see {cfg.log.out_dir}/train.log)")
    shown = {k: round(v, 4) for k, v in result.items() if isinstance(v, float) and k in (
        "reward", "loss", "grad_norm", "entropy", "clip_frac", "kl", "mismatch/max_ratio",
        "router/topk_changed", "router/load_entropy", "groups_kept")}
    made = [Path(cfg.log.out_dir)] if "log.out_dir" in changes else []
    made += [Path(f.split("=", 1)[1]).parent for f in data_fix
             if Path(f.split("=", 1)[1]).parent.name.startswith("r1kit-dryrun-data-")]
    where = f"outputs in {cfg.log.out_dir}"
    if made and not keep:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        where = (f"outputs in {cfg.log.out_dir}" if "log.out_dir" not in changes
                 else "its temporary run folder removed (--keep keeps it)")
    return f"{result['step']} steps, {updates} updates; last step {json.dumps(shown)}; {where}"


def _data_override(recipe: str | None, overrides: list[str]) -> tuple[str, list[str]]:
    """The recipe's (or override's) data source, and ``["data.source=arithmetic"]`` if it is a
    file that is not there."""

    source = "arithmetic"
    if recipe is not None and Path(recipe).is_file():
        raw = yaml.safe_load(Path(recipe).read_text(encoding="utf-8")) or {}
        data = raw.get("data") if isinstance(raw, dict) else None
        if isinstance(data, dict) and isinstance(data.get("source"), str):
            source = data["source"]
    columns = data.get("columns", []) if isinstance(data, dict) else []
    for text in overrides:
        if text.startswith("data.source="):
            source = str(parse_override(text)[2])
        if text.startswith("data.columns="):
            columns = parse_override(text)[2]
    if source == "arithmetic" or Path(source).expanduser().is_file():
        return source, []
    if not columns:
        return source, ["data.source=arithmetic"]
    return source, [f"data.source={synthetic_code_problems(columns)}"]


def synthetic_code_problems(columns: list[str], count: int = 64) -> Path:
    """A JSONL of stdin/stdout problems (add two integers) with a ``tests`` column, standing in
    for a code recipe's data file; other columns cannot be made up."""
    if set(columns) != {"tests"}:
        raise DryRunError(f"the recipe's data file is not here and the dry run can only stand in "
                          f"for a 'tests' column, not {columns}")
    path = Path(tempfile.mkdtemp(prefix="r1kit-dryrun-data-")) / "code.jsonl"
    rows = []
    for i in range(count):
        a, b = i, 3 * i + 1
        rows.append({"question": f"Read two integers from one line of stdin and print their "
                     f"sum. Example: input `{a} {b}`, output `{a + b}`.",
                     "tests": [[f"{a} {b}\n", f"{a + b}\n"], [f"{b} 7\n", f"{b + 7}\n"]]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reductions(cfg: Config, overrides: list[str]) -> dict[str, tuple[Any, Any]]:
    """``section.key -> (recipe value, dry-run value)`` for every setting the dry run changes."""
    changes: dict[str, tuple[Any, Any]] = {}

    def put(key: str, new: Any) -> None:
        section, name = key.split(".")
        old = getattr(getattr(cfg, section), name)
        if old != new:
            changes[key] = (old, new)

    put("train.steps", 2)
    put("train.device", "cpu")
    put("model.dtype", "float32")
    put("train.wandb", False)
    put("train.offload", False)  # offload moves GPU shards to host memory: nothing to move here
    if not any(o.startswith("log.out_dir=") for o in overrides):
        if _world() > 1:  # one folder for every rank of this launch
            launch = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "0")
            put("log.out_dir", str(Path(tempfile.gettempdir()) / f"r1kit-dryrun-{launch}"))
        else:
            put("log.out_dir", tempfile.mkdtemp(prefix="r1kit-dryrun-"))
    for key, cap in CAPS.items():
        section, name = key.split(".")
        put(key, min(getattr(getattr(cfg, section), name), cap))
    new_max = min(cfg.rollout.max_tokens, CAPS["rollout.max_tokens"])
    if "soft_overlong" in cfg.reward.funcs and cfg.reward.overlong_buffer >= new_max:
        scaled = cfg.reward.overlong_buffer * new_max // cfg.rollout.max_tokens
        put("reward.overlong_buffer", min(max(1, scaled), new_max - 1))
    if cfg.rollout.engine != "hf" and cfg.algo.routing_replay:
        put("rollout.engine", "hf")  # vLLM reports routed experts only on GPU
    if cfg.rollout.engine == "vllm" and _world() > 1:
        put("rollout.engine", "hf")  # r1kit train refuses the colocated engine on several ranks
    if TOY_REWARD not in cfg.reward.funcs:
        put("reward.funcs", json.dumps([*cfg.reward.funcs, TOY_REWARD]))
        put("reward.weights", json.dumps([*cfg.reward.weights, 1.0]))
    return changes


def build_reduced(model_path: str, seed: int, routing_replay: bool) -> tuple[Path, str, str]:
    """The reduced random-init checkpoint of ``model_path`` (built once, cached), a one-line
    description of its architecture, and what routing replay will do on it."""
    import torch
    from transformers import AutoModelForCausalLM

    if model_path.startswith("tiny:"):
        raise DryRunError(f"{model_path} is already tiny: run the recipe itself")
    tokenizer = build_tokenizer(0)
    config = archs.reduced_config(model_path, len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    name = model_path.strip("/").replace("/", "--")
    out = default_cache_dir() / "dryrun" / f"{name}-seed{seed}-v{BUILD_VERSION}"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # some completions must end: overlong filtering masks truncated ones
        model.get_output_embeddings().weight[tokenizer.eos_token_id] *= EOS_SCALE
    if config.model_type == "deepseek_v4":  # hash-MoE tables are zeros after init: fill them

        fill_hash_tables(model, seed)
    full_moe = any(getattr(archs.full_config(model_path), k, None)
                   for k in ("num_experts", "n_routed_experts"))
    if full_moe and not any(".experts." in n for n, _ in model.named_parameters()):
        raise DryRunError(f"the reduced {config.model_type} lost its MoE layers")
    try:
        routing.moe_routers(model)
        note = "on" if routing_replay else "off in the recipe (supported for this router)"
    except ValueError as e:
        if routing_replay:
            raise DryRunError(f"algo.routing_replay: {e}") from None
        note = f"off; not available: {e}" if full_moe else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:  # ranks of one launch: one builds
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "model.safetensors").is_file():
            model.generation_config.eos_token_id = tokenizer.eos_token_id
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            meta = {"dry_run_of": model_path, "seed": seed, "build_version": BUILD_VERSION,
                    "parameters": sum(p.numel() for p in model.parameters())}
            save_checkpoint(model, tokenizer, meta, out)
    params = sum(p.numel() for p in model.parameters())
    return out, f"{archs.describe(config)} ({params / 1e6:.2f}M parameters)", note
