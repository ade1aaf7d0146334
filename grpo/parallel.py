"""Data-parallel and sharded updates: the same optimiser step on N processes as on one.

Launch: ``accelerate launch --num_processes N -m r1kit.cli train RECIPE`` on GPUs (``--multi_gpu``,
and ``--num_machines`` / ``--machine_rank`` / ``--main_process_ip`` across nodes), or
``torchrun --nproc_per_node N`` (what accelerate runs underneath; on CPU accelerate's own
launcher wants MPI, torchrun does not). ``accelerate.PartialState`` reads the launcher's
environment, starts the process group (NCCL on GPU, gloo on CPU) and says which rank this is;
nothing else in the trainer asks.

How an update is split (``GRPOTrainer.update``):

* every rank holds the whole ``TrainBatch`` (the rollout is sampled and scored once and shared:
  ``share``), so the loss normaliser of a minibatch (``grpo.losses.Norm``: its tokens and
  sequences) is computed from all of its rows with no communication;
* each rank takes rows ``rank, rank + N, ...`` of the minibatch (``shard``), runs its micro-batches
  and scales its loss by ``N``: DDP and FSDP2 average gradients over ranks, so the sum of the
  ranks' gradients, which is the one-process gradient, is what reaches the optimiser;
* every rank runs the same number of micro-batches (``pad_count``; a rank short of work repeats
  one with its loss times 0), because FSDP2 gathers parameters in every forward pass and DDP
  must reduce exactly once per optimiser step; DDP reduces on the last one only, FSDP2 after
  each (``sync_context``: its shards accumulate, never the whole gradient).

Why r1kit wraps the model itself (torch's ``DistributedDataParallel`` and ``fully_shard``) rather
than through ``Accelerator.prepare``: the wrapped module's ``forward`` must be the chunked
log-probability pass (``grpo.logprobs``: no ``[B, T, V]`` logits), not the transformers model's
own forward, so the root is ``LogprobModule``, which holds the whole policy.

FSDP2 (``train.parallel: fsdp2``): ``fully_shard`` per decoder layer, then the root, each with
``MixedPrecisionPolicy(param_dtype=<model.dtype>, reduce_dtype=float32)`` under
``train.mixed_precision`` (float32 master weights and AdamW state stay sharded; layers compute in
``model.dtype``; gradients are reduced in float32) and ``CPUOffloadPolicy`` under
``train.offload``. A frozen reference model is sharded the same way (``wrap_frozen``) and runs
through its own root. The weights reach the engine one FSDP unit at a time: ``gathered()``
gathers the root's own parameters (embeddings, final norm, LM head) for the sync, and
``rollouts.weights`` gathers each decoder layer while it walks it (every rank walks in the same
order, since each gather is a collective), so a rank's extra memory is one layer, never the
model. Checkpoints are ``torch.distributed.checkpoint`` shards (``grpo.checkpoint``).

Rollouts (``GRPOTrainer.rollout``): with the HF engine every rank samples and scores its
contiguous ``block`` of a step's prompts (whole groups, so advantages need no communication;
seeded per completion, ``Sampling.first_prompt``) and the pieces are ``gather``-ed, so every
rank holds the whole rollout, equal to the one-rank one. A vLLM server is one sampler driven by
rank 0 (``share`` broadcasts its rollout); the colocated vLLM engine is refused on several ranks
(it would start its own process group beside the trainers').
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch
from torch import Tensor, nn

from grpo.batch import Layout
from grpo.logprobs import completion_logprobs, split_model
from rollouts.moe_routers import moe_routers


class LogprobModule(nn.Module):
    """The wrapped root: ``forward`` is ``grpo.logprobs.completion_logprobs`` of ``policy``, so
    DDP sees every parameter the loss uses (the LM head included) through its output, and
    FSDP2's root hooks gather the parameters outside the decoder layers."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, input_ids: Tensor, attention_mask: Tensor, prompt_lens: Tensor,
                completion_lens: Tensor, chunk_tokens: int,
                extra_ids: Tensor | None = None, share_prompts: bool = False,
                layout: Layout | None = None) -> tuple[Tensor, ...]:
        tl = completion_logprobs(self.policy, input_ids, attention_mask, prompt_lens,
                                 completion_lens, chunk_tokens=chunk_tokens, extra_ids=extra_ids,
                                 share_prompts=share_prompts, layout=layout)
        out = (tl.logp, tl.entropy, tl.mask)
        return out if tl.extra_logp is None else (*out, tl.extra_logp)


