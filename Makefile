# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both install what is missing (Debian packages, a virtual environment, the pinned CPU torch) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: install demo test test-fast bench fuzz lint format clean

$(STAMP): Makefile pyproject.toml constraints.txt scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,ray]"
	$(BIN)/python -c "import v2x, v2x.comm, v2x.tracking, v2x.datasets, v2x.sim"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/v2x demo

test: install
	$(BIN)/pytest -n $(JOBS) --timeout=900 tests

test-fast: install
	$(BIN)/pytest -n $(JOBS) -m "not slow" tests

bench: install
	$(BIN)/python -m bench.run_all

# every decoder on a node's receive path, FUZZ_N mutated messages each, JOBS workers (scripts/fuzz.py)
FUZZ_N ?= 1000000
fuzz: install
	$(BIN)/python scripts/fuzz.py --per-decoder $(FUZZ_N) --workers $(JOBS) --out bench/results/fuzz.json

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	bash scripts/lint-imports.sh

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
