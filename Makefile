# Chat4All: `make dev` runs the platform locally, `make test` runs the whole suite against real servers.
SHELL := /bin/bash
PYTHON313 ?= $(shell p="$$(pyenv root 2>/dev/null)/versions/3.13.0/bin/python3.13"; [ -x "$$p" ] && echo "$$p" || command -v python3.13)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev test unit lint format clean system-packages

$(STAMP): layers/requirements.txt requirements-dev.txt
	@[ -n "$(PYTHON313)" ] || { echo "Python 3.13 is required (pyenv 3.13.0 or python3.13 on PATH)"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON313) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r layers/requirements.txt -r requirements-dev.txt
	@touch $@

system-packages:
	@scripts/ensure-system-packages.sh

dev: $(STAMP) system-packages
	$(PY) -m devstack

test: $(STAMP) system-packages lint
	$(PY) -m pytest

unit: $(STAMP)
	$(PY) -m pytest tests/unit

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	@# each function is a module named `app`; Powertools' idempotent_function decorator is untyped
	@for f in functions/*/app.py; do MYPYPATH=layers $(PY) -m mypy --strict --follow-imports=silent \
		--disable-error-code untyped-decorator $$f || exit 1; done

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# wipes the local state (databases, queues' keys, logs) of `make dev`; the virtualenvs stay
clean:
	@python3 -m devstack.state
	rm -rf .pytest_cache .mypy_cache .ruff_cache
