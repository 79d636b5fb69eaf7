# sparsity-sweep: `make sweep` runs the default grid, `make test` the tests. `make help` lists all.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
GRID ?= quick
ARGS ?=
PORT ?= 5000
STORE := sqlite:///$(CURDIR)/mlflow.db
# An MLflow tracking server (http://host:5000) for sweep, search, reprune, frontier and task-losses;
# empty: the local store mlflow.db.
# An unreachable server stops the sweep before anything runs (exit 2); it never falls back to mlflow.db.
TRACKING_URI ?=
TRACKING := $(if $(TRACKING_URI),tracking.uri=$(TRACKING_URI))
COMPOSE := docker compose -f docker/compose.yaml
IMAGE := sparsity-sweep:latest
BASE_IMAGE ?=
TORCH_INDEX_URL ?=

# torch is pinned in the same pip call: any other torch requirement pulls GBs of CUDA packages.
$(INSTALLED): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0 -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

.PHONY: help install sweep search reprune frontier methods task-losses bench circuits-bench gpu-check test test-slow test-slurm test-postgres test-ui ui clean \
	docker-build docker-up docker-sweep docker-down

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install: $(INSTALLED) ## create .venv and install the locked dependencies

sweep: $(INSTALLED) ## run the grid GRID (default quick) as a Hydra multirun; extra overrides in ARGS; a server: TRACKING_URI=
	$(BIN)/python -m sweep -m experiment=$(GRID) $(TRACKING) $(ARGS)

# hydra/sweeper=optuna as well: conf/config.yaml's own `override hydra/sweeper` wins over the experiment's.
search: $(INSTALLED) ## run or resume the Optuna frontier search (study: optuna.db, Pareto set: frontier-pareto.csv); overrides in ARGS
	$(BIN)/python -m sweep -m experiment=search $(TRACKING) $(ARGS)

reprune: $(INSTALLED) ## prune again: RUN=<run id> or EXPERIMENT=<name> (all its runs), PRUNE="prune.ablation=zero"
	$(BIN)/python -m sweep.orchestration.reprune $(if $(EXPERIMENT),--experiment $(EXPERIMENT),$(RUN)) $(PRUNE) $(TRACKING)

# EXPERIMENT has no global default: `make reprune` tells RUN from EXPERIMENT by whether it is set.
frontier: $(INSTALLED) ## frontier tables and figures of EXPERIMENT (default frontier) into figures/, logged to its sweep; options in ARGS
	$(BIN)/python -m analysis frontier --experiment $(or $(EXPERIMENT),frontier) --out figures \
		$(if $(TRACKING_URI),--tracking-uri $(TRACKING_URI)) $(ARGS)

methods: $(INSTALLED) ## circuit discovery methods side by side on EXPERIMENT's checkpoints (after make reprune PRUNE="prune.method=...") into figures/methods/
	$(BIN)/python -m analysis methods --experiment $(or $(EXPERIMENT),frontier) --out figures/methods \
		$(if $(TRACKING_URI),--tracking-uri $(TRACKING_URI))

task-losses: $(INSTALLED) ## full-model loss of every task on every checkpoint of EXPERIMENT (default frontier): the quick suite's calibration
	$(BIN)/python -m sweep.orchestration.task_losses --experiment $(or $(EXPERIMENT),frontier) --tracking-uri $(or $(TRACKING_URI),$(STORE))

bench: $(INSTALLED) ## measure where a job's time goes (sparse/dense step, MFU, prune/train, logging, memory): bench/results.md
	$(BIN)/python -m bench $(ARGS)

circuits-bench: $(INSTALLED) ## circuit discovery against circuits planted by hand, every method (a few minutes): bench/circuit-bench/; options in ARGS
	$(BIN)/python -m bench.circuit_bench $(ARGS)

