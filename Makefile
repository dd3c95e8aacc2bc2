# The README's commands. Each target builds the virtual environment it needs
# (.venv, the project installed in editable mode with its dev extras) first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
ARGS ?=

.PHONY: demo test bench lint typecheck tools clean

$(STAMP): pyproject.toml collectors/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# promtool (Debian's prometheus package) is needed by the exposition and alert-rule tests.
tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus package (promtool)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

## The main job: a batch of synthetic multi-tenant risk requests, then a report.
demo: $(STAMP)
	$(PY) -m app $(ARGS)

## The whole test suite (unit, stress, integration), run once with the compiled
## hot path (collectors/_speedups.c) and once with its pure-Python twin.
test: $(STAMP) tools
	$(PY) -m pytest
	RISK_ENGINE_PURE_PYTHON=1 $(PY) -m pytest -q

## Benchmarks against the anchors; rewrites docs/PERFORMANCE.md.
bench: $(BENCH_STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check app collectors tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
