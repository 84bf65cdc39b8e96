# cohortflow — two commands set everything up: `make demo` and `make test`.
# Needs only python3 (3.11+) and make; everything else installs from uv.lock into .venv.

PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
TOOLS := .tools
UV := $(TOOLS)/bin/uv
BIN := $(VENV)/bin
export UV_PROJECT_ENVIRONMENT := $(VENV)

DATA_DIR ?= data/bars
OUTPUT_ROOT ?= output
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: help install demo test test-quick test-browser test-topology ui dg-check bench lint format clean

help:
	@echo "make demo        install, copy the built-in real data, materialize the whole graph, print a summary"
	@echo "make test        the whole test suite (slow end-to-end tests included)"
	@echo "make test-quick  the quick subset (no slow end-to-end, no browser)"
	@echo "make test-topology  one partition on PostgreSQL + Celery workers + S3 (moto), all on 127.0.0.1"
	@echo "make ui          the Dagster UI (webserver + daemon) on http://127.0.0.1:3000"
	@echo "make dg-check    dg check defs and dg list defs"
	@echo "make bench       benchmarks (BENCH_QUICK=1 for a short run)"
	@echo "make lint        ruff"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The lock file is the source of truth: `uv sync --frozen` never re-resolves. Every extra
# but `topology` (PostgreSQL, Celery, S3 clients and a moto server: `make test-topology`
# adds them), so `make demo` stays light.
EXTRAS := --extra tune
$(VENV)/.installed: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen $(EXTRAS)
	@rm -f $(VENV)/.installed-topology
	@touch $@

$(VENV)/.installed-topology: $(VENV)/.installed
	$(UV) sync --frozen $(EXTRAS) --extra topology
	@touch $@

install: $(VENV)/.installed

demo: install
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/cohortflow demo --data $(DATA_DIR) --out $(OUTPUT_ROOT)

test: install
	$(BIN)/python -m pytest -q -m "not topology"

test-quick: install
	$(BIN)/python -m pytest -q -m "not slow and not browser and not topology"

test-browser: install
	$(BIN)/python -m pytest -q -m browser

# Needs Debian's postgresql and redis-server (.ci/run installs them; the test skips, saying
# which is missing, without them). Its report: what was compared, what it took.
TOPOLOGY_REPORT ?= $(CURDIR)/test-output/topology.txt
test-topology: $(VENV)/.installed-topology
	@rm -f $(TOPOLOGY_REPORT)
	COHORTFLOW_TOPOLOGY_REPORT=$(TOPOLOGY_REPORT) $(BIN)/python -m pytest -q -m topology -rs tests/topology
	@test ! -f $(TOPOLOGY_REPORT) || cat $(TOPOLOGY_REPORT)

ui: install
	@$(BIN)/python -c "from cohortflow_dagster.resources.home import ensure_dagster_home; ensure_dagster_home()"
	COHORTFLOW_DATA_DIR=$(DATA_DIR) COHORTFLOW_OUTPUT_ROOT=$(OUTPUT_ROOT) COHORTFLOW_SETTINGS=$(CURDIR)/config/demo.yaml \
		$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000 --log-level info

# dg's view of the project ([tool.dg] in pyproject.toml): the definitions load and list
dg-check: install
	$(BIN)/dg check defs
	$(BIN)/dg list defs

bench: install
	$(BIN)/python bench/run.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache
