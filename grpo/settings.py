"""The ``algo`` and ``train`` sections of a recipe: what the trainer reads.

The field docs are what ``r1kit <command> --help`` prints (``r1kit.config`` composes the sections).
``algo`` becomes an ``Objective`` in one place (``grpo.update.Objective.from_config``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class AlgoConfig:
    """The GRPO objective. Defaults follow today's de-facto recipe (DAPO + Dr. GRPO findings):
    token-level aggregation, no KL, clip-higher, zero-variance groups filtered, truncated
    completions masked. Every name is an entry of a table in ``grpo/losses.py``."""

    advantage: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = "grpo"
    """Advantage estimator: group mean and std (``grpo``, DeepSeekMath), group mean only
    (``dr_grpo``), leave-one-out mean (``rloo``), batch-normalised (``reinforce_pp``), or the
    group mean subtracted, then whitened over the batch (``reinforce_pp_baseline``, OpenRLHF)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """What centred rewards are divided by: the group's std (GRPO), the batch's std (more robust
    on small groups), or nothing (Dr. GRPO: the std re-weights questions by difficulty)."""
    policy_loss: Literal["ppo_clip", "dual_clip", "gspo", "cispo"] = "ppo_clip"
    """Surrogate: PPO-clip per token, dual-clip, GSPO (one clipped ratio per sequence: set
    ``clip_low/clip_high`` near 3e-4/4e-4), or CISPO (clipped, stop-gradient IS weight)."""
    aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = (
        "token_mean")
    """How per-token losses become one number: over all tokens of the batch (DAPO: long
    answers are not down-weighted), per sequence then per batch (GRPO), or token sum over
    sequences x rollout.max_tokens (Dr. GRPO: no length bias)."""
    clip_low: float = 0.2
    """The ratio is clipped below at 1 - clip_low (PPO's 0.2)."""
    clip_high: float = 0.28
    """The ratio is clipped above at 1 + clip_high; DAPO's clip-higher (0.28) leaves room for
    unlikely tokens to grow, which keeps entropy from collapsing."""
    dual_clip: float = 3.0
    """Dual-clip bound c > 1 for negative advantages (``policy_loss: dual_clip`` only)."""
    beta: float = 0.0
    """KL coefficient to the reference policy. 0 (DAPO, Dr. GRPO) loads no reference model:
    with verifiable rewards the KL term mostly slows learning."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator (Schulman 2020): k3 is unbiased and non-negative (DeepSeekMath's choice)."""
    kl_in: Literal["loss", "reward"] = "loss"
    """Where the KL goes: a per-token loss term (GRPO) or subtracted from each sequence's
    reward before advantages (PPO-RLHF style)."""
    entropy_coef: float = 0.0
    """Entropy bonus per token (0 = entropy is only logged)."""
    filter_zero_variance: bool = True
    """DAPO dynamic sampling: drop groups whose rewards are all equal (zero advantage, no
    signal) and sample more prompts to refill the batch."""
    max_refills: int = 3
    """Most extra sampling rounds per step for dynamic sampling; after them the step trains on
    the groups it has (logged)."""
    mask_truncated: bool = True
    """DAPO overlong filtering: completions that hit rollout.max_tokens get no loss (their
    reward judges an unfinished answer)."""
    truncated_reward: float | None = None
    """A completion that hit rollout.max_tokens gets this total reward instead of its rewards'
    (Dr. GRPO's Oat-Zero: 0); None scores its text like any other. The per-reward metrics
    still show what its text scored."""
    mismatch: Literal["auto", "none", "token_truncate", "token_mask", "sequence_truncate",
                      "sequence_mask", "icepop"] = "auto"
    """Train/inference mismatch correction from the sampler's log-probs. ``auto``:
    ``sequence_mask`` when the engine is vLLM (its kernels differ from the trainer's), ``none``
    with the HF engine (same kernels: the sampler is the trainer)."""
    mismatch_cap: float = 2.0
    """Upper threshold of the sampler/trainer importance weight (truncate or mask above it)."""
    mismatch_low: float = 0.5
    """Lower edge of IcePop's two-sided band (its paper uses [0.5, 2])."""
    routing_replay: bool = False
    """R3 routing replay: the update routes each token to the experts the sampler chose (gate
    weights still from the live router). Needs an engine that reports routing (HF here)."""
    aux_loss_coef: float = 0.0
    """Router load-balancing loss coefficient. Off: RL batches are small and skewed, and the
    aux loss fights the reward; routing replay keeps routing stable instead."""


