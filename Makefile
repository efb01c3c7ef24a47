# The two commands a user needs: `make run` and `make test`. Both set everything up from nothing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench schemas setup clean

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"' \
	  || { echo "make: Python 3.11 is required (set PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || { echo "make: npm (Node.js 18+) is required for Azurite"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest

run: setup
	@test -f local.settings.json || cp local.settings.json.example local.settings.json
	$(BIN)/python -m devhost.run $(RUN_ARGS)

bench: setup
	$(BIN)/python bench/sandbox_bench.py

schemas: $(VENV)/.installed
	$(BIN)/python -c 'import json; from shared.openapi import mail_schema; \
	  open("schemas/mail.schema.json", "w").write(json.dumps(mail_schema(), indent=2) + "\n")'

clean:
	rm -rf $(VENV) node_modules .sandbox .pytest_cache .mypy_cache .ruff_cache
