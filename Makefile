# Every target works on a fresh machine with Python 3.11 and make: `.venv` is created and
# filled on first use, and refreshed whenever pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint check demo up bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