class Parallel:
    """This process's place among the trainer's ranks and the wrapped policy."""

    def __init__(self, rank: int = 0, world: int = 1,
                 strategy: Literal["ddp", "fsdp2"] = "ddp", *,
                 param_dtype: torch.dtype | None = None, offload: bool = False,
                 shard_one: bool = False):
        """``shard_one``: FSDP2 on a one-rank process group the caller started (the GPU check
        runs the sharded code path on one GPU); otherwise one rank does not shard."""
        if strategy not in ("ddp", "fsdp2"):
            raise ValueError(f"train.parallel must be ddp or fsdp2, got {strategy!r}")
        self.rank, self.world, self.strategy = rank, world, strategy
        self.param_dtype, self.offload, self.shard_one = param_dtype, offload, shard_one
        self.wrapped: nn.Module | None = None
        self.frozen: nn.Module | None = None  # the FSDP2 root of a sharded reference

    @staticmethod
    def from_environment(strategy: str = "ddp", *, param_dtype: torch.dtype | None = None,
                         offload: bool = False, timeout_s: float | None = None) -> Parallel:
        """One process, or the ranks a launcher (accelerate, torchrun) started. ``param_dtype``
        (FSDP2's compute dtype under mixed precision) and ``offload`` apply to FSDP2 only;
        ``timeout_s``: how long a collective waits (``train.dist_timeout_s``)."""
        import datetime
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return Parallel(0, 1, strategy, param_dtype=param_dtype,  # type: ignore[arg-type]
                            offload=offload)
        from accelerate import PartialState

        # starts the process group from the launcher's environment (gloo without a GPU)
        kw = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        state = PartialState(cpu=not torch.cuda.is_available(), **kw)
        return Parallel(state.process_index, state.num_processes, strategy,  # type: ignore[arg-type]
                        param_dtype=param_dtype, offload=offload)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Whether parameters are FSDP2 shards (several ranks under ``fsdp2``)."""
        return (self.active or self.shard_one) and self.strategy == "fsdp2"

    @property
    def sharded_root(self) -> nn.Module | None:
        """The FSDP2 root a pass outside the update must run through (it gathers the root's
        own parameters), or None: the policy is called directly."""
        return self.wrapped if self.sharded else None

    def wrap(self, policy: nn.Module) -> nn.Module:
        """The module the update calls: the policy itself on one process, else a DDP or FSDP2
        ``LogprobModule`` around it (FSDP2 shards each decoder layer, then the root)."""
        if not self.active and not self.sharded:
            return policy
        root = LogprobModule(policy)
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            dev = next(policy.parameters()).device
            self.wrapped = DistributedDataParallel(
                root, device_ids=[dev.index] if dev.type == "cuda" else None,
                # MoE: experts no token of a rank was routed to get no gradient; searching for
                # them costs a graph traversal per backward, so dense models skip it
                find_unused_parameters=_is_moe(policy),
                broadcast_buffers=False)  # no buffer changes during training (rotary caches)
        else:
            self.wrapped = self._shard(root, train=True)
        return self.wrapped

    def wrap_frozen(self, model: nn.Module | None) -> nn.Module | None:
        """Under FSDP2, a frozen ``model`` (the KL reference) sharded like the policy, and the
        root to run it through (None otherwise: it is called directly)."""
        if model is None or not self.sharded:
            return None
        self.frozen = self._shard(LogprobModule(model), train=False)
        return self.frozen

    def _shard(self, root: LogprobModule, train: bool) -> nn.Module:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        kw: dict[str, Any] = {}
        if train and self.param_dtype is not None:  # float32 masters, layers in param_dtype
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=self.param_dtype,
                                                   reduce_dtype=torch.float32)
        if self.offload:
            kw["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
        for layer in _decoder_layers(root.policy):
            fully_shard(layer, **kw)
        fully_shard(root, **kw)
        return root

    @contextlib.contextmanager
    def gathered(self):
        """Under FSDP2, the root's own parameters (outside the decoder layers) gathered while
        the weights are walked for the engine (``rollouts.weights`` gathers each layer itself);
        every rank must enter it. Nothing otherwise."""
        if not self.sharded:
            yield
            return
        self.wrapped.unshard()
        try:
            yield
        finally:
            self.wrapped.reshard()

    # -- work split ---------------------------------------------------------------------------
    def shard(self, rows: list[int]) -> list[int]:
        """This rank's rows of a minibatch."""
        return rows[self.rank :: self.world]

    def block(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items (a rollout's prompts), sizes within
        one of each other, in rank order.

        >>> [Parallel(r, 3).block(7) for r in range(3)]
        [slice(0, 3, None), slice(3, 5, None), slice(5, 7, None)]
        """
        base, extra = divmod(count, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        every: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(every, obj)
        return every

    def pad_count(self, count: int) -> int:
        """The most micro-batches any rank has for this minibatch (every rank runs that many)."""
        if not self.active:
            return count
        t = torch.tensor([count], device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def sync_context(self, last: bool):
        """DDP: gradients are all-reduced on a minibatch's last micro-batch only (each rank
        holds the whole gradient anyway). FSDP2: reduce-scattered after every micro-batch, so a
        rank accumulates only its shard; skipping the reduction would keep every layer's
        gradient unsharded, in float32, until the last one (the whole model's, per rank)."""
        if not self.active or self.strategy == "fsdp2":
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else self.wrapped.no_sync()

    def full_norm(self, norm: Tensor) -> Tensor:
        """A gradient norm as a plain tensor (FSDP2's is a DTensor over the shards)."""
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a rollout is sampled and scored once)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """End the process group (after the last collective of the run). A barrier first, and
        the wrapped modules dropped while the group lives: a gloo work item that still held
        Python tensors (``broadcast_object_list``'s) was otherwise released on gloo's thread,
        which waits for the GIL, while the main thread, holding it, destroyed the group from
        DDP's reducer and joined that thread (seen as a hang at exit on rank 1)."""
        if self.active and torch.distributed.is_initialized():
            torch.distributed.barrier()
            self.wrapped = self.frozen = None
            import gc

            gc.collect()
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def merge_sums(self, sums: Any) -> Any:
        """Statistics summed (max, min) over every rank's micro-batches."""
        if not self.active:
            return sums
        every = self.gather(sums)
        out = every[0]
        for s in every[1:]:
            out.merge(s)
        return out

    def sum_over_ranks(self, t: Tensor) -> Tensor:
        """``t`` summed over ranks, on ``t``'s device (rows each rank filled, zeros elsewhere)."""
        if not self.active:
            return t
        x = t.to(self._comm_device())
        torch.distributed.all_reduce(x)
        return x.to(t.device)

    def _comm_device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" \
            else torch.device("cpu")


def _is_moe(policy: nn.Module) -> bool:
    """Whether ``policy`` routes tokens to experts (``rollouts.moe_routers`` finds routers)."""
    try:
        moe_routers(policy)
    except ValueError:
        return False
    return True


def _decoder_layers(policy: nn.Module) -> list[nn.Module]:
    decoder, _ = split_model(policy)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"{type(decoder).__name__} has no .layers to shard with FSDP2")
    return list(layers)


class PeakExtra:
    """Peak memory above the level at entry while the block runs: CUDA's allocator counters on
    a GPU (``max_memory_allocated``), else this process's resident set sampled every 2 ms from
    a thread (``/proc/self/statm``; what the allocator hands back to the OS on free, large
    tensors on Linux, shows; a cached block would not)."""

    def __init__(self, device: torch.device | None = None):
        self.cuda = device is not None and device.type == "cuda"
        self.device, self.bytes = device, 0
        self._start, self._peak, self._stop = 0, 0, None

    def __enter__(self) -> PeakExtra:
        import threading

        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = self._peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss())

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        self._stop.set()
        self._thread.join()
        self.bytes = max(self._peak, _rss()) - self._start


def _rss() -> int:
    """This process's resident set size in bytes (Linux), 0 where unknown."""
    import os

    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
