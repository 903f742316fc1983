# Two commands on a fresh machine: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV := .tools/bin/uv
VENV := .venv

.PHONY: setup run test test-fast bench lint clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==0.13.8

# --compile-bytecode: the libraries' .pyc are written once here. Where PYTHONDONTWRITEBYTECODE
# is set (as on the CI machines) Python never writes them itself, and every process (each test
# server, CLI call and bench worker) compiled every library it imports again: 2.7 s to start
# the CLI instead of 1 s.
$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	touch $@

setup: $(VENV)/.synced

run: setup
	$(VENV)/bin/clearhouse serve --demo

test: setup
	scripts/test.sh

test-fast: setup
	scripts/test.sh -m "not slow"

bench: setup
	scripts/bench.sh

lint: setup
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) .tools var
