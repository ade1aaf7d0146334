"""vLLM's side of ``rollouts.weight_transfer``: the ``r1kit_shm`` weight-transfer engines (worker
and trainer), the policy as a ``WeightSource``, and the choice between them and vLLM's NCCL.

Imports vLLM: a trainer loads it at its first weight sync, a server in every process (the
``vllm.general_plugins`` entry point ``r1kit_weight_transfer`` -> ``register``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

# vLLM is an optional extra: this module is imported only where a vLLM server runs or is driven.
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightSource,
    WeightTransferEngine,
)

from rollouts.weight_transfer import BACKEND, DEFAULT_BUCKET_BYTES, FILE_PREFIX, bucket_dir, buckets
from rollouts.weights import iter_checkpoint_weights

# -- registration (the `vllm.general_plugins` entry point) ----------------------------------------


def register() -> None:
    """Register the ``r1kit_shm`` engines in vLLM's weight-transfer factories; idempotent (vLLM
    loads general plugins in every process, and the trainer calls this too)."""
    from vllm.distributed.weight_transfer.factory import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )

    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, __name__, "ShmWeightTransferEngine")
    if BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(BACKEND, __name__,
                                                     "ShmTrainerWeightTransferEngine")


# -- worker side ---------------------------------------------------------------------------------


@dataclass
class ShmInitInfo:
    """Nothing to rendezvous: the buckets arrive as files."""


@dataclass
class ShmUpdateInfo:
    path: str
    """A safetensors file of checkpoint-named tensors that every worker can open."""


class ShmWeightTransferEngine(WeightTransferEngine):
    """Worker side of ``r1kit_shm``: exact layerwise reload of file buckets (module docstring)."""

    init_info_cls = ShmInitInfo
    update_info_cls = ShmUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tied: list[torch.nn.Module] = []
        self._cleared: dict = {}
        self._received = 0

    def init_transfer_engine(self, init_info: ShmInitInfo) -> None:
        """Nothing to connect."""

    def start_weight_update(self) -> None:
        # model-loading modules of vLLM (and rollouts.vllm_worker, which patches them) are loaded
        # in the worker only, not when a process loads the general plugins
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        from rollouts.vllm_worker import _rearm_first_load, _tied_heads

        self._received = 0
        self._tied = _tied_heads(self.model)
        self._cleared = _rearm_first_load(self.model)
        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        """As vLLM's, minus the accelerator synchronize (the load is synchronous; CPU has no
        accelerator to wait for)."""
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: ShmUpdateInfo) -> None:
        from vllm.model_executor.model_loader.mtp_validation import (
            disable_mtp_completeness_check,
        )

        from rollouts.vllm_worker import _iter_safetensors

        def counted() -> Iterator[tuple[str, torch.Tensor]]:
            for item in _iter_safetensors(update_info.path):
                self._received += 1
                yield item

        with disable_mtp_completeness_check():  # a bucket holds part of the model by design
            self.model.load_weights(counted())

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        from rollouts.vllm_worker import _repack, _restore_unbuilt

        try:
            finalize_layerwise_reload(self.model, self.model_config)
        finally:
            _restore_unbuilt(self._cleared)
            self._cleared = {}
        _repack(self._tied)
        if self._received == 0:
            raise RuntimeError("weight update finished without receiving any tensor")

    def shutdown(self) -> None:
        """Nothing held between updates."""


# -- trainer side --------------------------------------------------------------------------------


class CheckpointSource(WeightSource):
    """``WeightSource`` over a live policy: checkpoint names (experts split, LoRA merged, as
    ``rollouts.weights.iter_checkpoint_weights``), each tensor cast to ``dtype`` and contiguous.
    ``metadata()`` walks the model once and is cached (names and shapes do not change)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, device: str = "cpu") -> None:
        self.model, self.dtype, self.device = model, dtype, device
        self._meta: list[ParamMeta] | None = None

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, t in iter_checkpoint_weights(self.model):
            yield name, t.detach().to(device=self.device, dtype=self.dtype).contiguous()

    def metadata(self) -> list[ParamMeta]:
        if self._meta is None:
            self._meta = [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self]
        return self._meta


@dataclass
class ShmTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = BACKEND

    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    """Most bytes of tensors per file (one tensor larger than that is a bucket of its own)."""
    file_prefix: str = FILE_PREFIX
    """Name prefix of the bucket files (per engine, so its supervisor can sweep them)."""


class ShmTrainerWeightTransferEngine(TrainerWeightTransferEngine):
    """Trainer side of ``r1kit_shm``: writes each bucket, names it to the server, removes it."""

    init_info_cls = ShmTrainerInitInfo

    def __init__(self, *, client: Any, source: Any, bucket_bytes: int,
                 file_prefix: str = FILE_PREFIX, is_sender: bool = True) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.bucket_bytes, self.file_prefix = bucket_bytes, file_prefix
        # buckets being written or read right now; a caller may share its own set so that its
        # signal handler removes them (a SIGTERM skips ``finally``)
        self.live_files: set[str] = set()
        self.buckets_sent = 0

    @classmethod
    def trainer_init(cls, init_info: ShmTrainerInitInfo, *, client: Any,
                     source: Any = None) -> ShmTrainerWeightTransferEngine:
        if source is None:
            raise ValueError("r1kit_shm weight transfer needs a WeightSource")
        engine = cls(client=client, source=source, bucket_bytes=init_info.bucket_bytes,
                     file_prefix=init_info.file_prefix, is_sender=init_info.is_sender)
        if engine.is_sender:
            engine.client.init_weight_transfer_engine(asdict(ShmInitInfo()))
        return engine

    def send_weights(self) -> None:
        from safetensors.torch import save_file

        if not self.is_sender:  # keep collective gathers (FSDP) aligned with the sender
            for _ in self.source:
                pass
            return
        self.client.start_weight_update()
        self.buckets_sent = 0
        for bucket in buckets(iter(self.source), self.bucket_bytes):
            need = sum(t.numel() * t.element_size() for t in bucket.values()) + 2**20
            fd, path = tempfile.mkstemp(prefix=self.file_prefix, suffix=".safetensors",
                                        dir=bucket_dir(need))
            os.close(fd)
            self.live_files.add(path)
            try:
                save_file(bucket, path)
                del bucket
                self.client.update_weights(asdict(ShmUpdateInfo(path=path)))
            finally:
                self.live_files.discard(path)
                if os.path.exists(path):  # a signal handler may have removed it already
                    os.unlink(path)
            self.buckets_sent += 1
        self.client.finish_weight_update()


# -- GPU selection -------------------------------------------------------------------------------


def trainer_init_info(on_cuda: bool, *, workers: int, bucket_bytes: int,
                      file_prefix: str = FILE_PREFIX, host: str = "127.0.0.1",
                      port: int | None = None) -> Any:
    """The sender's init info: ``r1kit_shm`` on CPU; on CUDA vLLM's ``nccl`` (trainer rank 0 of
    ``1 + workers`` ranks, rendezvous at ``host:port``). The NCCL branch is untested here."""
    if not on_cuda:
        return ShmTrainerInitInfo(rank=0, bucket_bytes=bucket_bytes, file_prefix=file_prefix)
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

    from rollouts.procs import free_port

    return NCCLTrainerInitInfo(master_address=host, master_port=port or free_port(host),
                               world_size=1 + workers, rank=0,
                               packed_buffer_size_bytes=bucket_bytes)
