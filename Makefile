# Two commands for a fresh clone (only Python needed): `make repro` and `make test`; `make demo` for a first look.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PATH := $(abspath $(BIN)):$(PATH)
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: repro test test-fast install dvc-wrapper demo ui

install: $(STAMP)

# (Re)install when pyproject.toml changes; the stamp makes a present, up-to-date .venv a no-op.
# The grep only hides pip's notes about this machine's absent local index folders.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]' 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(MAKE) --no-print-directory dvc-wrapper
	touch $@

# DVC runs each stage's `python -m ...` through PATH, so `.venv/bin/dvc repro` without the venv first on PATH
# would run the system's python (no torch) or none. This wrapper, in place of pip's dvc script, puts the venv's
# bin first and runs DVC with the venv's python.
dvc-wrapper:
	printf '%s\n' '#!/bin/sh' '# written by `make install` (see the Makefile): the venv first on PATH for the stages' \
	  'bin=$$(CDPATH= cd -- "$$(dirname -- "$$0")" && pwd)' 'PATH="$$bin:$$PATH" exec "$$bin/python" -m dvc "$$@"' \
	  > $(BIN)/dvc.tmp
	chmod +x $(BIN)/dvc.tmp && mv $(BIN)/dvc.tmp $(BIN)/dvc

# Validate params.yaml first. The DAG's validate stage does the same for a plain `dvc repro`, but a
# file that is not UTF-8 or YAML, or gives a key twice, fails inside DVC (which reads params.yaml to
# build dvc.yaml's stages) before any stage runs, in DVC's words; this check says it in one line.
# Stages queue their MLflow runs and a background logger writes them; the flush waits for the last ones.
# `make repro PROFILE=mnist` runs the same DAG on profiles/mnist.yaml in runs/mnist/ (pipelines/orchestration/profile.py).
repro: $(STAMP)
ifdef PROFILE
	$(BIN)/python -m pipelines.orchestration.profile $(PROFILE)
else
	$(BIN)/python -m pipelines.params
	$(BIN)/dvc repro || { $(BIN)/python -m pipelines.plumbing.tracking flush; exit 1; }
	$(BIN)/python -m pipelines.plumbing.tracking flush
	$(BIN)/python -m pipelines.stages.claims summary metrics/claims.json
endif
	@echo "MLflow: \`make ui$(if $(PROFILE), PROFILE=$(PROFILE))\` starts its UI and prints the address of these runs"

# MLflow's UI on 127.0.0.1, at the address of the experiment's runs table (MLflow 3 opens a new browser on its GenAI
# overview otherwise); `make ui PROFILE=mnist` for a profile's experiment. Ctrl-C stops it.
ui: $(STAMP)
	$(BIN)/python -m pipelines.orchestration.ui $(if $(PROFILE),--experiment trilemma-$(PROFILE))

# The whole DAG on profiles/demo.yaml's tiny budgets in demo/ (a scratch copy; the workspace is untouched): about two
# minutes.
demo: $(STAMP)
	$(BIN)/python -m pipelines.orchestration.demo

# One xdist worker per logical CPU: the end-to-end tests spend their time in stage subprocesses (conftest gives each
# worker its share of the cores); loadgroup spreads tests one by one but keeps a module with a costly module-scoped
# fixture (a Prefect server, a trained evaluator) on one worker. `make test TEST_WORKERS=0` runs serially.
TEST_WORKERS ?= logical
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# The unit tests alone, for the edit-test loop: no DVC repro, Prefect server or profile build (conftest marks those e2e).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not e2e"
