"""The per-GPU memory and step time of a recipe on a layout: the model ``r1kit plan`` runs.

Every number is an estimate from the constants below and the architecture's counts
(``r1kit/footprint.py``); nothing is measured here. ``tests/test_plan_memory.py`` measures the
trainer's part (``update_memory``) on CPU against FSDP2 on 1 and 2 ranks.

What one GPU holds during an update (``update_memory``; the peak is what is held throughout plus
the larger of the two phases, since the optimiser step runs after the last micro-batch's
activations are freed, ``PHASES``, ``phase_bytes``):

- held throughout: the trainer's weights (float32 masters for full fine-tuning under
  ``train.mixed_precision``, else ``model.dtype``; LoRA: the frozen base in ``model.dtype`` plus
  the adapter in float32, as peft keeps it), AdamW's two moments (``zeros_like`` each trainable
  parameter), the KL reference (``algo.beta > 0`` with full fine-tuning, in ``model.dtype``;
  LoRA's reference is the adapter switched off), and the rollout engine. Under FSDP2 the first
  three are divided by the ranks; with ``train.offload`` (``CPUOffloadPolicy``) they, and the
  gradient shards, live in host memory instead (counted per node, against ``GPU.host_gb``).
- a micro-batch's forward and backward: its activations (``r1kit/footprint.py``) for
  ``train.token_budget`` tokens (a rank's rows if fewer), which the backward frees layer by layer
  while it fills the gradients, so the larger of the activations at its start and, at its end,
  the gradients it created (a lone micro-batch's; a later one adds into existing ones) plus the
  layer a checkpointed backward recomputes; the LM head's ``LOGIT_BUFFERS`` float32
  ``(train.logprob_chunk, vocab)`` buffers (``grpo/logprobs.py``); the gradients of earlier
  micro-batches when a rank runs more than one per optimiser step; and the weights in the
  compute dtype. Under FSDP2: the root's parameters (embeddings, final norm, LM head: FSDP2 does
  not reshard the root after forward) and ``GATHERED_LAYERS`` decoder layers (the one computing,
  the one prefetched) gathered in the compute dtype (``model.dtype`` under mixed precision), plus
  one layer's reduce-scatter buffer in the reduce dtype (float32 under mixed precision).
  Unsharded, mixed precision keeps autocast's ``model.dtype`` copy of every weight a matmul uses
  (saved for the backward pass).
- the optimiser step: the gradients and, on GPUs, AdamW's foreach temporaries (one
  parameter-sized tensor: ``torch.optim.adamw._multi_tensor_adamw``'s ``exp_avg_sq_sqrt``); on
  CPU the step runs tensor by tensor (the largest one's worth).

Gradients under FSDP2: ``Parallel.sync_context`` (``grpo/parallel.py``) reduce-scatters them after
every micro-batch (``FSDP2_REDUCES_EVERY_MICRO_BATCH``), so a rank accumulates only its shard.
Were the reduction skipped until a minibatch's last micro-batch, FSDP2 would keep every layer's
gradient unsharded, in the reduce dtype (``FSDPParam.to_accumulated_grad_if_needed``): the whole
model's gradient per rank; the model still counts that case (the constant False). Micro-batches per rank per optimiser step: the
minibatch's rows (``prompts_per_step x n / minibatches``) divided over the ranks,
``token_budget // max_model_len`` full-length rows per micro-batch (``Layout``).

The rollout engine: the vLLM engines (colocated or server, no sleep mode during training) hold
``rollout.gpu_memory_utilization`` of every GPU for their weights (``1 / engine_tp`` of them),
KV cache and workspace throughout; KV heads are split over the ``engine_tp`` GPUs of a replica
(replicated where there are fewer KV heads than GPUs; MLA's latent is on every GPU); vLLM does
not start unless the KV space left holds one ``rollout.max_model_len`` sequence. The HF engine
holds a dynamic KV cache for ``rollout.batch_size`` sequences only while sampling, when no
update runs (so the peak counts the larger of the two).

Not counted: the CUDA context and allocator fragmentation (~1 to 3 GiB), vLLM's activation
workspace and CUDA graphs inside its reservation, the KL reference's own forward (a separate
phase without gradients, below the update's peak), the weight sync (the root and about three
layers' bytes, ``r1kit bench sync``: after the update's activations are freed, below its peak),
MoE routing records, and
start-up: today ``r1kit/train.py`` loads the whole policy (and reference) onto each GPU before
sharding it.

The step-time model (replicas = ranks / ``engine_tp`` engines each sample their share of the
sequences; every sequence is counted at full length, prompt ``rollout.max_model_len -
rollout.max_tokens`` then ``rollout.max_tokens`` completion tokens, so times are upper bounds on
work and lower bounds on achieved speed):

- generation = prefill (2 x active params x prompt tokens FLOPs at ``mfu`` x peak, split over
  the replica's GPUs) + decode, which is memory-bound: each decoding step reads the weights the
  batch touches (an MoE layer's experts that at least one of the batch's tokens routes to,
  routing taken as uniform; ``1 / engine_tp`` of them per GPU) and the KV cache so far, at peak
  HBM bandwidth; the roofline takes the larger of that and the step's FLOPs. When the KV cache
  does not hold every sequence at once, sequences run in waves. Tensor parallelism's all-reduces
  are not modelled. Today r1kit samples on rank 0 only (``grpo/parallel.py``): generation then
  takes replicas x longer. None when vLLM would not start.
- log-probs = 2 x active params x tokens FLOPs per forward pass: one for the reference
  (``algo.beta > 0``) and one for the rollout policy's log-probs (``train.epochs`` or
  ``train.minibatches`` > 1), each rank over its share of the rows (today every rank runs them
  over every row: ranks x longer).
- update = 6 x active params x tokens FLOPs per epoch (forward 2, backward 4: Kaplan et al. 2020;
  LoRA skips the weight gradients of frozen weights: 4), + 2 with activation checkpointing (the
  forward again).
- offload: each micro-batch copies the rank's parameter shards to the GPU twice (forward,
  backward) and each reduction its gradient shards back, over PCIe; AdamW runs on the CPU,
  memory-bound: ``CPU_ADAMW_BYTES`` per parameter at ``GPU.host_gb_s`` shared by the node's ranks.
- sync = the weights' bytes: gathered over NVLink (the network across nodes) under FSDP2, then
  copied into the colocated engine (read + write in HBM, ``1 / engine_tp`` per GPU) or written to
  ``/dev/shm`` and read by the server (twice over PCIe); 0 with the HF engine.

Not modelled: attention's quadratic FLOPs, FSDP/DDP communication during the update (assumed
overlapped), reward scoring, dynamic-sampling refills, Python and kernel-launch overhead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from r1kit.config import Config
from r1kit.footprint import Counts, activation_bytes, kv_elements_per_token, kv_shards

GIB = 2**30


# -- every constant of the model, with where it comes from -----------------------------------
@dataclass(frozen=True)
class GPU:
    memory_gib: float
    """Total memory as nvidia-smi reports it (MiB / 1024)."""
    bf16_tflops: float
    """Dense bf16/fp16 tensor-core peak (the datasheet's figure without sparsity)."""
    fp32_tflops: float
    """Plain fp32 peak: PyTorch leaves TF32 matmuls off by default and r1kit does not turn them
    on, so a float32 policy runs at this rate."""
    hbm_tb_s: float
    """HBM bandwidth."""
    nvlink_gb_s: float
    """NVLink bandwidth per direction (half the datasheet's bidirectional total)."""
    pcie_gb_s: float
    """PCIe x16 bandwidth per direction (Gen5: 64 GB/s, Gen4: 32 GB/s)."""
    host_gb: float
    """System memory of the node (the DGX system of this GPU), for offloaded shards."""
    host_gb_s: float
    """System memory bandwidth of the node (its CPUs' DDR channels), for the offloaded AdamW."""


# NVIDIA datasheets: H100 SXM5 80GB, H200 SXM 141GB, A100 SXM4 80GB / 40GB; DGX H100/H200: 2 TB,
# 2 x Xeon 8480C (8 DDR5-4800 channels each: 2 x 307 GB/s); DGX A100: 1 TB (40GB) / 2 TB (80GB),
# 2 x EPYC 7742 (8 DDR4-3200 channels each: 2 x 205 GB/s).
GPUS: dict[str, GPU] = {
    "h100": GPU(memory_gib=81559 / 1024, bf16_tflops=989, fp32_tflops=67, hbm_tb_s=3.35,
                nvlink_gb_s=450, pcie_gb_s=64, host_gb=2000, host_gb_s=614),
    "h200": GPU(memory_gib=143771 / 1024, bf16_tflops=989, fp32_tflops=67, hbm_tb_s=4.8,
                nvlink_gb_s=450, pcie_gb_s=64, host_gb=2000, host_gb_s=614),
    "a100_80g": GPU(memory_gib=81920 / 1024, bf16_tflops=312, fp32_tflops=19.5, hbm_tb_s=2.039,
                    nvlink_gb_s=300, pcie_gb_s=32, host_gb=2000, host_gb_s=410),
    "a100_40g": GPU(memory_gib=40960 / 1024, bf16_tflops=312, fp32_tflops=19.5, hbm_tb_s=1.555,
                    nvlink_gb_s=300, pcie_gb_s=32, host_gb=1000, host_gb_s=410),
}
NETWORK_GB_S = 50  # per GPU across nodes: one 400 Gb/s InfiniBand NDR adapter per GPU (DGX H100)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LORA_BYTES = 4  # peft keeps adapters in float32 (autocast_adapter_dtype=True)
ADAM_MOMENTS = 2  # exp_avg and exp_avg_sq, each the size and dtype of its parameter
FSDP2_REDUCES_EVERY_MICRO_BATCH = True
"""What ``grpo/parallel.py:Parallel.sync_context`` does under FSDP2: True, gradients are
reduce-scattered after every micro-batch (a rank accumulates only its shard)."""
GATHERED_LAYERS = 2  # FSDP2: the layer computing and the one prefetched (forward and backward)
# float32 (chunk, vocab) buffers alive at once in the chunked LM head (grpo/logprobs.py:_head_chunk):
# logits, softmax and their product in the forward, and the logits' gradient in the backward.
LOGIT_BUFFERS = 4
FWD_FLOPS, TRAIN_FLOPS, LORA_TRAIN_FLOPS = 2, 6, 4  # per active parameter per token
CPU_ADAMW_BYTES = 28  # float32 AdamW on the CPU: read param, grad, 2 moments; write 3 (7 x 4 B)


# -- the trainer's memory ---------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How the recipe's trainer runs on the planned GPUs."""

    ranks: int
    sharded: bool
    """FSDP2 over more than one rank."""
    offload: bool
    """Shards in host memory (FSDP2 only)."""
    micro_batches: int
    """Micro-batches per rank per optimiser step."""
    tokens: int
    """Tokens of one micro-batch."""

    @staticmethod
    def of(cfg: Config, ranks: int) -> Layout:
        t, r = cfg.train, cfg.rollout
        sharded = ranks > 1 and t.parallel == "fsdp2"
        rows = math.ceil(math.ceil(t.prompts_per_step * r.n / t.minibatches) / ranks)
        per_micro = max(1, t.token_budget // r.max_model_len)
        return Layout(ranks, sharded, sharded and t.offload, math.ceil(rows / per_micro),
                      min(t.token_budget, rows * r.max_model_len))


def update_memory(cfg: Config, arch, c: Counts, layout: Layout, device: str = "cuda",
                  padded: bool = True) -> dict[str, float]:
    """Bytes of one rank's update on its GPU, part by part (the keys of ``PHASES``), and the
    host memory its offloaded shards take (``host``). ``device``: ``cpu`` for a CPU run (AdamW
    then steps tensor by tensor). ``padded``: see ``activation_bytes``."""
    t = cfg.train
    wb = DTYPE_BYTES[cfg.model.dtype]
    full = not t.lora_rank
    mb = 4 if t.mixed_precision and full else wb  # the policy's dtype (r1kit/train.py)
    cb = wb if full and t.mixed_precision else mb  # compute dtype: FSDP2's param_dtype
    trainable, tb = (c.total, mb) if full else (c.lora, LORA_BYTES)
    n = layout.ranks if layout.sharded else 1
    weights = (c.total * mb + c.lora * LORA_BYTES) / n
    optimizer = ADAM_MOMENTS * trainable * tb / n
    reference = c.total * wb / n if cfg.algo.beta > 0 and full else 0.0
    grads = trainable * tb / n
    if layout.sharded:
        compute = (c.root + GATHERED_LAYERS * c.layer_max) * cb \
            + GATHERED_LAYERS * c.lora_layer_max * LORA_BYTES
        rb = 4 if full and t.mixed_precision else tb  # reduce dtype
        layer_grads = (c.layer_max if full else c.lora_layer_max) * rb
        accum = grads if FSDP2_REDUCES_EVERY_MICRO_BATCH else trainable * rb
    else:
        # autocast's model.dtype copy of each matmul weight, saved for the backward pass
        compute = (c.total - (0 if c.tied else c.embedding)) * cb if cb != mb else 0.0
        layer_grads, accum = 0.0, grads
    host = 0.0
    if layout.offload:  # shards in (pinned) host memory; the optimiser step runs there
        host = weights + optimizer + reference + grads
        weights = optimizer = reference = grads = 0.0
        if FSDP2_REDUCES_EVERY_MICRO_BATCH:
            accum = 0.0  # reduced shards accumulate on the host
    step_temp = 0.0 if layout.offload else (
        trainable * tb / n if device == "cuda" else min(c.largest, trainable) * tb / n)
    acts = activation_bytes(arch, cb, padded)
    accumulating = layout.micro_batches > 1
    return {
        "weights": weights, "optimizer": optimizer, "reference": reference,
        "gathered": compute, "grad_accum": accum if accumulating else 0.0,
        "reduce": layer_grads, "lm_head": t.logprob_chunk * arch.vocab_size * 4 * LOGIT_BUFFERS,
        "activations": acts.kept(layout.tokens, t.activation_checkpointing),
        # a lone micro-batch's backward fills the gradients as it frees activations
        "grad_new": (0.0 if accumulating else grads)
        + (acts.recomputed(layout.tokens) if t.activation_checkpointing else 0.0),
        "gradients": grads, "step_temp": step_temp, "host": host,
    }


PHASES = {
    "held": ("weights", "optimizer", "reference", "kv_cache"),
    "pass": ("gathered", "grad_accum", "reduce", "lm_head", "activations", "grad_new"),
    "step": ("gradients", "step_temp"),
}
"""Memory held through the update, during a micro-batch's forward and backward, and during the
optimiser step (``phase_bytes``)."""


def phase_bytes(memory: dict[str, float]) -> dict[str, float]:
    """Bytes of each phase of ``memory`` (``update_memory``'s parts, plus ``kv_cache``). The
    pass's last two parts are the start and the end of its backward: the activations, or the
    gradients the backward has filled as it freed them (plus, with checkpointing, the layer it
    recomputes); the larger counts."""
    pass_ = sum(memory[k] for k in PHASES["pass"][:-2])
    return {"held": sum(memory[k] for k in PHASES["held"]),
            "pass": pass_ + max(memory["activations"], memory["grad_new"]),
            "step": sum(memory[k] for k in PHASES["step"])}


def peak_bytes(memory: dict[str, float], hf_engine: bool = False) -> float:
    """The peak of ``memory``: held + the larger phase; the HF engine's cache exists only while
    sampling, when neither phase runs."""
    phases = phase_bytes(memory)
    work = max(phases["pass"], phases["step"])
    if hf_engine:
        return phases["held"] - memory["kv_cache"] + max(work, memory["kv_cache"])
    return phases["held"] + work


# -- the engine, the whole GPU, the step time ------------------------------------------------
def _engine(cfg: Config, arch, c: Counts, ranks: int) -> dict[str, Any]:
    """The engine's memory per GPU: its reservation or cache, and what its KV cache needs."""
    p, t, r = cfg.plan, cfg.train, cfg.rollout
    wb = DTYPE_BYTES[cfg.model.dtype]
    total_kv = kv_elements_per_token(arch) * wb
    seqs_all = t.prompts_per_step * r.n
    if r.engine == "hf":  # a dynamic cache for one generate batch, only while sampling
        seqs = min(r.batch_size, math.ceil(seqs_all / ranks))
        needed = seqs * r.max_model_len * total_kv
        return {"bytes_per_token": total_kv, "sequences": seqs, "needed": needed,
                "space": needed, "covers": True, "starts": True, "memory": needed,
                "tp": 1, "replicas": ranks}
    tp = p.engine_tp
    per_token = total_kv / kv_shards(arch, tp)
    seqs = math.ceil(seqs_all / (ranks // tp))  # sequences per replica
    reservation = r.gpu_memory_utilization * GPUS[p.gpu].memory_gib * GIB
    space = reservation - c.total * wb / tp  # vLLM's reservation holds its weights, then KV
    return {"bytes_per_token": per_token, "sequences": seqs,
            "needed": seqs * r.max_model_len * per_token, "space": space,
            "covers": space >= seqs * r.max_model_len * per_token,
            "starts": space >= r.max_model_len * per_token, "memory": reservation,
            "tp": tp, "replicas": ranks // tp}


def memory_plan(cfg: Config, arch, c: Counts) -> dict[str, Any]:
    """Per-GPU memory of ``cfg`` on its planned layout, and whether it fits."""
    p = cfg.plan
    ranks = p.gpus * p.nodes
    layout = Layout.of(cfg, ranks)
    parts = update_memory(cfg, arch, c, layout)
    host = parts.pop("host") * p.gpus
    kv = _engine(cfg, arch, c, ranks)
    memory = {k: parts[k] for k in ("weights", "optimizer", "reference")}
    memory["kv_cache"] = kv.pop("memory")
    memory.update((k, v) for k, v in parts.items() if k not in memory)
    gpu = GPUS[p.gpu]
    peak = peak_bytes(memory, cfg.rollout.engine == "hf")
    return {"layout": layout, "memory": memory, "total": peak, "kv": kv, "host": host,
            "gpu_memory": gpu.memory_gib * GIB, "host_memory": gpu.host_gb * 1e9,
            "fits": (peak <= gpu.memory_gib * GIB and kv["starts"]
                     and host <= gpu.host_gb * 1e9)}


def step_time(cfg: Config, arch, c: Counts, kv: dict[str, Any], layout: Layout
              ) -> dict[str, Any]:
    """Seconds of one GRPO step's parts (the module docstring); ``generation`` (and ``total``)
    None when vLLM would not start."""
    p, t, r, a = cfg.plan, cfg.train, cfg.rollout, cfg.algo
    gpu, wb = GPUS[p.gpu], DTYPE_BYTES[cfg.model.dtype]
    flops_s = (gpu.bf16_tflops if wb == 2 else gpu.fp32_tflops) * 1e12 * p.mfu
    hbm = gpu.hbm_tb_s * 1e12
    tp, seqs_all = kv["tp"], t.prompts_per_step * r.n
    seqs = seqs_all / kv["replicas"]  # sequences per engine replica
    prompt, gen = r.max_model_len - r.max_tokens, r.max_tokens
    tokens = seqs_all / layout.ranks * r.max_model_len  # trained per rank
    generation: float | None = None
    waves: int | None = None
    if kv["starts"]:  # prefill (compute), then decode in waves of what the KV cache holds
        prefill = FWD_FLOPS * c.matmul_active * seqs * prompt / (flops_s * tp)
        waves = (math.ceil(seqs / r.batch_size) if r.engine == "hf"
                 else math.ceil(kv["needed"] / kv["space"]))
        batch = seqs / waves
        touched = 1 - (1 - c.active_frac) ** batch if c.routed else 1.0  # experts hit per step
        weight_read = gen * (c.matmul_dense + c.routed * touched) * wb / tp
        kv_read = batch * gen * (prompt + gen / 2) * kv["bytes_per_token"]
        decode_flops = FWD_FLOPS * c.matmul_active * batch * gen / tp
        generation = prefill + waves * max((weight_read + kv_read) / hbm,
                                           decode_flops / flops_s)
    passes = (a.beta > 0) + (t.epochs > 1 or t.minibatches > 1)
    per_token = (LORA_TRAIN_FLOPS if t.lora_rank else TRAIN_FLOPS) \
        + (FWD_FLOPS if t.activation_checkpointing else 0)
    time: dict[str, Any] = {
        "generation": generation,
        "logprobs": passes * FWD_FLOPS * c.matmul_active * tokens / flops_s,
        "update": t.epochs * per_token * c.matmul_active * tokens / flops_s,
        "offload": _offload_time(cfg, c, layout) if layout.offload else 0.0,
        "sync": _sync_time(cfg, c, layout, tp),
    }
    time["total"] = None if generation is None else sum(time.values())
    time["decode_waves"] = waves
    return time


def _offload_time(cfg: Config, c: Counts, layout: Layout) -> float:
    t, gpu = cfg.train, GPUS[cfg.plan.gpu]
    full = not t.lora_rank
    mb = 4 if t.mixed_precision and full else DTYPE_BYTES[cfg.model.dtype]
    trainable, tb = (c.total, mb) if full else (c.lora, LORA_BYTES)
    shards = (c.total * mb + c.lora * LORA_BYTES) / layout.ranks
    steps = t.epochs * t.minibatches
    reductions = steps * (layout.micro_batches if FSDP2_REDUCES_EVERY_MICRO_BATCH else 1)
    copies = 2 * steps * layout.micro_batches * shards + reductions * trainable * tb / layout.ranks
    adamw = steps * trainable / layout.ranks * CPU_ADAMW_BYTES \
        / (gpu.host_gb_s * 1e9 / cfg.plan.gpus)
    return copies / (gpu.pcie_gb_s * 1e9) + adamw


def _sync_time(cfg: Config, c: Counts, layout: Layout, tp: int) -> float:
    r, gpu = cfg.rollout, GPUS[cfg.plan.gpu]
    if r.engine == "hf":
        return 0.0
    weights = c.total * DTYPE_BYTES[cfg.model.dtype]
    link = gpu.nvlink_gb_s if cfg.plan.nodes == 1 else NETWORK_GB_S
    gather = weights * (layout.ranks - 1) / layout.ranks / (link * 1e9) if layout.sharded else 0.0
    copy = (2 * weights / tp / (gpu.hbm_tb_s * 1e12) if r.engine == "vllm"
            else 2 * weights / (gpu.pcie_gb_s * 1e9))
    return gather + copy
