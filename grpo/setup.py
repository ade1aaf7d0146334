"""Assembling a ``GRPOTrainer`` from a recipe, resuming it, and running it: ``r1kit train``.

Order of work, so that errors come before cost: recipe checks (``validate_training``) -> run
folder and resume decision -> policy (from the checkpoint when resuming) -> optimiser and
scheduler state -> reference (beta > 0, full fine-tuning) -> engine -> one weight sync (the
engine samples from exactly the trainer's weights from the first step) -> scorer -> loop.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml

from grpo.checkpoint import latest_checkpoint, list_checkpoints, load_trainer_state, save_checkpoint
from grpo.trainer import GRPOTrainer, Parts, ProblemStream
from grpo.update import Objective

log = logging.getLogger("r1kit.train")


class ResumeError(ValueError):
    """The run folder and ``train.resume`` disagree."""


def resolve_mismatch(cfg: Any) -> str:
    """``algo.mismatch: auto``: sequence-level masking with vLLM samplers, none with HF."""
    if cfg.algo.mismatch != "auto":
        return cfg.algo.mismatch
    return "none" if cfg.rollout.engine == "hf" else "sequence_mask"


def find_resume(cfg: Any) -> Path | None:
    out, how = Path(cfg.log.out_dir), cfg.train.resume
    if how == "auto":
        return latest_checkpoint(out)
    if how == "never":
        if list_checkpoints(out):
            raise ResumeError(f"{out} already holds checkpoints and train.resume=never: use "
                              "train.resume=auto to continue, or another log.out_dir")
        return None
    return Path(how).expanduser()


def device_of(cfg: Any) -> torch.device:
    d = cfg.train.device
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(d)


def load_policy(cfg: Any, base: Path, ckpt: Path | None, device: torch.device) -> torch.nn.Module:
    """The trainable policy: full weights, or a LoRA adapter over frozen base weights."""
    from transformers import AutoModelForCausalLM

    t, dtype = cfg.train, getattr(torch, cfg.model.dtype)
    if not t.lora_rank:
        return AutoModelForCausalLM.from_pretrained(ckpt / "model" if ckpt else base,
                                                    dtype=dtype).to(device)
    from peft import LoraConfig, PeftModel, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device)
    if ckpt:
        return PeftModel.from_pretrained(model, ckpt / "model", is_trainable=True)
    lcfg = LoraConfig(r=t.lora_rank, lora_alpha=t.lora_alpha, target_modules=t.lora_targets,
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def make_optimizer(cfg: Any, policy: torch.nn.Module):
    t = cfg.train
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    warm = max(t.warmup_steps, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    return opt, sched


def make_reference(cfg: Any, base: Path, device: torch.device):
    if cfg.algo.beta == 0 or cfg.train.lora_rank:
        return None  # no KL, or LoRA: the reference is the adapter switched off
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, cfg.model.dtype))
    return ref.to(device).eval().requires_grad_(False)


def recorder_factory(policy: torch.nn.Module, aux_loss: bool):
    """A function making a routing recorder for MoE policies (router statistics, and the
    router logits when the load-balancing loss is on), else None."""
    from grpo import routing

    try:
        routing.moe_routers(policy)
    except ValueError:
        return None
    return lambda model: routing.RoutingRecorder(model, keep_logits=aux_loss)


def num_experts(policy: torch.nn.Module) -> int:
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    c = base.config
    return int(getattr(c, "num_experts", None) or c.n_routed_experts)


def router_metrics(policy: torch.nn.Module, recorded: list) -> dict[str, float]:
    """Router statistics of one update's first epoch: load balance per MoE layer, and the share
    of tokens whose top-k experts changed between the sampler and the update."""
    from grpo import routing

    experts = num_experts(policy)
    per_layer: list[list[torch.Tensor]] = []
    refs: list[list[torch.Tensor]] = []
    valid: list[torch.Tensor] = []
    for rec, mb in recorded:
        topk = rec.calls[-1]  # per MoE layer: (b * T, k)
        per_layer.append(topk)
        valid.append(mb.attention_mask.bool().flatten().cpu())
        if mb.routed is not None:
            refs.append([mb.routed[:, :, layer].reshape(-1, mb.routed.shape[-1]).cpu()
                         for layer in range(mb.routed.shape[2])])
    layers = len(per_layer[0])
    topk = [torch.cat([c[i].cpu() for c in per_layer]) for i in range(layers)]
    mask = torch.cat(valid)
    reference = None
    if len(refs) == len(per_layer):
        reference = [torch.cat([r[i] for r in refs]) for i in range(layers)]
        mask = mask & torch.cat([mb.routed_valid.flatten().cpu() for _, mb in recorded])
    return routing.router_stats(topk, experts, mask, reference)


def build_trainer(cfg: Any, show_progress: bool = True) -> GRPOTrainer:
    from transformers import AutoTokenizer

    from grpo.observe import route_logs
    from r1kit.generate import check_prompt_lengths, load_problems, resolve_model_path
    from rollouts.prompts import build_prompt

    t, r = cfg.train, cfg.rollout
    out = Path(cfg.log.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    route_logs(out, cfg.log.level)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    ckpt = find_resume(cfg)
    problems = load_problems(cfg.data)  # a bad data file fails before any model is loaded
    torch.manual_seed(t.seed)
    base = resolve_model_path(cfg.model)
    device = device_of(cfg)
    tokenizer = AutoTokenizer.from_pretrained(base)
    check_prompt_lengths([build_prompt(p.question, r.prompt_style, tokenizer) for p in problems],
                         tokenizer, r.max_tokens, r.max_model_len)
    policy = load_policy(cfg, base, ckpt, device)
    optimizer, scheduler = make_optimizer(cfg, policy)
    (out / "config.yaml").write_text(yaml.safe_dump(
        {k: v for k, v in asdict(cfg).items() if k != "source"}, sort_keys=False))
    parts = Parts(
        cfg=cfg, policy=policy, tokenizer=tokenizer, engine=None, scorer=None,
        optimizer=optimizer, scheduler=scheduler, data=ProblemStream(problems, t.seed),
        prompt_fn=lambda q: build_prompt(q, r.prompt_style, tokenizer),
        objective=Objective.from_config(cfg.algo, t, r.max_tokens, resolve_mismatch(cfg)),
        reference=make_reference(cfg, base, device),
        recorder_fn=recorder_factory(policy, cfg.algo.aux_loss_coef > 0))
    try:
        return _start(parts, base, ckpt, out, show_progress)
    except BaseException:  # nothing left running: the scorer's workers, the engine
        for held in (parts.scorer, parts.engine):
            if held is not None:
                held.close()
        raise


def _start(parts: Parts, base: Path, ckpt: Path | None, out: Path, show_progress: bool):
    """Engine, scorer, resumed state, first weight sync, run log."""
    from grpo.observe import RunLog, output_to
    from r1kit.config import reward_specs
    from rewards.scorer import Scorer
    from rollouts.factory import make_engine

    cfg, t, r = parts.cfg, parts.cfg.train, parts.cfg.rollout
    with output_to(out / "engine.log"):
        parts.engine = make_engine(
            r.engine, base, dtype=cfg.model.dtype, max_model_len=r.max_model_len, seed=r.seed,
            gpu_memory_utilization=r.gpu_memory_utilization, batch_size=r.batch_size,
            model=parts.policy, tokenizer=parts.tokenizer,
            record_routing=cfg.algo.routing_replay)
    parts.scorer = Scorer(reward_specs(cfg), workers=cfg.reward.workers,
                          timeout_s=cfg.reward.timeout_s)
    trainer = GRPOTrainer(parts)
    if ckpt is not None:
        trainer.load_state_dict(load_trainer_state(ckpt))
        log.info("resumed from %s at step %d", ckpt, trainer.step)
    # Also with no checkpoint: a run killed before its first save left lines for steps it redoes.
    _truncate_metrics(out / "metrics.jsonl", trainer.step)
    parts.engine.update_weights(parts.policy)
    parts.runlog = RunLog(out, t.steps, trainer.step, tensorboard=t.tensorboard, wandb=t.wandb,
                          config=asdict(cfg), show_progress=show_progress)
    return trainer


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines a killed run wrote after the checkpoint it resumes from."""
    if not path.is_file():
        return
    text = path.read_text()
    lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]  # a torn tail
    keep = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def save(trainer: GRPOTrainer) -> Path:
    p, t = trainer.p, trainer.cfg.train
    return save_checkpoint(trainer.cfg.log.out_dir, trainer.step, p.policy, p.tokenizer,
                           trainer.state_dict(), t.keep_last)


def run_train(cfg: Any, show_progress: bool = True) -> dict[str, Any]:
    """Train to ``train.steps``; return the last step's metrics and the final checkpoint."""
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM logs go to engine.log
    trainer = build_trainer(cfg, show_progress)
    metrics: dict[str, Any] = {}
    last_saved = None
    try:
        while trainer.step < cfg.train.steps:
            metrics = trainer.run_step()
            every = cfg.train.save_every
            if (every and trainer.step % every == 0) or trainer.step == cfg.train.steps:
                last_saved = save(trainer)
    finally:
        trainer.p.runlog.close()
        trainer.p.scorer.close()
        trainer.p.engine.close()
    final = last_saved or latest_checkpoint(cfg.log.out_dir)
    return {"step": trainer.step, "checkpoint": str(final / "model") if final else None,
            "out_dir": str(cfg.log.out_dir), **metrics}
