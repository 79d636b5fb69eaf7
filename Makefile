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

# torch is pinned in the same pip call: any other torch requirement pulls GBs of CUDA packages.
$(INSTALLED): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0 -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

.PHONY: help install sweep search reprune frontier task-losses bench test test-slow test-slurm ui clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(INSTALLED) ## create .venv and install the locked dependencies

sweep: $(INSTALLED) ## run the grid GRID (default quick) as a Hydra multirun; extra overrides in ARGS
	$(BIN)/python -m sweep -m experiment=$(GRID) $(ARGS)

# hydra/sweeper=optuna as well: conf/config.yaml's own `override hydra/sweeper` wins over the experiment's.
search: $(INSTALLED) ## run or resume the Optuna frontier search (study: optuna.db, Pareto set: frontier-pareto.csv); overrides in ARGS
	$(BIN)/python -m sweep -m experiment=search $(ARGS)

reprune: $(INSTALLED) ## prune again: RUN=<run id> or EXPERIMENT=<name> (all its runs), PRUNE="prune.ablation=zero"
	$(BIN)/python -m sweep.reprune $(if $(EXPERIMENT),--experiment $(EXPERIMENT),$(RUN)) $(PRUNE)

# EXPERIMENT has no global default: `make reprune` tells RUN from EXPERIMENT by whether it is set.
frontier: $(INSTALLED) ## frontier tables and figures of EXPERIMENT (default frontier) into figures/, logged to its sweep; options in ARGS
	$(BIN)/python -m analysis frontier --experiment $(or $(EXPERIMENT),frontier) --out figures $(ARGS)

task-losses: $(INSTALLED) ## full-model loss of every task on every checkpoint of EXPERIMENT (default frontier): the quick suite's calibration
	$(BIN)/python -m sweep.task_losses --experiment $(or $(EXPERIMENT),frontier) --tracking-uri $(STORE)

bench: $(INSTALLED) ## measure where a job's time goes (sparse/dense step, MFU, prune/train, logging, memory): bench/results.md
	$(BIN)/python -m bench $(ARGS)

test: $(INSTALLED) ## run the tests (a few minutes on 2 cores)
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: $(INSTALLED) ## run the long checks marked slow
	$(BIN)/python -m pytest -q -m slow $(ARGS)

# A real one-node SLURM cluster on localhost, started and stopped by the tests (tests/slurm_cluster.py).
test-slurm: $(INSTALLED) ## run the SLURM launcher tests on a local one-node cluster (apt-installs slurm-wlm, munge if missing)
	@command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null || { \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; }
	$(BIN)/python -m pytest -q -m slurm $(ARGS)

ui: $(INSTALLED) ## serve the MLflow UI on 127.0.0.1 (PORT=5000), one worker
	$(BIN)/mlflow server --backend-store-uri $(STORE) --artifacts-destination $(CURDIR)/mlartifacts \
		--host 127.0.0.1 --port $(PORT) --workers 1

clean: ## remove the virtual environment, caches and Hydra output folders (not the MLflow store)
	rm -rf $(VENV) .cache outputs multirun .pytest_cache
