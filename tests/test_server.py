"""``rollouts.server`` against a real vLLM CPU server on the tiny Qwen3-MoE.

One module-scoped server serves the sampling, weight-sync, access and crash tests. Two child
processes check that r1kit leaves nothing behind: a SIGINT while sampling, and a SIGKILL of
``r1kit train`` while a data-parallel (2 engines) server serves it, after its synced steps sampled
exactly the policy's log-probs. Data parallelism runs on the tiny dense Qwen3: vLLM 0.32's CPU
backend cannot run a MoE model with data parallelism (see ``rollouts.server``). Tensor parallelism
needs GPUs: only its arguments are checked here.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from rollouts.model_check import CheckpointError
from rollouts.server import CompletionsClient, ServerError, VLLMServerEngine, free_port
from rollouts.types import Sampling

REPO = Path(__file__).resolve().parents[1]
SERVER_ARGS = ("--dtype", "float32", "--max-model-len", "1024", "--enforce-eager")
PROMPTS = ["What is 2 + 2? <think>", "Compute 7 * 6. <think>", "hello"]


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    return _alive(procs)


@pytest.fixture(scope="module")
def server(tiny_qwen, tmp_path_factory):
    # 64 KiB buckets: a sync takes several /update_weights calls, experts split across them
    engine = VLLMServerEngine(tiny_qwen, extra_args=SERVER_ARGS, startup_timeout_s=400,
                              log_path=tmp_path_factory.mktemp("server") / "server.log",
                              bucket_bytes=2**16)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen)


# -- no server needed -------------------------------------------------------------------------


def test_bad_model_path_fails_before_starting_a_child(tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(CheckpointError, match="does not exist"):
        VLLMServerEngine(tmp_path / "missing")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    with pytest.raises(CheckpointError, match="not a causal language model"):
        VLLMServerEngine(bert)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


@pytest.mark.timeout(60)
def test_unreachable_server_is_a_clear_error_not_a_hang():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    client = CompletionsClient(url, "m", connect_timeout_s=2.0, request_timeout_s=2.0)
    with pytest.raises(ServerError, match=f"{url}/v1/completions is unreachable"):
        client.generate(["x"], 1, Sampling(max_tokens=4))
    assert not client.is_healthy()
    # A socket that accepts connections but never answers: the read timeout fires.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = CompletionsClient(url, "m", connect_timeout_s=2.0, request_timeout_s=2.0)
        with pytest.raises(ServerError, match="ReadTimeout"):
            client.generate(["x", "y"], 1, Sampling(max_tokens=4))


def test_a_hanging_weight_sync_times_out_with_a_clear_error(tmp_path):
    """A server that accepts the sync request and never answers (a stuck worker) ends the sync
    after ``sync_timeout_s`` with an error naming the server and its log, instead of blocking
    the trainer forever. The engine object is made without starting vLLM (its sync request only
    needs the HTTP client, URL and log path)."""
    from rollouts.server import VLLMServerEngine

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        engine = object.__new__(VLLMServerEngine)
        engine.url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        engine.client = CompletionsClient(engine.url, "m", request_timeout_s=600.0)
        engine.sync_timeout_s, engine.log_path, engine._closed = 1.0, tmp_path / "server.log", False
        engine._death_note = lambda: ""
        start = time.monotonic()
        with pytest.raises(ServerError, match=r"weight sync into .* did not finish within 1 s "
                                              r"\(ReadTimeout\).*server.log"):
            engine._post_sync("/update_weights", {"update_info": {"path": "weights"}})
        assert time.monotonic() - start < 10


def test_parallel_sizes_reach_the_server_command(tiny_qwen, monkeypatch):
    """``rollout.data_parallel_size`` / ``tensor_parallel_size`` become vLLM's flags, and on CUDA
    the weight-transfer backend is vLLM's NCCL one. Tensor parallelism and NCCL need GPUs, so
    the engine class is replaced by a recorder and CUDA is declared by patching ``_no_cuda``: what
    is checked is r1kit's plumbing, not vLLM's parallel run (weights need no per-shard naming
    from r1kit: each worker's loaders take their shard of the full checkpoint tensors)."""
    import rollouts.server as server_mod
    from rollouts.settings import RolloutConfig

    made = {}
    monkeypatch.setattr(server_mod, "VLLMServerEngine",
                        lambda path, **kwargs: made.update(path=path, **kwargs))
    RolloutConfig(engine="vllm_server", data_parallel_size=2,
                  tensor_parallel_size=4).start_engine(tiny_qwen, "float32")
    assert (made["data_parallel_size"], made["tensor_parallel_size"]) == (2, 4)

    bare = object.__new__(VLLMServerEngine)  # the command only, no child started
    bare.model_path, bare.host, bare.port, bare.sleep_mode, bare.grace_s = (
        tiny_qwen, "127.0.0.1", 1, False, 5.0)
    bare._run_dir, bare._bucket_prefix = Path("/tmp/r1kit-vllm-server-x"), "r1kit-weights-x-"
    for cuda, backend in ((False, "r1kit_shm"), (True, "nccl")):
        monkeypatch.setattr(server_mod, "_no_cuda", lambda cuda=cuda: not cuda)
        cmd = bare._server_command(2, 4, ())
        flag = {a: b for a, b in itertools.pairwise(cmd) if a.startswith("--")}
        assert (flag["--data-parallel-size"], flag["--tensor-parallel-size"]) == ("2", "4")
        assert json.loads(flag["--weight-transfer-config"]) == {"backend": backend}
        assert flag["--middleware"] == "rollouts.weight_transfer.TokenMiddleware"
        assert cmd[cmd.index("--remove") + 1] == "/tmp/r1kit-vllm-server-x"


# -- the shared server ----------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.slow
def test_server_health_and_process_tree(server):
    assert server.client.is_healthy()
    names = [p.name() for p in server.processes()]
    assert any("EngineCor" in n for n in names), names  # vLLM's engine core runs under it
    assert server.startup_seconds > 0 and server.log_path.is_file()


@pytest.mark.vllm
@pytest.mark.slow
def test_sampling_tokens_logprobs_seeds(server, tokenizer):
    sampling = Sampling(max_tokens=12, seed=7, stop=(" 2",))
    groups = server.generate(PROMPTS, 3, sampling)
    assert [g.prompt for g in groups] == PROMPTS
    for g in groups:
        assert g.prompt_token_ids == tokenizer(g.prompt)["input_ids"]
        assert len(g.completions) == 3
        for c in g.completions:
            assert len(c.token_ids) == len(c.logprobs) >= 1
            assert all(math.isfinite(x) and x <= 0 for x in c.logprobs)
            assert c.finish_reason in ("stop", "length")
            decoded = tokenizer.decode(c.token_ids, skip_special_tokens=True)
            if c.finish_reason == "length":
                assert len(c.token_ids) == sampling.max_tokens
                assert decoded == c.text
            else:  # a stop string is cut from the text but its token stays in token_ids
                assert decoded == c.text or decoded.startswith(c.text + " 2")
    again = server.generate(PROMPTS, 3, sampling)
    for g, h in zip(groups, again):
        for c, d in zip(g.completions, h.completions):
            assert c.token_ids == d.token_ids
            assert c.logprobs == pytest.approx(d.logprobs, abs=1e-5)
    other = server.generate(PROMPTS, 3, Sampling(max_tokens=12, seed=8, stop=(" 2",)))
    assert tokens(other) != tokens(groups)
    assert len({tuple(ids) for ids in tokens(groups)}) > 1  # n samples of a prompt differ
    stats = server.last_stats
    assert (stats.prompts, stats.completions) == (3, 9)
    assert stats.new_tokens == sum(len(ids) for ids in tokens(other))
    assert stats.peak_memory_bytes > 100 * 2**20  # the server tree, not this process


@pytest.mark.vllm
@pytest.mark.slow
def test_seeded_batch_larger_than_one_prefill_step(server):
    # With chunked prefill, this batch crashed vLLM 0.32's CPU engine core (seeded requests whose
    # prompt is split across steps); the engine turns chunked prefill off on CPU.
    from r1kit.tasks import arithmetic_tasks
    from rollouts.prompts import r1_zero_prompt

    prompts = [r1_zero_prompt(t.question) for t in arithmetic_tasks("heldout", 8, seed=1)]
    groups = server.generate(prompts, 4, Sampling(max_tokens=4, seed=0))
    assert [len(g.completions) for g in groups] == [4] * 8
    assert server.client.is_healthy()


@pytest.mark.vllm
@pytest.mark.slow
def test_sleep_and_wake_are_logged_no_ops_on_cpu(server, caplog):
    caplog.set_level("INFO", logger="rollouts.server")
    server.sleep()
    server.wake()
    assert "sleep() frees nothing" in caplog.text
    assert server.generate(PROMPTS[:1], 1, Sampling(max_tokens=2))[0].completions


def tokens(groups) -> list[list[int]]:
    return [c.token_ids for g in groups for c in g.completions]


def _hf_logprobs(model, prompt_ids: list[int], ids: list[int]) -> list[float]:
    import torch

    x = torch.tensor([prompt_ids + ids])
    with torch.no_grad():
        logits = model(x).logits[0, len(prompt_ids) - 1:-1].float()
    lp = torch.log_softmax(logits, dim=-1)
    return lp.gather(-1, torch.tensor(ids)[:, None])[:, 0].tolist()


def _max_gap(model, groups) -> float:
    return max(abs(a - b) for g in groups for c in g.completions
               for a, b in zip(c.logprobs, _hf_logprobs(model, g.prompt_token_ids, c.token_ids)))


@pytest.mark.vllm
@pytest.mark.slow
def test_weight_sync_matches_hf_policy_after_an_optimizer_step(server, tiny_qwen, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen, dtype=torch.float32)
    sampling = Sampling(max_tokens=16, seed=3)
    before = server.generate(PROMPTS[:2], 2, sampling)
    model.eval()
    assert _max_gap(model, before) <= 1e-3  # server and HF agree on the initial weights
    model.train()
    batch = tokenizer([" 12 + 30 = 42 </think> <answer> 42 </answer>"], return_tensors="pt")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    model.eval()
    assert _max_gap(model, before) > 1e-3  # the step moved the policy away from the server
    server.update_weights(model)
    assert server.last_sync_seconds > 0 and server._sender.buckets_sent > 1
    after = server.generate(PROMPTS[:2], 2, sampling)
    assert _max_gap(model, after) <= 1e-5
    assert not list(Path("/dev/shm").glob(f"{server._bucket_prefix}*"))  # buckets removed
    # bf16 parameters into the fp32 server: cast on the way, so it samples the bf16 weights
    # exactly (the parameters only: a bf16 rotary inv_freq buffer would move HF's logprobs)
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    server.update_weights(model)
    for p in model.parameters():
        p.data = p.data.float()
    assert _max_gap(model, after) > 1e-5  # the rounding moved the policy from the fp32 sync
    after = server.generate(PROMPTS[:2], 2, sampling)
    assert _max_gap(model, after) <= 1e-5


@pytest.mark.vllm
@pytest.mark.slow
def test_only_the_engines_token_reaches_the_server(server):
    """No dev mode: /collective_rpc does not exist. Every route but /health needs this engine's
    token, the weight-transfer routes included (vLLM's --api-key would guard only /v1/...)."""
    import httpx

    def post(path: str, token: str | None, **kwargs) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(server.url + path, headers=headers, timeout=30, **kwargs).status_code

    for path in ("/start_weight_update", "/update_weights", "/finish_weight_update",
                 "/init_weight_transfer_engine", "/reset_prefix_cache", "/v1/completions"):
        assert post(path, None, json={}) == 401, path
        assert post(path, "not-the-token", json={}) == 401, path
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 401
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200
    assert post("/collective_rpc", server._token, json={"method": "weight_sums"}) == 404
    # vLLM's RL routes are there (through r1kit's endpoint plugin) for the token's holder
    assert httpx.get(server.url + "/is_paused", timeout=30).status_code == 401
    auth = {"Authorization": f"Bearer {server._token}"}
    assert httpx.get(server.url + "/is_paused", headers=auth, timeout=30).json() == {
        "is_paused": False}
    assert server.generate(PROMPTS[:1], 1, Sampling(max_tokens=2))[0].completions  # still serves


@pytest.mark.vllm
@pytest.mark.slow
def test_crashed_server_error_then_close_leaves_no_process(server):
    recorded = server.processes()
    api = psutil.Process(server.pid).children()  # the supervisor's one child: the API server
    assert len(api) == 1 and "api_server.entry" in " ".join(api[0].cmdline())
    api[0].kill()  # the server crashes; its EngineCore and Worker would be orphans
    with pytest.raises(ServerError, match=f"{server.url}.*(unreachable|answered 5)"):
        for _ in range(20):  # until the supervisor has noticed and torn the rest down
            server.generate(PROMPTS[:1], 1, Sampling(max_tokens=2))
            time.sleep(0.5)
    server.close()
    assert _alive(recorded) == []


# -- r1kit itself dies ----------------------------------------------------------------------

# digit_share is learnable by the tiny policy, so every step has reward variance and updates
TRAIN_DP = ["model.path=tiny:qwen3", "rollout.engine=vllm_server", "rollout.data_parallel_size=2",
            "train.steps=4", "train.save_every=0", "reward.workers=1", "rollout.max_tokens=16",
            "reward.funcs=[rewards.toy:digit_share]", "reward.weights=[1.0]",
            "algo.mask_truncated=false", "train.lr=1e-2", "--no-progress"]


def _metric_lines(out: Path) -> list[dict]:
    text = (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else ""
    return [json.loads(line) for line in text.splitlines()[:text.count("\n")]]


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(500)
def test_sigkill_of_r1kit_training_on_a_data_parallel_server_leaves_nothing(tiny_cache, tmp_path):
    """``r1kit train`` with a 2-engine data-parallel server: steps 2 and 3 sample from weights
    synced after steps 1 and 2, and their log-probs are the policy's (mismatch ratio within
    1e-5 of 1). SIGKILLed during step 4 (no atexit, no handler), r1kit leaves no process of the
    server tree, no /dev/shm file that tree mapped or that a sync wrote, and no folder in its
    TMPDIR: the supervisor cleans up after it."""
    tmp = Path(tempfile.mkdtemp(dir="/tmp"))  # short: vLLM's ZMQ socket paths live under it
    out = tmp_path / "run"
    shm_before = set(os.listdir("/dev/shm"))
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env.update(R1KIT_CACHE=str(tiny_cache), VLLM_CPU_KVCACHE_SPACE="1", TMPDIR=str(tmp),
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    cmd = [sys.executable, "-m", "r1kit.cli", "train", str(REPO / "tests/data/tiny_grpo_random.yaml"),
           f"log.out_dir={out}", *TRAIN_DP]
    with open(tmp_path / "train.stderr", "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    seen: dict[int, psutil.Process] = {}
    names: dict[int, str] = {}
    mapped: set[str] = set()
    deadline = time.monotonic() + 420
    while len(_metric_lines(out)) < 3:  # the tree and its /dev/shm files, polled until step 3
        assert proc.poll() is None, (tmp_path / "train.stderr").read_text()[-3000:]
        assert time.monotonic() < deadline, "step 3 not reached"
        for p in psutil.Process(proc.pid).children(recursive=True):
            seen.setdefault(p.pid, p)
        for p in _alive(list(seen.values())):  # named while alive: the kill below races them
            names[p.pid] = _name(p) or names.get(p.pid, "")
        mapped |= {line.split()[-1] for p in _alive(list(seen.values())) for line in _maps(p)
                   if line.split()[-1].startswith("/dev/shm/")}
        time.sleep(0.5)
    proc.kill()
    proc.wait()
    rows = _metric_lines(out)
    for r in rows[:3]:  # step 1: the checkpoint as loaded; steps 2, 3: after a sync each
        assert 1 - 1e-5 < r["mismatch/min_ratio"] <= r["mismatch/max_ratio"] < 1 + 1e-5, r
    assert sum(1 for n in names.values() if "EngineCor" in n) >= 2, names  # two DP engines
    assert _wait_gone(list(seen.values()), timeout_s=60) == []
    left = set(os.listdir("/dev/shm")) - shm_before
    assert left & {os.path.basename(m) for m in mapped} == set()
    assert [n for n in left if n.startswith("r1kit-weights-")] == []
    assert os.listdir(tmp) == []  # the engine's run folder (log, vLLM's TMPDIR) is gone
    tmp.rmdir()


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


SAMPLING_CHILD = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, {repo!r})
    from rollouts.server import VLLMServerEngine
    from rollouts.types import Sampling
    engine = VLLMServerEngine({model!r}, extra_args={args!r}, startup_timeout_s=400)
    print("READY", engine.log_path.parent, flush=True)
    threading.Timer(2.0, lambda: print("SAMPLING", flush=True)).start()
    try:  # as r1kit.cli does: the handler has said what happens, no traceback
        engine.generate(["hello"] * 16, 8, Sampling(max_tokens=400))
    except KeyboardInterrupt:
        sys.exit(130)
""")


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigint_of_r1kit_while_sampling_is_one_line_and_leaves_nothing(tiny_qwen, tmp_path):
    # Before: uvicorn waited for r1kit's own requests until SIGKILL (15 s), which left vLLM's
    # /dev/shm segments, its sockets in /tmp and r1kit's log folder; and a ServerError traceback.
    script = tmp_path / "child.py"
    script.write_text(SAMPLING_CHILD.format(repo=str(REPO), model=str(tiny_qwen),
                                            args=SERVER_ARGS))
    tmp = Path(tempfile.mkdtemp(dir="/tmp"))  # short: vLLM's ZMQ socket paths live under it
    shm_before = set(os.listdir("/dev/shm"))
    # vLLM's own default, multiprocess engine core (its queues live in /dev/shm); a colocated
    # VLLMEngine built earlier in this process sets VLLM_ENABLE_V1_MULTIPROCESSING=0 here.
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**env, "VLLM_CPU_KVCACHE_SPACE": "1", "TMPDIR": str(tmp),
                                 "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    line = proc.stdout.readline()
    assert line.startswith("READY "), proc.communicate()[1][-4000:]
    assert Path(line.split()[1]).is_dir()
    assert proc.stdout.readline().strip() == "SAMPLING"
    seen, mapped = _shm_mapped_by_children(proc.pid, timeout_s=20)
    assert mapped  # vLLM's shared-memory queues exist while it runs
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    first = proc.stderr.readline()
    said_at = time.monotonic() - start
    rest = proc.communicate(timeout=60)[1]
    stopped_at = time.monotonic() - start
    assert first.startswith("r1kit: SIGINT, stopping the vLLM server at http://"), first
    assert said_at < 2.0
    assert "Traceback" not in rest and proc.returncode == 130, rest
    assert stopped_at < 5.0 + 5.0  # grace_s, then SIGKILL, and the checks of close()
    assert _alive(seen) == []
    assert os.listdir(tmp) == []  # r1kit's run folder (log, vLLM's TMPDIR) is gone
    tmp.rmdir()
    left = (set(os.listdir("/dev/shm")) - shm_before) & {os.path.basename(m) for m in mapped}
    assert left == set()


def _shm_mapped_by_children(pid: int, timeout_s: float):
    """The child processes of ``pid`` and the /dev/shm files they map, polled until some are
    mapped (vLLM creates its shared-memory queues as its processes come up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = psutil.Process(pid).children(recursive=True)
        mapped = {line.split()[-1] for p in _alive(seen) for line in _maps(p)
                  if line.split()[-1].startswith("/dev/shm/")}
        if mapped or time.monotonic() > deadline:
            return seen, mapped
        time.sleep(0.2)


def _maps(p: psutil.Process) -> list[str]:
    try:
        return Path(f"/proc/{p.pid}/maps").read_text().splitlines()
    except OSError:
        return []
