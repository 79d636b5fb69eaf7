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

.PHONY: help install sweep reprune test test-slow ui clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(INSTALLED) ## create .venv and install the locked dependencies

sweep: $(INSTALLED) ## run the grid GRID (default quick) as a Hydra multirun; extra overrides in ARGS
	$(BIN)/python -m sweep -m experiment=$(GRID) $(ARGS)

reprune: $(INSTALLED) ## prune run RUN again with new settings, e.g. make reprune RUN=<id> PRUNE="prune.ablation=zero"
	$(BIN)/python -m sweep.reprune $(RUN) $(PRUNE)

test: $(INSTALLED) ## run the tests (a few minutes on 2 cores)
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: $(INSTALLED) ## run the long checks marked slow
	$(BIN)/python -m pytest -q -m slow $(ARGS)

ui: $(INSTALLED) ## serve the MLflow UI on 127.0.0.1 (PORT=5000), one worker
	$(BIN)/mlflow server --backend-store-uri $(STORE) --artifacts-destination $(CURDIR)/mlartifacts \
		--host 127.0.0.1 --port $(PORT) --workers 1

clean: ## remove the virtual environment, caches and Hydra output folders (not the MLflow store)
	rm -rf $(VENV) .cache outputs multirun .pytest_cache
