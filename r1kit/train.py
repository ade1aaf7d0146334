"""Assembling a ``GRPOTrainer`` from a recipe, resuming it, and running it: ``r1kit train``.

Order of work, so that errors come before cost: recipe checks (``validate_training``) -> run
folder and resume decision -> problems -> scorer (its workers start and warm up in the
background) -> prompt lengths -> policy (from the checkpoint when resuming) -> optimiser ->
reference (beta > 0, full fine-tuning) -> engine -> wait for the scorer's workers (so step 1's
scoring costs what later steps' does) -> resumed trainer state -> one weight sync (the engine
samples from exactly the trainer's weights from the first step) -> loop. If anything fails
after the scorer starts, its workers are stopped (``Parts.close`` once the parts exist).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml

from grpo import routing
from grpo.checkpoint import (
    is_sharded,
    latest_checkpoint,
    list_checkpoints,
    load_sharded_state,
    load_trainer_state,
    save_checkpoint,
    save_sharded_checkpoint,
)
from grpo.observe import RunLog, output_to, route_logs
from grpo.parallel import Parallel
from grpo.trainer import GRPOTrainer, Parts, ProblemStream, TeacherSignal
from grpo.update import Objective
from r1kit.config import Config, ConfigError, Interrupted
from r1kit.generate import check_prompt_lengths, load_problems, resolve_model_path
from r1kit.plan import launch_refusal
from rollouts.prompts import build_prompt

log = logging.getLogger("r1kit.train")


class ResumeError(ValueError):
    """The run folder and ``train.resume`` disagree."""


def resolve_mismatch(cfg: Config) -> str:
    """``algo.mismatch: auto``: sequence-level masking with vLLM samplers, none with HF."""
    if cfg.algo.mismatch != "auto":
        return cfg.algo.mismatch
    return "none" if cfg.rollout.engine == "hf" else "sequence_mask"


def find_resume(cfg: Config) -> Path | None:
    out, how = Path(cfg.log.out_dir), cfg.train.resume
    if how == "auto":
        return latest_checkpoint(out)
    if how == "never":
        if list_checkpoints(out):
            raise ResumeError(f"{out} already holds checkpoints and train.resume=never: use "
                              "train.resume=auto to continue, or another log.out_dir")
        return None
    return Path(how).expanduser()


def device_of(cfg: Config) -> torch.device:
    d = cfg.train.device
    if d == "auto":
        d = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    return torch.device(d)


def master_dtype(cfg: Config) -> str:
    """The dtype the policy's weights are held in: float32 under mixed precision for full
    fine-tuning; with LoRA the frozen base stays in model.dtype (peft keeps adapters float32)."""
    t = cfg.train
    return "float32" if t.mixed_precision and not t.lora_rank else cfg.model.dtype


def compute_dtype(cfg: Config) -> str | None:
    """The autocast dtype of forward passes, None when weights are used in their own dtype."""
    return cfg.model.dtype if master_dtype(cfg) != cfg.model.dtype else None


def load_policy(cfg: Config, base: Path, ckpt: Path | None, device: torch.device) -> torch.nn.Module:
    """The trainable policy: full weights, or a LoRA adapter over frozen base weights."""
    from transformers import AutoModelForCausalLM

    t, dtype = cfg.train, getattr(torch, master_dtype(cfg))
    if not t.lora_rank:
        return AutoModelForCausalLM.from_pretrained(ckpt / "model" if ckpt else base,
                                                    dtype=dtype).to(device)
    from peft import LoraConfig, PeftModel, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device)
    if ckpt:
        return PeftModel.from_pretrained(model, ckpt / "model", is_trainable=True)
    check_lora_parameters(model, t.lora_target_parameters)
    lcfg = LoraConfig(r=t.lora_rank, lora_alpha=t.lora_alpha, target_modules=t.lora_targets,
                      target_parameters=t.lora_target_parameters or None, lora_dropout=0.0,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def check_lora_parameters(model: torch.nn.Module, targets: list[str]) -> None:
    """Each of ``train.lora_target_parameters`` names a parameter of ``model`` (peft's rule: the
    name, or its dotted suffix); a ConfigError that lists the 3-D candidates otherwise, raised
    when the policy loads, before any engine starts."""
    names = [n for n, _ in model.named_parameters()]
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            fused = sorted({n.split(".layers.")[-1].split(".", 1)[-1]
                            for n, p in model.named_parameters() if p.dim() == 3})
            raise ConfigError(f"train.lora_target_parameters: no parameter of "
                             f"{type(model).__name__} is named {target!r}; its 3-D parameters "
                             f"are {fused or 'none'}")


def make_optimizer(cfg: Config, policy: torch.nn.Module, fused: bool | None = None):
    """AdamW and the learning-rate schedule. ``fused`` (default: when the parameters are on
    CUDA): torch's fused AdamW, one kernel for every parameter with its step counts on the
    device; the default for-each AdamW keeps them on the host and reads each one per step."""
    t = cfg.train
    params = [p for p in policy.parameters() if p.requires_grad]
    if fused is None:
        fused = bool(params) and all(p.device.type == "cuda" for p in params)
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay,
                            fused=True if fused else None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(
        lr_factor, warmup=max(t.warmup_steps, 0), schedule=t.lr_schedule,
        total=t.steps * t.epochs * t.minibatches))
    return opt, sched


def lr_factor(step: int, warmup: int, schedule: str, total: int) -> float:
    """The learning rate's multiplier at optimiser step ``step`` (0-based): linear warm-up over
    ``warmup`` steps, then 1 (``constant``) or a cosine from 1 to 0 at step ``total``.

    >>> [round(lr_factor(s, 2, "cosine", 6), 2) for s in range(6)]
    [0.5, 1.0, 1.0, 0.85, 0.5, 0.15]
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    frac = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def make_reference(cfg: Config, base: Path, device: torch.device):
    if cfg.algo.beta == 0 or cfg.train.lora_rank:
        return None  # no KL, or LoRA: the reference is the adapter switched off
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, cfg.model.dtype))
    return ref.to(device).eval().requires_grad_(False)


