# Foresight — every target works on a fresh clone: the virtual environment is
# created and installed on first use and reused afterwards.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= var
export PATH := $(abspath $(BIN)):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help venv proto lint test test-unit test-integration test-e2e demo up down bench faults loadtest clean

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## Create the virtual environment and install (first use only)

proto: $(STAMP) ## Regenerate Python code (+ .pyi stubs) from protos/
	$(BIN)/python -m foresight.tools.protogen .

lint: $(STAMP) ## ruff (lint + format check), mypy --strict, import contracts, dead code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy foresight services bench loadtest tests
	$(BIN)/lint-imports --no-cache
	$(BIN)/vulture

test: lint ## Lint, type-check and run the whole test suite
	$(BIN)/pytest -q

test-unit: $(STAMP) ## Only the fast unit tests
	$(BIN)/pytest -q -m unit

test-integration: $(STAMP) ## In-process servers, databases, Chromium pages, the CLI against local services
	$(BIN)/pytest -q -m integration

test-e2e: $(STAMP) ## The three services as processes on PostgreSQL: the whole mission, crash, SIGTERM
	$(BIN)/pytest -q -m e2e

demo: $(STAMP) ## Generate data, start the services, run the whole mission over gRPC
	$(BIN)/python -m foresight.tools.demo --data $(DATA)/demo

up: $(STAMP) ## Start trainer, scorer and segmenter as local processes (SQLite)
	$(BIN)/python -m foresight.tools.localrun up --data $(DATA)

down: ## Stop the local processes started by `make up`
	@test -x $(BIN)/python && $(BIN)/python -m foresight.tools.localrun down --data $(DATA) || true

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## Benchmarks: prints a table, writes bench/results.json
	$(BIN)/python -m bench.run

faults: $(STAMP) ## kill -9 / SIGTERM fault suite, request fuzzer, path escapes; figures merge into bench/results.json
	$(BIN)/python -m bench.run --only faults --only fuzz

loadtest: $(STAMP) ## ghz (or h2load) against a running scorer and segmenter
	$(BIN)/python -m loadtest.run

clean: ## Remove the local data directory
	rm -rf $(DATA)
