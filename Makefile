# The two commands a user needs: `make run` and `make test`. Both set everything up from nothing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench faults schemas screenshots setup clean

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

TEST_WORKERS ?= 2

# The set-up side by side (make -j); then the suite over $(TEST_WORKERS) workers (pytest-xdist; each worker
# starts its own Azurite and sandbox) while lint and infra-check run beside it; the slowest tests are listed.
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target setup debian-tools
	@$(MAKE) --no-print-directory -j2 --output-sync=target lint infra-check & checks=$$!; \
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --durations=15; tests=$$?; \
	wait $$checks || { echo "make: lint or infra-check failed (their output is above)"; exit 1; }; \
	exit $$tests

# Debian's packages some checks need, each installed when its command is missing and this machine lets us (root,
# or passwordless sudo), all in one apt-get: prometheus-alertmanager (amtool) for the end-to-end alert test,
# chromium for the mail layout test and `make screenshots`, shellcheck for infra-check. Where they cannot be
# installed, the tests that need them say why they skip (and fail under CI=true).
DEBIAN_TOOLS := amtool:prometheus-alertmanager chromium:chromium shellcheck:shellcheck
debian-tools:
	@missing=; for pair in $(DEBIAN_TOOLS); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null; then \
	    echo "make: installing$$missing (Debian)"; \
	    $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 \
	    || { $$SUDO apt-get update -qq >/dev/null && \
	         $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }; \
	  else echo "make: cannot install$$missing here; the tests that need them will be skipped"; fi; \
	fi

run: setup
	@test -f local.settings.json || cp local.settings.json.example local.settings.json
	$(BIN)/python -m devhost.run $(RUN_ARGS)

BENCHMARKS := sandbox_bench cold_start intake_latency drain cpu_per_mail digest_cost lane_latency deployment_size

# every figure of bench/RESULTS.md; one script each, each printing `BENCH <name> <value> <unit> | ...`
# lines; bench/summary.py runs them in turn and ends with the one summary table (output in bench/results/)
bench: setup
	$(BIN)/python bench/summary.py $(BENCHMARKS)

# the mail path under injected faults (Storage stopped mid-drain; Graph errors and dropped connections; lost answers)
faults: setup
	$(BIN)/python bench/fault_run.py

screenshots: $(VENV)/.installed debian-tools
	$(BIN)/python docs/screenshot.py

schemas: $(VENV)/.installed
	$(BIN)/python -c 'import json; from shared.openapi import mail_schema; \
	  open("schemas/mail.schema.json", "w").write(json.dumps(mail_schema(), indent=2) + "\n")'

clean:
	rm -rf $(VENV) .venv-checkov node_modules .sandbox .pytest_cache .mypy_cache .ruff_cache

# Offline checks of the deployment (docs/deploy.md): checkov over the Bicep, in a virtualenv of its
# own (its dependencies are many and must not meet the app's), and shellcheck over the admin scripts.
# tests/test_infra.py does the structural checks (settings, roles, security properties).
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
.PHONY: infra-check debian-tools

infra-check: $(CHECKOV_VENV)/.installed debian-tools
	$(CHECKOV_VENV)/bin/checkov --directory infra --framework bicep --compact --quiet --skip-download
	@if command -v shellcheck >/dev/null; then shellcheck --severity=style scripts/*.sh; \
	elif [ -n "$$CI" ]; then echo "make: shellcheck is missing (CI=true)"; exit 1; \
	else echo "make: shellcheck is missing; the bash scripts were not checked"; fi

$(CHECKOV_VENV)/.installed:
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	touch $@
