# Chat4All: `make dev` runs the platform locally, `make test` runs the whole suite against real servers.
SHELL := /bin/bash
PYTHON313 ?= $(shell p="$$(pyenv root 2>/dev/null)/versions/3.13.0/bin/python3.13"; [ -x "$$p" ] && echo "$$p" || command -v python3.13)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# AWS SAM CLI in a virtualenv of its own: it pins its own aws-sam-translator and cfn-lint (sam/requirements.txt)
SAM_VENV := .sam-venv
SAM_STAMP := $(SAM_VENV)/.installed
# `sam build` builds python3.13 functions with the python3.13 it finds on PATH; no telemetry from CI
SAM := SAM_CLI_TELEMETRY=0 PATH="$(dir $(PYTHON313)):$$PATH" $(SAM_VENV)/bin/sam

.PHONY: dev test unit lint format clean system-packages bench redrive chaos sam-check backup restore

$(STAMP): layers/requirements.txt requirements-dev.txt
	@[ -n "$(PYTHON313)" ] || { echo "Python 3.13 is required (pyenv 3.13.0 or python3.13 on PATH)"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON313) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r layers/requirements.txt -r requirements-dev.txt
	@touch $@

$(SAM_STAMP): sam/requirements.txt
	@[ -n "$(PYTHON313)" ] || { echo "Python 3.13 is required (pyenv 3.13.0 or python3.13 on PATH)"; exit 1; }
	@[ -x $(SAM_VENV)/bin/python ] || $(PYTHON313) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install -q --disable-pip-version-check -r sam/requirements.txt
	@touch $@

# what `sam deploy` would first do: the template validated and linted by SAM itself, every function and the layer
# built (.aws-sam/, samconfig.toml's cached build)
sam-check: $(SAM_STAMP)
	$(SAM) validate --lint --region us-east-1
	$(SAM) build --region us-east-1

system-packages:
	@scripts/ensure-system-packages.sh

dev: $(STAMP) system-packages
	$(PY) -m devstack

test: $(STAMP) system-packages lint sam-check
	$(PY) -m pytest

bench: $(STAMP) system-packages
	$(PY) -m bench.load

# dead-lettered records of the running `make dev` stack back to their queues (safe to run twice)
redrive: $(STAMP)
	$(PY) -m devstack.ops redrive

# both databases of the running `make dev` stack (else DATABASE_URL, the owner, and MONGODB_URI) into a new
# directory under backups/ (CHAT4ALL_BACKUP_DIR), its path the last line; `make restore BACKUP=<dir>` brings it
# back, refusing databases that are not empty unless FORCE=1 (docs/OPERATIONS.md)
backup: $(STAMP)
	@$(PY) -m devstack.ops backup

restore: $(STAMP)
	@[ -n "$(BACKUP)" ] || { echo "make restore BACKUP=<backup directory> [FORCE=1]"; exit 2; }
	@$(PY) -m devstack.ops restore "$(BACKUP)" $(if $(filter 1,$(FORCE)),--force)

# fault injection: N messages while servers, functions and the platform fail one at a time (bench/chaos.py);
# CHAOS_ARGS="--messages 2000" for a shorter run
chaos: $(STAMP) system-packages
	$(PY) -m bench.chaos $(CHAOS_ARGS)

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