def recorder_factory(policy: torch.nn.Module, aux_loss: bool):
    """A function making a routing recorder for MoE policies (router statistics, and the
    router logits when the load-balancing loss is on), else None."""

    try:
        routing.moe_routers(policy)
    except ValueError:
        return None
    return lambda model: routing.RoutingRecorder(model, keep_logits=aux_loss)


def build_trainer(cfg: Config, show_progress: bool = True, teacher: TeacherSignal | None = None) -> GRPOTrainer:
    """The trainer of ``cfg``, resumed if ``train.resume`` says so; ``teacher`` (a
    ``distill.on_policy.Teacher``) makes it an on-policy distillation run."""
    from transformers import AutoTokenizer

    t, r = cfg.train, cfg.rollout
    mp = compute_dtype(cfg)
    parallel = Parallel.from_environment(t.parallel, offload=t.offload,
                                         param_dtype=getattr(torch, mp) if mp else None,
                                         timeout_s=t.dist_timeout_s)
    check_layout(cfg, parallel)
    check_fit(cfg, parallel)
    out = Path(cfg.log.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    route_logs(out, cfg.log.level,
               "train.log" if parallel.is_main else f"train.rank{parallel.rank}.log")
    if t.deterministic:
        # cuBLAS is deterministic only with a fixed workspace, which must be set before CUDA
        # starts (it has not: nothing above touched a GPU); without it the first matmul raises.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device_of(cfg).type == "cuda":  # TF32 for the float32 matmuls autocast leaves
        torch.set_float32_matmul_precision("high")
    ckpt = find_resume(cfg)
    sharded_ckpt = ckpt is not None and is_sharded(ckpt)
    if ckpt is not None and parallel.sharded and not sharded_ckpt:
        raise ConfigError(f"{ckpt} was written by a one-process or ddp run (model/ and a plain "
                          "optimiser state): resume it with train.parallel=ddp or on one "
                          "process; an fsdp2 run resumes from fsdp2 checkpoints")
    problems = load_problems(cfg.data)  # a bad data file fails before any model is loaded
    # The reward workers start now and warm up (imports, the math grader's helper) while the
    # model loads; _start waits for them, so the first step's scoring costs what later ones do.
    scorer = cfg.reward.scorer(r.max_tokens) if scores_here(cfg, parallel) else None
    try:
        torch.manual_seed(t.seed)
        base = resolve_model_path(cfg.model)
        device = device_of(cfg)
        tokenizer = AutoTokenizer.from_pretrained(base)
        check_prompt_lengths(
            [build_prompt(p.question, r.prompt_style, tokenizer) for p in problems],
            tokenizer, r.max_tokens, r.max_model_len)
        # FSDP2: loaded into host memory and moved to the device layer by layer as fully_shard
        # shards it, so no GPU ever holds the whole model. A sharded checkpoint's weights come
        # from its shards, after the optimiser exists.
        load_to = torch.device("cpu") if parallel.sharded else device
        policy = load_policy(cfg, base, None if sharded_ckpt else ckpt, load_to)
        if t.activation_checkpointing:
            policy.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
            if t.share_prompts:
                log.info("train.activation_checkpointing: the shared-prompt pass is off (it "
                         "needs the KV cache that checkpointing turns off)")
        parallel.wrap(policy)  # DDP / FSDP2 root around it on several ranks; nothing on one
        optimizer, scheduler = make_optimizer(cfg, policy)
        if sharded_ckpt:
            load_sharded_state(ckpt, policy, optimizer)
        reference = make_reference(cfg, base, load_to)
        parallel.wrap_frozen(reference)  # FSDP2: sharded like the policy, moved to the device
        if parallel.is_main:
            (out / "config.yaml").write_text(yaml.safe_dump(
                {k: v for k, v in asdict(cfg).items() if k != "source"}, sort_keys=False))
        parts = Parts(
            cfg=cfg, policy=policy, tokenizer=tokenizer, engine=None, scorer=scorer,
            optimizer=optimizer, scheduler=scheduler, data=ProblemStream(problems, t.seed),
            prompt_fn=lambda q: build_prompt(q, r.prompt_style, tokenizer),
            objective=Objective.from_config(cfg.algo, t, r.max_tokens, resolve_mismatch(cfg),
                                            mp),
            reference=reference,
            recorder_fn=recorder_factory(policy, cfg.algo.aux_loss_coef > 0), teacher=teacher,
            parallel=parallel)
    except BaseException:
        if scorer is not None:
            scorer.close()
        raise
    try:
        return _start(parts, base, ckpt, out, show_progress)
    except BaseException:  # nothing left running: the scorer's workers, the engine
        parts.close()
        raise


def scores_here(cfg: Config, parallel: Parallel) -> bool:
    """Whether this rank samples and scores: rank 0, or every rank (``rollout.sample_on``)."""
    return parallel.is_main or cfg.rollout.every_rank_samples(parallel.world)


def check_fit(cfg: Config, parallel: Parallel) -> None:
    """On GPUs (``train.check_fit``): refuse a run the plan says cannot fit this launch's
    devices, before any model loads (``r1kit.plan.launch_refusal``)."""
    device = device_of(cfg)
    if not cfg.train.check_fit or device.type != "cuda":
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", parallel.world))
    why = launch_refusal(cfg, local, max(1, parallel.world // local),
                         torch.cuda.get_device_properties(device).total_memory,
                         torch.cuda.get_device_name(device))
    if why:
        raise ConfigError(why)


def engine_sleeps(cfg: Config) -> bool:
    """Whether the colocated vLLM engine sleeps through each update (``rollout.sleep``)."""
    return cfg.rollout.sleeps(device_of(cfg).type == "cuda", cfg.train.async_steps)


def check_layout(cfg: Config, parallel: Parallel) -> None:
    """Sharding settings this launch cannot honour, refused before anything loads."""
    t = cfg.train
    try:
        engine_sleeps(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if parallel.active and cfg.rollout.engine == "vllm":
        raise ConfigError(f"rollout.engine=vllm with {parallel.world} ranks: the colocated vLLM "
                          "engine would start its own process group beside the trainers' and "
                          "hang; use rollout.engine=vllm_server (its own process) or hf")
    if t.offload and t.parallel != "fsdp2":
        raise ConfigError("train.offload offloads FSDP2 shards: it needs train.parallel=fsdp2")
    if t.offload and not parallel.sharded:
        log.warning("train.offload applies to FSDP2 shards over several ranks; this run has one "
                    "process and keeps its weights on %s", device_of(cfg))
    if t.offload and parallel.sharded and device_of(cfg).type != "cuda":
        raise ConfigError("train.offload moves FSDP2 shards from GPU to CPU memory; this run "
                          "trains on the CPU already: drop train.offload")


def _start(parts: Parts, base: Path, ckpt: Path | None, out: Path, show_progress: bool):
    """Engine, scorer, resumed state, first weight sync, run log."""

    cfg, t, r = parts.cfg, parts.cfg.train, parts.cfg.rollout
    par = parts.parallel
    main = par.is_main  # rank 0 logs and saves; every rank updates
    if scores_here(cfg, par):  # and samples and scores: rank 0, or every rank
        with output_to(out / ("engine.log" if main else f"engine.rank{par.rank}.log")):
            parts.engine = r.start_engine(base, cfg.model.dtype, model=parts.policy,
                                          tokenizer=parts.tokenizer,
                                          record_routing=cfg.algo.routing_replay,
                                          sleep_mode=engine_sleeps(cfg))
        t0 = time.perf_counter()
        if not parts.scorer.warmup():
            log.warning("the reward workers did not finish starting in 120 s; training goes on")
        log.info("reward workers ready (waited %.1f s after the engine started)",
                 time.perf_counter() - t0)
    par.barrier()  # the other ranks wait here, not inside the first rollout's broadcast
    trainer = GRPOTrainer(parts)
    if ckpt is not None:
        state = load_trainer_state(ckpt, par.rank, par.world)
        if state.get("world", 1) != par.world and state.get("sharded"):
            log.warning("%s was written by %d ranks and resumes on %d: the shards are "
                        "redistributed, but the run is not bit-identical to an uninterrupted "
                        "one (RNG states and reduction order differ)", ckpt, state["world"],
                        par.world)
        trainer.load_state_dict(state)
        log.info("resumed from %s at step %d", ckpt, trainer.step)
    if main:
        # Also with no checkpoint: a run killed before its first save left lines for steps it
        # redoes.
        _truncate_metrics(out / "metrics.jsonl", trainer.step)
        truncate_samples(out / "samples.md", trainer.step)
    trainer.push_weights()  # every rank: under FSDP2 the weights are gathered for the engine
    if main:
        parts.runlog = RunLog(out, t.steps, trainer.step, tensorboard=t.tensorboard,
                              wandb=t.wandb, config=asdict(cfg), show_progress=show_progress)
    return trainer


def truncate_samples(path: Path, step: int) -> None:
    r"""Drop the sample tables of steps after ``step`` from ``samples.md`` (a killed run wrote
    them; the resumed run writes them again).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "samples.md"
    >>> _ = p.write_text("```\nstep 5: a\n```\n\n```\nstep 10: b\n```\n\n")
    >>> truncate_samples(p, 7); p.read_text()
    '```\nstep 5: a\n```\n\n'
    """
    if not path.is_file():
        return
    blocks = [b for b in path.read_text().split("```\n\n") if b.strip()]
    keep = [b for b in blocks if int(b.split("step ", 1)[1].split(":", 1)[0]) <= step]
    path.write_text("".join(b + "```\n\n" for b in keep))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines a killed run wrote after the checkpoint it resumes from."""
    if not path.is_file():
        return
    text = path.read_text()
    lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]  # a torn tail
    keep = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def save(trainer: GRPOTrainer, final: bool = False) -> Path | None:
    """A checkpoint of the step just finished. One process or DDP: written by rank 0 (ranks
    hold the same weights and optimiser state), the others wait for it. FSDP2: every rank
    writes its shards, and the gathered ``model/`` folder is exported at the ``final`` step
    and every ``train.export_every`` steps."""
    p, t = trainer.p, trainer.cfg.train
    par = p.parallel
    if par.sharded:
        export = final or bool(t.export_every and trainer.step % t.export_every == 0)
        return save_sharded_checkpoint(trainer.cfg.log.out_dir, trainer.step, p.policy,
                                       p.optimizer, p.tokenizer,
                                       trainer.state_dict(optimizer=False), t.keep_last,
                                       rank=par.rank, world=par.world, export=export)
    path = None
    if par.is_main:
        path = save_checkpoint(trainer.cfg.log.out_dir, trainer.step, p.policy, p.tokenizer,
                               trainer.state_dict(), t.keep_last)
    par.barrier()
    return path


def run_train(cfg: Config, show_progress: bool = True, teacher: TeacherSignal | None = None) -> dict[str, Any]:
    """Train to ``train.steps``; return the last step's metrics and the final checkpoint.
    ``teacher``: on-policy distillation (``r1kit.distillation``), otherwise GRPO."""
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM logs go to engine.log
    trainer = build_trainer(cfg, show_progress, teacher)
    metrics: dict[str, Any] = {}
    last_saved = None
    try:
        while trainer.step < cfg.train.steps:
            metrics = trainer.run_step()
            every, export = cfg.train.save_every, cfg.train.export_every
            if ((every and trainer.step % every == 0) or trainer.step == cfg.train.steps
                    or (export and trainer.p.parallel.sharded and trainer.step % export == 0)):
                last_saved = save(trainer, final=trainer.step == cfg.train.steps)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_line(cfg, trainer.step + 1)) from None
    finally:
        trainer.close()  # rollouts sampled ahead finish before their engine stops
        trainer.p.close()
        trainer.p.parallel.close()
    final = last_saved or latest_checkpoint(cfg.log.out_dir)
    return {"step": trainer.step, "checkpoint": str(final / "model") if final else None,
            "out_dir": str(cfg.log.out_dir), **metrics, "version": trainer.version}


def interrupted_line(cfg: Config, step: int) -> str:
    """Where a run stopped by Ctrl-C during ``step`` (1-based) resumes from."""
    ckpt = latest_checkpoint(cfg.log.out_dir)
    head = f"interrupted at step {step} of {cfg.train.steps}"
    if ckpt is None:
        return f"{head}; no checkpoint was saved yet: re-run the same command to start again"
    how = ("re-run the same command" if cfg.train.resume == "auto"
           else "re-run with train.resume=auto")
    return f"{head}; {how} to resume from {ckpt.name}"


def no_update_problem(result: dict[str, Any]) -> str | None:
    """One line when a finished run never updated the policy (its checkpoint is the starting
    model), else None. ``version`` counts updates over the whole run, resumes included."""
    if result.get("version", 1) > 0:
        return None
    return (f"training made no update in {result['step']} steps: every group had zero reward "
            "variance (all its completions scored the same), so the checkpoint is the starting "
            "model; check the rewards against the completions (samples.md, train.log), or start "
            "from a model that sometimes earns a reward")
