"""Weight sync into a vLLM server through vLLM's own weight-transfer API, without dev mode.

vLLM 0.32 has a native weight-transfer protocol: the server starts with
``--weight-transfer-config '{"backend": NAME}'``, each worker builds the engine registered as NAME
in ``WeightTransferEngineFactory``, and a trainer drives ``/init_weight_transfer_engine`` (once),
then ``/start_weight_update``, ``/update_weights`` (once per chunk), ``/finish_weight_update`` (each
a ``collective_rpc`` to every worker of every data-parallel engine). On the trainer side
``WeightTransferTrainerFactory.trainer_init`` builds the matching sender. ``rollouts.server`` uses
exactly that path on CPU and GPU; only the backend differs:

- CPU: ``r1kit_shm``, r1kit's own (``rollouts.weight_transfer_engines``, registered in every
  vLLM process by the ``vllm.general_plugins`` entry point ``r1kit_weight_transfer``). The sender
  casts the policy's checkpoint-named tensors (``rollouts.weights.iter_checkpoint_weights``) to
  the engine's dtype (``CheckpointSource``) and streams them in
  buckets of at most ``bucket_bytes``: each bucket is one safetensors file in ``/dev/shm`` (its
  free space checked first; the temp folder if ``/dev/shm`` is too small), named in one
  ``/update_weights`` call and removed when every worker has read it. Peak extra RAM is one
  bucket, not a copy of the model. vLLM's built-in backends (NCCL, CUDA IPC) need CUDA.
  The worker (``ShmWeightTransferEngine``) loads each bucket through vLLM's layerwise reload
  (``initialize_layerwise_reload`` at start, ``model.load_weights`` per bucket,
  ``finalize_layerwise_reload`` at finish, what vLLM's NCCL engine does), wrapped in the two CPU
  corrections of ``rollouts.vllm_worker`` (MoE kernels re-armed before, tied heads repacked after),
  so a sync is exactly a fresh load. A finish that received no tensor is an error.
- GPU: vLLM's ``nccl`` backend: the trainer joins an NCCL group with every worker (rank 0, world
  size ``1 + dp * tp``) and broadcasts the same cast, checkpoint-named tensors from its own
  device. This path is built but not run here (no GPU): treat it as untested.

This module holds what needs no vLLM import (the server's access control and routes, bucket and
device helpers); ``rollouts.weight_transfer_engines`` the classes built on vLLM's.

Tensor parallelism needs nothing from r1kit: every worker receives full checkpoint tensors and its
layers' ``weight_loader`` takes its own shard, as at a fresh load.

Without ``VLLM_SERVER_DEV_MODE`` vLLM registers none of those HTTP routes (its RL router, the
prefix-cache reset and sleep routes are dev-only), and dev mode would also open
``/collective_rpc`` (any worker method, to anyone who can reach the port). So the routes come from
an endpoint plugin (``RLEndpoints``, the ``vllm.endpoint_plugins`` entry point ``r1kit_rl``, loaded
only where ``VLLM_PLUGINS`` names it), which attaches vLLM's own RL, cache and sleep routers and
nothing else. ``/collective_rpc`` stays absent.

Access: ``TokenMiddleware`` (passed as ``--middleware``) refuses with 401 every request but
``/health`` that lacks ``Authorization: Bearer <token>``, the token being a random one per engine
handed to the server in ``R1KIT_SERVER_TOKEN``. vLLM's ``--api-key`` would not do: its
middleware guards only paths under ``/v1``, ``/v2``, ``/inference`` and ``/cohere``, not the
weight routes. Together with the loopback bind, only the process that started the server (or
another process of the same user that reads its environment) can change its weights.
"""

from __future__ import annotations

import hmac
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import torch

BACKEND = "r1kit_shm"
TOKEN_ENV = "R1KIT_SERVER_TOKEN"
PLUGINS = ("r1kit_weight_transfer", "r1kit_rl")  # our entry points' names (pyproject.toml)
MIDDLEWARE = "rollouts.weight_transfer.TokenMiddleware"
OPEN_PATHS = ("/health",)  # readiness polls need no token
DEFAULT_BUCKET_BYTES = 256 * 2**20
SHM = "/dev/shm"
FILE_PREFIX = "r1kit-weights-"