gpu-check: $(INSTALLED) ## on a machine with a CUDA GPU (< 8 min): the bench on the GPU in fp32 and bf16, a 2-point paper-grid smoke; bench/gpu/results.md
	$(BIN)/python -m bench.gpu $(ARGS)

test: $(INSTALLED) ## run the tests, one worker per core, then the signal tests alone (about 13 minutes on 2 cores with set-up)
	$(BIN)/python -m pytest -q -n $(or $(TEST_WORKERS),auto) -m "not slow and not slurm and not postgres and not ui and not serial" $(ARGS)
	$(BIN)/python -m pytest -q -m serial $(ARGS)

test-slow: $(INSTALLED) ## run the long checks marked slow
	$(BIN)/python -m pytest -q -m slow $(ARGS)

# A real one-node SLURM cluster on localhost, started and stopped by the tests (tests/slurm_cluster.py).
test-slurm: $(INSTALLED) ## run the SLURM launcher tests on a local one-node cluster (apt-installs slurm-wlm, munge if missing)
	@command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null || { \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; }
	$(BIN)/python -m pytest -q -m slurm $(ARGS)

# PostgreSQL (Debian's postgresql) and `mlflow server` on it as docker/compose.yaml runs them, started by the tests.
test-postgres: $(INSTALLED) ## run the tracking-server tests: PostgreSQL + MLflow server on localhost (apt-installs postgresql if missing)
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }
	$(BIN)/python -m pytest -q -m postgres $(ARGS)

# Debian's chromium driven by Playwright from PyPI (tests/test_ui.py): no `playwright install`, no browser download.
# Playwright is installed here, not in requirements.lock: only this target needs it, and every `make install`
# (the Docker image, a cluster's nodes) would otherwise carry its 165 MB (a Node.js driver).
PLAYWRIGHT_VERSION := 1.65.2
test-ui: $(INSTALLED) ## open make ui on a small real sweep in headless Chromium (apt-installs chromium if missing); screenshots: test-artifacts/ui/
	@command -v chromium >/dev/null || { \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@$(BIN)/pip show playwright 2>/dev/null | grep -qx 'Version: $(PLAYWRIGHT_VERSION)' || \
		$(BIN)/pip install --quiet playwright==$(PLAYWRIGHT_VERSION)
	$(BIN)/python -m pytest -q -m ui $(ARGS)

ui: $(INSTALLED) ## serve the MLflow UI on 127.0.0.1 (PORT=5000), one worker
	$(BIN)/mlflow server --backend-store-uri $(STORE) --artifacts-destination $(CURDIR)/mlartifacts \
		--host 127.0.0.1 --port $(PORT) --workers 1

# The team stack (docker/compose.yaml, README "Team setup"). Needs a Docker engine with the compose plugin.
docker-build: ## build the image sparsity-sweep:latest (CPU; a CUDA base: BASE_IMAGE=... TORCH_INDEX_URL=...)
	docker build -f docker/Dockerfile -t $(IMAGE) --build-arg GIT_COMMIT=$$(git rev-parse HEAD 2>/dev/null) \
		$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
		$(if $(TORCH_INDEX_URL),--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL)) .

docker-up: docker/.env ## start PostgreSQL and the MLflow server in the background; UI on http://127.0.0.1:5000
	$(COMPOSE) up -d --wait postgres mlflow

docker-sweep: docker/.env ## run the grid GRID in a container, logged to the compose MLflow server; overrides in ARGS
	$(COMPOSE) run --rm sweep make sweep GRID=$(GRID) ARGS="$(ARGS)"

docker-down: ## stop the stack (the database and artifact volumes stay)
	$(COMPOSE) down

docker/.env:
	@echo "docker/.env is missing: cp docker/env.example docker/.env, then set POSTGRES_PASSWORD in it" >&2; exit 1

clean: ## remove the virtual environment, caches and Hydra output folders (not the MLflow store)
	rm -rf $(VENV) .cache outputs multirun .pytest_cache
