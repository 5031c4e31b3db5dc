# Two commands on a fresh machine:  make demo  |  make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo lint test test-fast bench setup services clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	cd examples && ../$(BIN)/python quickstart.py

# Debian servers the integration tests start (on free ports, stopped afterwards) and the
# headless browser the console tests drive; installed once here when missing (needs root,
# as on CI), else the tests say what to install.
services:
	@if command -v redis-server >/dev/null && ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
		&& [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server postgresql chromium chromium-driver >/dev/null; \
	else echo "note: install the Debian packages redis-server, postgresql, chromium and chromium-driver for the integration tests"; fi

# ruff (config in pyproject.toml), mypy on volga/, and the import-linter layer contracts
# (the layer list in README "How it works").
lint: setup
	$(BIN)/ruff check
	$(BIN)/mypy
	$(BIN)/lint-imports

test: setup services
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m 'not slow and not integration'

bench: setup
	$(BIN)/python benchmarks/engine.py

clean:
	rm -rf $(VENV) volga_data examples/volga_data .pytest_cache .hypothesis .mypy_cache .ruff_cache .import_linter_cache
