# pg-bkp: `make help` lists the targets. `make demo` and `make test` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
# One venv, two stamps: what `pgbkp` needs to run (install), and the test and lint tools on top (dev).
# Each is redone only when pyproject.toml changes, so a repeated `make test` does not reinstall.
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=
BENCH_ARGS ?=
BENCH_MANY_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install dev system-deps test test-slow lint layer build invoke deploy demo bench bench-many clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

system-deps: ## apt packages the tests and demo need (installed when root)
	@bash .ci/system-deps.sh

# Editable (-e), so the command runs the checked-out code: a `git pull` needs no reinstall unless
# pyproject.toml changed, and `make dev` later adds its tools to the same venv without replacing the package.
$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[runner]'
	@touch $@

$(DEV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[dev,runner]'
	@touch $@ $(RUNTIME_STAMP)

install: $(RUNTIME_STAMP) ## create .venv with the `pgbkp` command and only what it needs to run
	@echo "installed: $(VENV)/bin/pgbkp (make dev adds the test and lint tools)"

dev: $(DEV_STAMP) ## install, plus the test and lint tools (pytest, moto, ruff, mypy, import-linter)
	@echo "installed: $(VENV)/bin/pgbkp and the test and lint tools"

# Two workers, one file each at a time (a file's module fixtures stay on one worker): the suite waits on
# servers and subprocesses more than it computes, so two halve the time on 2 cores (docs/testing.md).
test: system-deps dev layer ## run the whole suite against real PostgreSQL, S3 and archive tools
	$(VENV)/bin/pytest -q -m "not slow" -n 2 --dist loadfile $(PYTEST_ARGS)

test-slow: system-deps dev layer ## the slow check kept out of `make test` (a ZIP64 member > 4 GiB)
	$(VENV)/bin/pytest -q -m slow $(PYTEST_ARGS)

lint: system-deps dev ## ruff, mypy, import contracts (.importlinter), deployment linters (sam, cfn-lint, hadolint)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy handler/pgbkp
	$(VENV)/bin/lint-imports --no-logo --no-cache .importlinter
	bash .ci/lint-infra.sh

layer: ## build the PostgreSQL 18 client layer into layers/postgresql (bin/, lib/)
	bash layers/build.sh

SAM := $(VENV)-lint/bin/sam
DOCKER_CHECK := docker info >/dev/null 2>&1 || { echo "this target needs a running Docker engine: sam builds the image with it"; exit 1; }

$(SAM):
	bash .ci/lint-infra.sh

build: layer $(SAM) ## sam build: the Lambda container image (needs a Docker engine)
	@$(DOCKER_CHECK)
	$(SAM) build

invoke: build ## sam local invoke BackupFunction, EVENT=events/connection-by-name.json by default (needs Docker)
	$(SAM) local invoke BackupFunction -e $${EVENT:-events/connection-by-name.json}

deploy: build ## sam deploy --guided (needs Docker and AWS credentials)
	$(SAM) deploy --guided

demo: system-deps dev ## throwaway PostgreSQL + S3 server: back up, list, restore, show the result
	$(PY) -m tests.demo

bench: system-deps dev ## benchmark against pg_dump > /dev/null and the naive dump->zip->upload (BENCH_ARGS=...), then bench-many
	$(PY) tests/bench/bench_backup.py $(BENCH_ARGS)
	$(PY) tests/bench/bench_many.py $(BENCH_MANY_ARGS)

bench-many: system-deps dev ## 200 small databases: pgbkp against the usual loops, requests per database (BENCH_MANY_ARGS=...)
	$(PY) tests/bench/bench_many.py $(BENCH_MANY_ARGS)

clean: ## remove the venvs, caches and built layer
	rm -rf $(VENV) $(VENV)-lint .pytest_cache .ruff_cache .mypy_cache .hypothesis .aws-sam build dist
	rm -rf layers/postgresql layers/.cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
