# The README's commands. Each target builds the virtual environment it needs
# (.venv, the project installed in editable mode with its dev extras) first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
ARGS ?=

.PHONY: demo test bench lint typecheck tools phoenix clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Debian packages the integration tests run: prometheus (promtool and the server),
# prometheus-pushgateway and postgresql (the ledger's tests start their own server
# with initdb/pg_ctl in a temporary folder). Installed only when missing.
tools:
	@missing=""; \
	{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing="prometheus"; \
	command -v prometheus-pushgateway >/dev/null 2>&1 || missing="$$missing prometheus-pushgateway"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Arize Phoenix, the OTLP backend of tests/integration/test_phoenix.py, in its own
# virtual environment (its dependencies stay out of .venv). About a minute to install.
PHOENIX_VENV := .venv-phoenix
PHOENIX_VERSION := 20.26.1
PHOENIX_STAMP := $(PHOENIX_VENV)/.installed-$(PHOENIX_VERSION)

$(PHOENIX_STAMP):
	rm -rf $(PHOENIX_VENV)
	$(PYTHON) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PHOENIX_VENV)/bin/python -m pip install --quiet 'arize-phoenix==$(PHOENIX_VERSION)'
	touch $(PHOENIX_STAMP)

phoenix: $(PHOENIX_STAMP)

## The main job: a batch of synthetic multi-tenant risk requests, then a report.
demo: $(STAMP)
	$(PY) -m app $(ARGS)

## The whole test suite (unit, stress, integration), once. The bench extra is
## installed too: the benchmark smoke tests run each benchmark against its anchors.
test: $(BENCH_STAMP) tools phoenix
	$(PY) -m pytest

## Benchmarks against the anchors; rewrites docs/PERFORMANCE.md.
bench: $(BENCH_STAMP) tools
	$(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check app collectors tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(PHOENIX_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
