"""``r1kit plan``: does a recipe fit the hardware it names, and if not, what is the smallest
change that makes it fit.

Layout. ``plan.gpu`` is the GPU kind, ``plan.gpus`` the GPUs per node and ``plan.nodes`` the
nodes: ``plan.gpus x plan.nodes`` ranks, one per GPU. How the trainer splits its state over the
ranks is what the trainer itself reads: ``train.parallel`` (``ddp``: a whole replica per rank;
``fsdp2``: weights, gradients, AdamW state and the KL reference sharded per decoder layer,
``grpo/parallel.py``; on one rank neither splits anything), ``train.activation_checkpointing``
and ``train.offload`` (FSDP2 only). ``plan.engine_tp`` is the planned tensor-parallel size of the
vLLM engine (``rollout`` has no such setting yet). The memory and time model, every constant with
its source: ``r1kit/estimate.py``; what an architecture holds: ``r1kit/footprint.py``.

A recipe fits when its peak per GPU is within the GPU's memory, its vLLM engine can start (its
reservation holds its weights and one full-length sequence's KV cache) and offloaded shards fit
the node's host memory. When it does not, ``fits_with`` tries single changes in the order of
``_knobs`` (sharding, activation checkpointing, a smaller token budget, engine tensor
parallelism, offload, more GPUs per node, more nodes), then pairs, then larger combinations, and
prints the first that fits as overrides to paste: the fewest changes, each the smallest of its
kind that works in that combination.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from r1kit.config import Config, ConfigError, config_help, load_config, origin
from r1kit.estimate import (
    DTYPE_BYTES,
    FSDP2_REDUCES_EVERY_MICRO_BATCH,
    GIB,
    GPUS,
    PHASES,
    memory_plan,
    step_time,
)
from r1kit.footprint import (
    ACT_BYTES_PER_HIDDEN_LAYER,
    Counts,
    activation_bytes,
    arch_config,
    count_params,
)


# -- the plan ---------------------------------------------------------------------------------
def check_plan(cfg: Config) -> None:
    """The ``plan`` settings are possible."""
    p = cfg.plan
    for key, value in (("plan.gpus", p.gpus), ("plan.nodes", p.nodes),
                       ("plan.engine_tp", p.engine_tp)):
        if value < 1:
            raise ConfigError(f"{origin(cfg, key)}: {key}: must be >= 1, got {value}")
    if not 0 < p.mfu <= 1:
        raise ConfigError(f"{origin(cfg, 'plan.mfu')}: plan.mfu: must be in (0, 1], got {p.mfu}")
    if p.gpus % p.engine_tp:
        where = {origin(cfg, "plan.engine_tp"), origin(cfg, "plan.gpus")}
        raise ConfigError(f"{'command line' if 'command line' in where else cfg.source}: "
                          f"plan.engine_tp: {p.engine_tp} does not divide plan.gpus={p.gpus} "
                          "(a replica's GPUs are on one node)")


def launch_refusal(cfg: Config, gpus: int, nodes: int, gpu_bytes: float,
                   device_name: str) -> str | None:
    """For ``r1kit train`` on GPUs: None when the plan of ``cfg`` on the launch's own devices
    (``nodes`` x ``gpus`` GPUs of ``gpu_bytes`` each; the GPU table's nearest kind for speeds)
    fits, else one line with the plan's figure and the smallest change that fits."""
    c = copy.deepcopy(cfg)
    p = c.plan
    p.gpu = min(GPUS, key=lambda k: abs(GPUS[k].memory_gib * GIB - gpu_bytes))
    p.gpus, p.nodes = gpus, nodes
    while p.gpus % p.engine_tp:  # the recipe's engine TP on fewer GPUs than it planned for
        p.engine_tp //= 2
    res = plan(c, arch_config(c.model))
    if res["fits"] and res["total"] <= gpu_bytes:
        return None
    return (f"r1kit plan, for {nodes} x {gpus} {device_name} ({gpu_bytes / GIB:.1f} GiB each): "
            f"{_fit_line(res)} (train.check_fit=false starts anyway)")


def counts_of(cfg: Config, arch) -> Counts:
    """``count_params`` for the recipe's LoRA settings, which must name something."""
    t = cfg.train
    c = count_params(arch, t.lora_rank, t.lora_targets, t.lora_target_parameters)
    if t.lora_rank and not c.lora:
        raise ConfigError(f"{origin(cfg, 'train.lora_targets')}: train.lora_targets: no "
                          f"Linear module of {type(arch).__name__} is named {t.lora_targets}")
    if t.lora_target_parameters and not c.lora_experts:
        raise ConfigError(f"{origin(cfg, 'train.lora_target_parameters')}: "
                          f"train.lora_target_parameters: no 3-D parameter of "
                          f"{type(arch).__name__} is named {t.lora_target_parameters}")
    return c


def plan(cfg: Config, arch, counts: Counts | None = None) -> dict[str, Any]:
    """Per-GPU memory (bytes) and step time (seconds) of ``cfg`` on ``cfg.plan``'s hardware,
    and, when it does not fit, the smallest change found that makes it fit (``fits_with``)."""
    check_plan(cfg)
    p, t = cfg.plan, cfg.train
    c = counts or counts_of(cfg, arch)
    m = memory_plan(cfg, arch, c)
    layout = m.pop("layout")
    result = {
        "gpu": p.gpu, "gpus": p.gpus, "nodes": p.nodes, "ranks": layout.ranks,
        "parallel": t.parallel, "sharded": layout.sharded, "offload": layout.offload,
        "activation_checkpointing": t.activation_checkpointing, "engine_tp": p.engine_tp,
        "micro_batches": layout.micro_batches, "tokens": layout.tokens,
        "dtype": cfg.model.dtype, "engine": cfg.rollout.engine,
        "params": c.total, "active_params": c.active, "trainable_params": c.lora or c.total,
        **m, "largest": max(m["memory"], key=m["memory"].get),
        "activations_derived": activation_bytes(arch, 2).derived,
        "full_weights": c.total * (4 if t.mixed_precision and not t.lora_rank
                                   else DTYPE_BYTES[cfg.model.dtype]) + c.lora * 4,
        "time": step_time(cfg, arch, c, m["kv"], layout),
    }
    result["fits_with"] = None if result["fits"] else fits_with(cfg, arch, c)
    result["warnings"], result["notes"] = _warnings(cfg, result), _notes(cfg, result)
    return result


# -- what would make it fit -------------------------------------------------------------------
def _knobs(cfg: Config) -> list[tuple[str, list[Any]]]:
    """The changes tried, in order, each with its values, the smallest change first:
    sharding, activation checkpointing, a smaller token budget (down to one full-length
    sequence, the least ``validate_training`` accepts), the engine's tensor parallelism, offload,
    more GPUs per node (up to 8), then more nodes."""
    p, t, r = cfg.plan, cfg.train, cfg.rollout
    knobs: list[tuple[str, list[Any]]] = []
    if t.parallel != "fsdp2":
        knobs.append(("train.parallel", ["fsdp2"]))
    if not t.activation_checkpointing:
        knobs.append(("train.activation_checkpointing", [True]))
    budgets, b = [], t.token_budget // 2
    while b > r.max_model_len:
        budgets.append(b)
        b //= 2
    if t.token_budget > r.max_model_len:
        budgets.append(r.max_model_len)
    if budgets:
        knobs.append(("train.token_budget", budgets))
    if r.engine != "hf":
        tps = [v for v in (2, 4, 8) if v > p.engine_tp]
        if tps:
            knobs.append(("plan.engine_tp", tps))
    if not t.offload:
        knobs.append(("train.offload", [True]))
    scale = [(g, p.nodes) for g in (2, 4, 8) if g > p.gpus]
    scale += [(max(p.gpus, 8), n) for n in (2, 4, 8, 16, 32) if n > p.nodes]
    if scale:
        knobs.append(("plan.gpus/plan.nodes", scale))
    return knobs


def _apply(cfg: Config, changes: tuple[tuple[str, Any], ...]) -> tuple[Config, list[str]] | None:
    """A copy of ``cfg`` with ``changes`` and the overrides that make them, or None when the
    combination is impossible or one of its changes would do nothing."""
    new = copy.deepcopy(cfg)
    overrides = []
    for key, value in changes:
        if key == "plan.gpus/plan.nodes":
            gpus, nodes = value
            new.plan.gpus, new.plan.nodes = gpus, nodes
            overrides += [f"plan.gpus={gpus}"] * (gpus != cfg.plan.gpus) \
                + [f"plan.nodes={nodes}"] * (nodes != cfg.plan.nodes)
            continue
        section, name = key.split(".")
        setattr(getattr(new, section), name, value)
        overrides.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    ranks = new.plan.gpus * new.plan.nodes
    sharded = ranks > 1 and new.train.parallel == "fsdp2"
    keys = {k for k, _ in changes}
    if new.plan.gpus % new.plan.engine_tp or ranks % new.plan.engine_tp:
        return None
    if ("train.parallel" in keys or "train.offload" in keys) and not sharded:
        return None  # FSDP2 (and its offload) does nothing on one rank
    return new, overrides


def fits_with(cfg: Config, arch, c: Counts) -> dict[str, Any] | None:
    """The first combination of the fewest changes (``_knobs``, in their order) under which
    ``cfg`` fits: ``{"overrides": [...], "total": bytes}``, or None if none does."""
    knobs = _knobs(cfg)
    for size in range(1, len(knobs) + 1):
        for chosen in itertools.combinations(knobs, size):
            for values in itertools.product(*(vals for _, vals in chosen)):
                made = _apply(cfg, tuple(zip((k for k, _ in chosen), values)))
                if made is None:
                    continue
                new, overrides = made
                m = memory_plan(new, arch, c)
                if m["fits"]:
                    return {"overrides": overrides, "total": m["total"]}
    return None


# -- output -----------------------------------------------------------------------------------
LABELS = {"weights": "weights", "optimizer": "optimizer (AdamW)",
          "reference": "reference model", "kv_cache": "KV cache / engine",
          "gathered": "weights in compute dtype", "grad_accum": "earlier micro-batches' grads",
          "reduce": "reduce-scatter buffer", "lm_head": "LM head chunks",
          "activations": "activations (start of backward)",
          "grad_new": "new grads, recomputed layer (end)", "gradients": "gradients",
          "step_temp": "AdamW temporaries"}
PHASE_TITLES = {"held": "held throughout the update",
                "pass": "a micro-batch's forward and backward",
                "step": "the optimiser step"}


def _warnings(cfg: Config, res: dict[str, Any]) -> list[str]:
    out = []
    gpu = res["gpu_memory"] / GIB
    if res["total"] > res["gpu_memory"]:
        big = res["largest"]
        out.append(f"does not fit: {res['total'] / GIB:.1f} GiB > {gpu:.1f} GiB per GPU "
                   f"({res['gpu']}); largest: {LABELS[big]} ({res['memory'][big] / GIB:.1f} GiB)")
    kv = res["kv"]
    if not kv["starts"]:
        weights = res["params"] * DTYPE_BYTES[cfg.model.dtype] / kv["tp"]
        out.append(f"the engine's weights ({weights / GIB:.1f} GiB per GPU at engine TP "
                   f"{kv['tp']}) leave its rollout.gpu_memory_utilization="
                   f"{cfg.rollout.gpu_memory_utilization} reservation "
                   f"({res['memory']['kv_cache'] / GIB:.1f} GiB) no room for one "
                   f"{cfg.rollout.max_model_len:,}-token sequence's KV cache: vLLM would not start")
    elif not kv["covers"]:
        out.append(f"the KV cache holds {kv['space'] / GIB:.1f} of the {kv['needed'] / GIB:.1f} "
                   f"GiB {kv['sequences']} full-length sequences need: generation runs in "
                   f"{res['time']['decode_waves']} waves")
    if res["host"] > res["host_memory"]:
        out.append(f"offloaded shards take {res['host'] / 1e9:,.0f} GB of host memory per node, "
                   f"more than a {res['gpu']} node's {res['host_memory'] / 1e9:,.0f} GB")
    return out


def _notes(cfg: Config, res: dict[str, Any]) -> list[str]:
    out = []
    if res["memory"]["grad_accum"] and res["sharded"] and not FSDP2_REDUCES_EVERY_MICRO_BATCH:
        out.append(f"FSDP2 holds unsharded gradients between reductions: grpo/parallel.py "
                   f"reduce-scatters on a minibatch's last micro-batch only, and a rank runs "
                   f"{res['micro_batches']} per optimiser step here")
    if res["ranks"] > 1:
        out.append(f"the step time assumes {res['kv']['replicas']} engine replicas sampling "
                   "their shares and each rank's log-probs over its own rows; today rank 0 "
                   "samples the whole step and every rank computes prepare's log-probs of every "
                   "row (grpo/parallel.py)")
        if cfg.rollout.engine == "vllm":
            out.append("r1kit train refuses the colocated vLLM engine on several ranks today "
                       "(r1kit/train.py:check_layout); the plan is the colocated layout")
    if res["sharded"] and res["full_weights"] > res["gpu_memory"]:
        out.append(f"start-up: r1kit/train.py loads the whole policy onto each GPU before "
                   f"sharding it ({res['full_weights'] / GIB:.1f} GiB)")
    if cfg.rollout.engine == "hf" and cfg.plan.engine_tp > 1:
        out.append("plan.engine_tp has no effect: the HF engine samples with the trainer's "
                   "weights")
    if not res["activations_derived"]:
        out.append(f"activations: Korthikanti et al.'s generic {ACT_BYTES_PER_HIDDEN_LAYER} bytes "
                   f"per hidden unit (not derived for {cfg.model.path})")
    return out


def _fit_line(res: dict[str, Any]) -> str:
    gpu = res["gpu_memory"] / GIB
    if res["fits"]:
        return f"fits: {res['total'] / GIB:.1f} GiB of {gpu:.1f} GiB per GPU"
    why = []
    if res["total"] > res["gpu_memory"]:
        why.append(f"{res['total'] / GIB:.1f} GiB > {gpu:.1f} GiB")
    if not res["kv"]["starts"]:
        why.append("vLLM would not start")
    if res["host"] > res["host_memory"]:
        why.append(f"{res['host'] / 1e9:,.0f} GB > {res['host_memory'] / 1e9:,.0f} GB of host "
                   "memory per node")
    head = f"does not fit: {'; '.join(why)}."
    fix = res["fits_with"]
    if fix is None:
        return (f"{head} No combination of the changes r1kit plan tries fits (sharding, "
                "activation checkpointing, token budget, engine TP, offload, up to 32 nodes)")
    return f"{head} Fits with: {' '.join(fix['overrides'])} ({fix['total'] / GIB:.1f} GiB)"


def render(res: dict[str, Any]) -> str:
    """The plan as text: layout, memory table by phase, verdict and changes, step time."""
    kv = res["kv"]
    split = (f"sharded over {res['ranks']}" if res["sharded"] else
             "a replica per rank" if res["ranks"] > 1 else "one rank")
    where = (f"{res['ranks']} x {res['gpu']} ({res['gpus']} per node x {res['nodes']} "
             f"node{'s' * (res['nodes'] > 1)}), {res['dtype']}")
    trainer = (f"train.parallel {res['parallel']} ({split}), activation checkpointing "
               f"{'on' if res['activation_checkpointing'] else 'off'}, offload "
               f"{'on' if res['offload'] else 'off'}; {res['micro_batches']} micro-batch"
               f"{'es' * (res['micro_batches'] > 1)} of up to {res['tokens']:,} tokens per rank "
               "per optimiser step")
    engine = res["engine"] + ("" if res["engine"] == "hf" else
                              f", TP {kv['tp']} ({kv['replicas']} replicas)")
    counts = (f"parameters {res['params']:,} (active per token {res['active_params']:,.0f}, "
              f"trainable {res['trainable_params']:,})")
    lines = [f"r1kit plan (an estimate, not a measurement): {where}", f"trainer: {trainer}",
             f"engine: {engine}", counts, "", f"{'per GPU':38s}{'GiB':>9s}"]
    for phase, keys in PHASES.items():
        lines.append(PHASE_TITLES[phase])
        lines += [f"  {LABELS[k]:36s}{res['memory'][k] / GIB:9.2f}"
                  + {"activations": "  } the larger of", "grad_new": "  } these two"}.get(k, "")
                  for k in keys]
    lines += [f"{'total (held + the larger phase)':38s}{res['total'] / GIB:9.2f}",
              f"{'GPU memory':38s}{res['gpu_memory'] / GIB:9.2f}"]
    if res["offload"]:
        lines.append(f"{'host memory per node (offload), GB':38s}{res['host'] / 1e9:9.1f} "
                     f"of {res['host_memory'] / 1e9:,.0f}")
    lines.append(f"KV cache: {kv['bytes_per_token'] / 2**10:.1f} KiB per token per GPU; " + (
        f"the HF engine's batch of {kv['sequences']} full-length sequences needs "
        f"{kv['needed'] / GIB:.2f} GiB while sampling (the peak counts the larger of it and the "
        "update)" if res["engine"] == "hf" else
        f"{kv['sequences']} full-length sequences per replica need {kv['needed'] / GIB:.2f} GiB "
        f"per GPU, vLLM's reservation has {max(kv['space'], 0) / GIB:.2f} GiB for them after its "
        f"weights ({'covers' if kv['covers'] else 'does not cover'})"))
    lines += [f"WARNING: {w}" for w in res["warnings"]] + [f"note: {n}" for n in res["notes"]]
    lines += ["", _fit_line(res), "", f"{'step time':24s}{'s':>10s}"]
    time = res["time"]
    for key in ("generation", "logprobs", "update", "offload", "sync", "total"):
        if key == "offload" and not res["offload"]:
            continue
        value = time[key]
        lines.append(f"{key:24s}{value:10.2f}" if value is not None else
                     f"{key:24s}{'-':>10s}  (vLLM would not start: see above)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="r1kit plan", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Estimate per-GPU memory (weights, optimizer, reference, engine, gathered "
        "layers, gradients, activations) and step time (generation, log-probs, update, sync) of "
        "a recipe on the hardware its plan section states, with the trainer's train.parallel, "
        "train.activation_checkpointing and train.offload, and, when it does not fit, the "
        "smallest change that makes it fit. The model and its constants: r1kit/estimate.py.",
        epilog="settings (section.key=value):\n" + config_help(["plan"]))
    ap.add_argument("recipe", nargs="?", help="recipe YAML (defaults apply without one)")
    ap.add_argument("overrides", nargs="*",
                    help="section.key=value, e.g. plan.gpus=8 train.parallel=fsdp2")
    ap.add_argument("--json", metavar="PATH", help="also write the plan as JSON")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    recipe, overrides = args.recipe, args.overrides
    if recipe is not None and "=" in recipe:  # no recipe, only overrides
        recipe, overrides = None, [recipe, *overrides]
    try:
        cfg = load_config(recipe, overrides, check_data=False)
        res = plan(cfg, arch_config(cfg.model))
    except ConfigError as e:
        print(f"r1kit: config error: {e}", file=sys.stderr)
        return 2
    print(render(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=vars) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
