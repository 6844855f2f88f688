# The two commands of the README: `make run` and `make test`. Both set themselves up on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= $(shell \
	if command -v python3.11 >/dev/null 2>&1; then echo python3.11; \
	elif python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then echo python3; \
	else echo python3.11; fi)

# mypy --strict (config in pyproject.toml) on those of these folders that hold Python files
TYPED_DIRS := $(shell for d in schemas services pathway_cli tests benchmarks; do \
	[ -n "$$(find $$d -name '*.py' 2>/dev/null | head -1)" ] && echo $$d; done)

.PHONY: help install run test lint typecheck pytest format contracts benchmark clean

help:
	@echo "make run      start broker, store and the five services (pathway up)"
	@echo "make test     lint, typecheck and the whole test suite"
	@echo "make contracts  regenerate schemas/jsonschema, schemas/README.md and docs/asyncapi"
	@echo "make benchmark  end-to-end throughput and latency against raw broker and store baselines"
	@echo "make install  create .venv and install everything (done by run and test as needed)"
	@echo "make clean    remove var/ and caches"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: Python 3.11 or newer is needed (tried '$(PYTHON)'); install it or set PYTHON=..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml schemas/pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e ./schemas -e '.[dev,embedded]'
	@touch $(STAMP)

install: $(STAMP)

# e.g. make run ARGS="--ephemeral"
run: $(STAMP)
	$(BIN)/pathway up $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy $(TYPED_DIRS)

# Regenerate the JSON Schemas, the provider guide and the AsyncAPI documents (commit them).
contracts: $(STAMP)
	$(BIN)/python -c 'from pathway_cli import contracts; [print(p) for p in contracts.write()]'

# Not a test: prints throughput, latency per hop and baselines; never gates CI.
benchmark: $(STAMP)
	$(BIN)/python -m benchmarks.run $(ARGS)

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .hypothesis build
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf
	find . -path ./$(VENV) -prune -o -type d -name '*.egg-info' -print0 | xargs -0 rm -rf