# -- access control and routes (API server process) ---------------------------------------------


class TokenMiddleware:
    """ASGI middleware: 401 for any request but ``OPEN_PATHS`` without the engine's bearer
    token. With no token in the environment every guarded request is refused (fail closed)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._expected = f"Bearer {os.environ.get(TOKEN_ENV, '')}".encode()
        self._armed = bool(os.environ.get(TOKEN_ENV))

    def _allowed(self, scope: dict) -> bool:
        if scope["path"].removeprefix(scope.get("root_path", "")) in OPEN_PATHS:
            return True
        headers = dict(scope.get("headers") or [])
        return self._armed and hmac.compare_digest(headers.get(b"authorization", b""),
                                                   self._expected)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket") and not self._allowed(scope):
            from starlette.responses import JSONResponse

            await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RLEndpoints:
    """vLLM endpoint plugin: vLLM's own weight-transfer (``/init_weight_transfer_engine``,
    ``/start_weight_update``, ``/update_weights``, ``/finish_weight_update``, ``/pause``, ...),
    ``/reset_prefix_cache`` and sleep routes, without the rest of dev mode."""

    name = "r1kit_rl"
    required_tasks = None

    def attach_router(self, app: Any) -> None:
        from vllm.entrypoints.rl.online.api_router import router as rl_router
        from vllm.entrypoints.serve.dev.cache.api_router import router as cache_router
        from vllm.entrypoints.serve.dev.sleep.api_router import router as sleep_router

        for router in (rl_router, cache_router, sleep_router):
            app.include_router(router)

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        """Nothing to set up: the routes use ``app.state.engine_client``."""


def plugins_env(current: str | None) -> str:
    """``VLLM_PLUGINS`` for the server: ours added to the allowlist. Unset means "every general
    plugin" to vLLM; the list then keeps every installed general plugin, since an endpoint plugin
    loads only when named and naming one turns the allowlist on for all groups."""
    from importlib.metadata import entry_points

    if current is None:
        names = [ep.name for ep in entry_points(group="vllm.general_plugins")]
    else:
        names = [n for n in current.split(",") if n]
    return ",".join(dict.fromkeys([*names, *PLUGINS]))


# -- buckets and devices (trainer side; no vLLM import: a server engine starts without it) ---


def bucket_dir(need_bytes: int) -> str:
    """``/dev/shm`` if it has room for ``need_bytes`` (plus 64 MiB), else the temp folder if it
    has; raises ``OSError`` naming both otherwise."""
    margin = 64 * 2**20
    places = [p for p in (SHM, tempfile.gettempdir()) if os.path.isdir(p)]
    for place in places:
        if shutil.disk_usage(place).free >= need_bytes + margin:
            return place
    free = {p: shutil.disk_usage(p).free for p in places}
    raise OSError(f"no room for a {need_bytes / 2**20:.0f} MiB weight bucket: free bytes {free}")


def buckets(pairs: Iterator[tuple[str, torch.Tensor]], max_bytes: int
            ) -> Iterator[dict[str, torch.Tensor]]:
    """Group ``(name, tensor)`` pairs in order into dicts of at most ``max_bytes`` (a larger
    tensor alone).

    >>> t = torch.zeros(4)  # 16 bytes
    >>> [list(b) for b in buckets(iter([("a", t), ("b", t), ("c", t)]), 32)]
    [['a', 'b'], ['c']]
    """
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in pairs:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = tensor
        size += nbytes
    if bucket:
        yield bucket


def pick_server_devices(visible: list[str], trainer: str | None, count: int) -> list[str]:
    """The GPUs a server child gets (its ``CUDA_VISIBLE_DEVICES``): ``count`` of the visible ones
    other than the trainer's; if there are not enough, the first ``count`` visible ones (the
    server then shares the trainer's GPU, bounded by ``gpu_memory_utilization``).

    >>> pick_server_devices(["0", "1", "2"], "0", 2)
    ['1', '2']
    >>> pick_server_devices(["0"], "0", 1)
    ['0']
    """
    others = [d for d in visible if d != trainer]
    if len(others) >= count:
        return others[:count]
    if len(visible) < count:
        raise ValueError(f"the vLLM server needs {count} GPUs, {len(visible)} are visible")
    return visible[:count]
