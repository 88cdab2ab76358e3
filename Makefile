# Two commands on a fresh machine: `make demo` (the embedded default, end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo smoke test bootstrap benchmarks
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
