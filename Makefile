# The two commands: `make run` (main job) and `make test` (whole test suite).
# Both create .venv with the system Python (3.11+) when it is missing and
# install the package (editable) with what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test bench lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamp files re-install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/fedjax-lite run $(ARGS)

# One pytest worker per core, a test file per worker at a time (so module-scoped
# fixtures, like the benchmark report, are built once).
WORKERS ?= auto

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile $(ARGS)

bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks $(ARGS)

# The API reference from the docstrings (Google style), as HTML in build/api.
docs: $(VENV)/.installed-dev
	$(BIN)/python -m pdoc --docformat google -o build/api fedjax_lite
	@echo "open build/api/index.html"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check fedjax_lite benchmarks tests notebooks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
