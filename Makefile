# Two commands on a fresh machine: `make demo` (the embedded default, end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo smoke test bootstrap benchmarks gpu-wheels gpu-check
install: $(STAMP)

# requirements-cpu.txt pins the CPU torch wheel found on these machines (torch==2.13.0) and the rest of
# the stack; the package itself asks only for ranges, so GPU users keep their CUDA torch.
$(STAMP): pyproject.toml requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-cpu.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/visplay demo --preset demo

smoke: $(STAMP)
	$(BIN)/visplay demo --preset smoke --home .visplay-smoke

test: $(STAMP)
	$(BIN)/python -m pytest -q

bootstrap: $(STAMP)
	$(BIN)/visplay bootstrap

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/run.py --write BENCHMARKS.md

# On one CUDA GPU, under 5 minutes: GRPO of each role in bf16 autocast with float32 master weights, the
# subprocess launcher giving the GPU back, generation throughput, peak memory (a table for BENCHMARKS.md).
# It runs with the GPU machine's own python, torch and transformers; the rest of what GRPO needs comes as
# wheels: `make gpu-wheels GPU_PYTHON_VERSION=3.x` (the GPU machine's Python) where the package index is
# reachable, copy the repository with wheels/gpu, then `make gpu-check` there. Without CUDA it exits 1.
GPU_PYTHON ?= python3
GPU_WHEELS ?= wheels/gpu
GPU_PYTHON_VERSION ?= 3.11

gpu-wheels: $(STAMP)
	mkdir -p $(GPU_WHEELS)
	$(BIN)/python benchmarks/gpu_check.py --requirements > $(GPU_WHEELS)/requirements.txt
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
		-d $(GPU_WHEELS) -r $(GPU_WHEELS)/requirements.txt

gpu-check:
	@if [ -f $(GPU_WHEELS)/requirements.txt ]; then \
		$(GPU_PYTHON) -m pip install -q --no-index --find-links $(GPU_WHEELS) -r $(GPU_WHEELS)/requirements.txt \
		|| echo "gpu-check: could not install the wheels in $(GPU_WHEELS); running what it can"; fi
	$(GPU_PYTHON) benchmarks/gpu_check.py
