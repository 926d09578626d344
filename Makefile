# Two entry points: `make run` (the service on the embedded database) and `make test`.
# Both create .venv and install the project into it on first use. `make check` lints, checks
# the formatting and type-checks (CI runs it before the tests); `make test-fast` leaves out the
# tests marked slow.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: run test test-fast check install clean

CHECKED = knowledge embeddings tests benchmarks

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first: unpinned, pip would pull a CUDA build (GBs).
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test,dev,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/hq-knowledge serve --sample

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

check: $(STAMP)
	$(BIN)/ruff check $(CHECKED)
	$(BIN)/ruff format --check $(CHECKED)
	$(BIN)/mypy $(CHECKED)

clean:
	rm -rf $(VENV) .pytest_cache
