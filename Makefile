# The two commands: `make run` (main job) and `make test` (whole test suite).
# Both create .venv with the system Python (3.11+) when it is missing and
# install the package (editable) with what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test bench bench-peers bench-gpu gpu-wheels lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamp files re-install whenever pyproject.toml changes. pip byte-compiles what it installs
# on one core; compileall does it on all of them and skips the packages' own test suites
# (the dev install: 44 s -> 30 s on two cores); a file that does not compile is left to
# Python at import, as pip leaves it.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --no-compile
BYTE_COMPILE = $(BIN)/python -m compileall -q -j 0 -x '/tests?/' \
  "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null || true

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e .
	$(BYTE_COMPILE)
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e ".[dev]"
	$(BYTE_COMPILE)
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/fedjax-lite run $(ARGS)

# One pytest worker per core, a test file per worker at a time (so module-scoped
# fixtures, like the benchmark report, are built once).
WORKERS ?= auto

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile $(ARGS)

# The CPU benchmarks (docs/performance.md): ARGS="--workload w1" (w1..w5) for one workload,
# ARGS="--all --report DIR" for all of them with a report.
bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks $(ARGS)

# fedjax_lite beside its peers on W1 and W2, round-robin in one run (docs/performance.md,
# "Against other simulators"): FedJAX, Flower, pfl-research (1 and 2 processes), a PyTorch
# loop and torch.func.vmap, each in its own venv under .peers/ made from
# benchmarks/peers/requirements/*.txt (a peer that fails to install is reported and
# skipped); results check first. Writes docs/benchmarks/peers/ and the README's table.
# ARGS="--passes 1 --cases w2-1000" for less.
bench-peers: $(VENV)/.installed
	$(BIN)/python -m benchmarks.peers --install --readme README.md $(ARGS)

# The accelerator suite (benchmarks/gpu.py) on a GPU/TPU machine, in one process:
# W1 and W2 at up to 10,000 / 100,000 clients per round, a 1,000,000-client
# population, PyTorch on the same card, the card's peaks; results, report and plot
# in docs/benchmarks/gpu (described in docs/performance.md, "On a GPU"). It runs with
# the machine's own python3, whose jax must be the accelerator build (a venv here would
# install the CPU one). The packages that machine lacks travel as wheels:
# `make gpu-wheels` here puts them in .whl/, and bench-gpu installs .whl/*.whl into
# $(GPU_SITE) first when .whl/ exists (see CONTRIBUTING.md). ARGS=--quick is a smoke
# run on any machine.
GPU_PYTHON ?= python3
GPU_REPORT ?= docs/benchmarks/gpu
GPU_SITE   ?= /tmp/fedjax-lite-site
# What the accelerator image lacks of this package's dependencies (dp-accounting is
# pure Python; its other needs are on the image).
GPU_WHEELS ?= dp-accounting==0.6.0

bench-gpu:
	@if [ -d .whl ]; then $(GPU_PYTHON) -m pip install --quiet --no-index --no-deps \
	  --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) .whl/*.whl; fi
	PYTHONPATH=$(CURDIR):$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) -m benchmarks \
	  --suite gpu --report $(GPU_REPORT) $(ARGS)

gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

# The guide (docs/*.md, as HTML) and the API reference from the docstrings (Google style,
# by pdoc, in build/docs/api), built together into build/docs by docs/build.py.
docs: $(VENV)/.installed-dev
	$(BIN)/python docs/build.py
	@echo "open build/docs/index.html"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check fedjax_lite benchmarks tests notebooks docs

clean:
	rm -rf $(VENV) .peers build *.egg-info .pytest_cache .hypothesis