@dataclass
class TrainConfig:
    """The training loop: batch shape, optimiser, checkpoints."""

    steps: int = 20
    """Training steps (each: rollout, score, advantages, update, sync)."""
    prompts_per_step: int = 4
    """Groups per step (prompts); each has rollout.n completions."""
    epochs: int = 1
    """Update epochs per rollout batch (PPO's mu); > 1 re-uses samples off-policy."""
    minibatches: int = 1
    """Optimiser steps per epoch; the batch is split into this many minibatches."""
    token_budget: int = 8192
    """Most tokens (rows x padded length) per forward micro-batch; gradients accumulate."""
    share_prompts: bool = True
    """Rows of a forward micro-batch that share a prompt (a group's samples) run it once: a
    prompt pass fills a KV cache that the completions then attend to, in the update and in the
    old, reference and teacher log-probs (``grpo.logprobs.completion_hidden``). Equal results to
    float rounding, for fewer tokens through the model (a group of n: 1 prompt + n completions
    instead of n of each). Used with the model types in ``grpo.logprobs.SHARED_PROMPT_MODELS``
    with full attention in every layer, without gradient checkpointing, when routing is not
    replayed; otherwise, or when off, one pass. With ``algo.aux_loss_coef`` the balance loss
    is computed from the two passes' routing merged into the one pass's layout (equal loss and
    gradients, ``tests/test_logprobs.py``).
    Micro-batches are still planned by padded length, so a group split across micro-batches
    shares within each part only. (The HF engine's prefill shares a repeated prompt whatever
    this says: its samples are the same bit for bit.)"""
    logprob_chunk: int = 256
    """Completion tokens per chunk of the LM head: peak logits memory is a few chunk x vocab
    fp32 buffers (256 x 151,936 x 4 B = 156 MB each); larger chunks launch fewer kernels."""
    lr: float = 1e-6
    """AdamW learning rate (1e-6 is the usual full fine-tuning value for 7B+ models)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up, in optimiser steps."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """After the warm-up: ``constant`` (the RL recipes' usual choice: later steps learn from new
    samples as much as early ones), or ``cosine`` decay to 0 at the last optimiser step
    (``steps x epochs x minibatches``), as supervised fine-tuning does."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 disables."""
    mixed_precision: bool = True
    """With model.dtype bfloat16/float16: keep float32 master weights and AdamW state and run
    forward/backward under autocast in model.dtype (standard mixed precision; engines still
    get model.dtype weights). Off: train the model.dtype weights directly, half the weight
    memory, but updates below the dtype's resolution (bf16: ~3 significant digits, so most
    lr 1e-6 steps) are lost. No effect with float32."""
    lora_rank: int = 0
    """LoRA rank; 0 trains all weights. With LoRA the reference model is the adapter off."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_targets: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names LoRA wraps."""
    lora_target_parameters: list[str] = field(default_factory=list)
    """Parameter names LoRA also wraps (peft's ``target_parameters``): transformers 5 keeps MoE
    experts as fused 3-D parameters, not modules, so adapting them takes this, e.g.
    ``[mlp.experts.gate_up_proj, mlp.experts.down_proj]`` for Qwen3-MoE and DeepSeek-V3. Each
    expert gets its own rank-r pair. Empty: modules only."""
    seed: int = 0
    """Seed of initialisation-time randomness, data order and sampling."""
    deterministic: bool = False
    """torch deterministic algorithms: bit-identical runs and resumes on CPU (with the same
    thread count; tests/test_resume.py kills runs with SIGKILL and compares weights)."""
    device: str = "auto"
    """``auto`` (cuda if available; under a multi-process launch each rank takes
    ``cuda:LOCAL_RANK``), ``cpu`` or ``cuda[:i]``."""
    async_steps: int = 0
    """One-step-off-policy pipelining: 0 samples each step's rollout and then trains on it; k >= 1
    starts the rollouts of the next k steps on the engine (which still holds the current
    weights) while this step trains, so a sample is at most k policy versions old (logged as
    ``staleness``; the mismatch correction weighs it by its sampler's log-probs). Needs
    ``rollout.engine=vllm_server`` (the sampler runs in its own process; the HF engine samples
    with the policy itself). Rollouts sampled ahead are saved in checkpoints: a resume trains on
    exactly them."""
    parallel: Literal["ddp", "fsdp2"] = "ddp"
    """Under ``accelerate launch`` / ``torchrun`` with more than one process: ``ddp`` (every rank
    holds the whole policy and optimiser; gradients are all-reduced), or ``fsdp2`` (weights,
    gradients, optimiser state and the KL reference sharded per decoder layer; checkpoints are
    ``torch.distributed.checkpoint`` shards, ``train.export_every``). Either way an update
    equals the one-process update with the same global batch (``grpo/parallel.py``,
    ``tests/test_parallel.py``). Ignored on one process."""
    check_fit: bool = True
    """On GPUs: before loading anything, refuse a run that ``r1kit plan`` says cannot fit the
    devices this launch sees (one line: the plan's figure and the smallest change that fits).
    The plan is an estimate; false starts anyway."""
    dist_timeout_s: float = 7200.0
    """Under several ranks: how long a collective may wait before the process group gives up
    (``init_process_group(timeout=...)``). Ranks wait while rank 0 starts the engine, samples
    the whole step and saves (minutes on a 7B model), so the default is two hours, not NCCL's
    ten minutes."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them
    (transformers' gradient checkpointing, non-reentrant): activation memory of one layer, not
    all of them, for about a third more update time. Turns the shared-prompt pass off (it needs
    the cache that checkpointing disables)."""
    offload: bool = False
    """``fsdp2`` on GPUs only: keep the sharded parameters, gradients and AdamW state in CPU
    memory (``CPUOffloadPolicy``; the optimiser step runs on the CPU), for models whose shards
    do not fit beside the engine. Slower: every layer is copied to the GPU in each pass."""
    export_every: int = 0
    """``fsdp2``: a checkpoint holds each rank's shards, which only r1kit resumes from; every
    k steps (a checkpoint is then written whatever ``save_every`` says) and always at the end it
    also holds the gathered ``model/`` folder that transformers and vLLM open. 0: at the end
    only. (``ddp`` and one process write ``model/`` in every checkpoint.)"""
    save_every: int = 10
    """Checkpoint every k steps (and at the end); 0 saves only at the end."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted after a new one is complete."""
    resume: str = "auto"
    """``auto``: continue from the newest checkpoint in log.out_dir if there is one; ``never``:
    refuse to start if checkpoints exist; or a checkpoint folder."""
    sample_every: int = 5
    """Print a table of sample completions every k steps (0: never)."""
    tensorboard: bool = True
    """Write TensorBoard events to log.out_dir/tb."""
    wandb: bool = False
    """Also log to Weights & Biases (needs ``wandb`` installed and logged in)."""
