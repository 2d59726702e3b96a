# The two commands a newcomer needs: `make run` and `make test`.
# Each creates the virtual environment and installs what it needs on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test lint typecheck unit bench soak tui stress clean install install-dev redis chromium postgresql

# The web client too: open http://127.0.0.1:8081/ (ARGS="--ws ..." moves it, "--ws ''" is off).
# --user-rooms: anyone may try /create (docs/moderation.md); a deployment decides for itself.
run: $(VENV)/.installed
	$(BIN)/roomchat serve --ws 127.0.0.1:8081 --user-rooms $(ARGS)

tui: $(VENV)/.installed
	$(BIN)/roomchat tui $(ARGS)

stress: $(VENV)/.installed
	$(BIN)/roomchat stress $(ARGS)

test: $(VENV)/.installed-dev redis chromium postgresql
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest $(ARGS)

unit: $(VENV)/.installed-dev redis chromium postgresql
	$(BIN)/pytest $(ARGS)

bench: $(VENV)/.installed-dev redis
	$(BIN)/python benchmarks/run.py $(ARGS)

soak: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/soak.py $(ARGS)

# The tests start their own redis-server processes (>= 7) on free ports; this finds one
# (or $ROOMCHAT_REDIS_SERVER) or, as root on Debian, installs the package without
# starting its service.
redis:
	@scripts/ensure-redis

# The browser tests (tests/test_browser.py) drive Debian's chromium through its
# chromedriver; this finds them or, as root on Debian, installs the two packages.
chromium:
	@scripts/ensure-chromium

# The store tests (tests/server/store/) start their own PostgreSQL servers (initdb in a
# temporary directory, a free port); this finds Debian's server binaries or, as root,
# installs the package without starting its service.
postgresql:
	@scripts/ensure-postgresql

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Python 3.11+ is required; fail early with a clear message otherwise.
$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "roomchat needs Python 3.11 or newer (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(VENV)/.installed $@

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
