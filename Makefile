# pg-bkp: `make help` lists the targets. `make demo` and `make test` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install system-deps test test-slow lint layer build invoke deploy demo bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

system-deps: ## apt packages the tests and demo need (installed when root)
	@bash .ci/system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv with the package, its `pgbkp` command and the dev tools
	@echo "installed: $(VENV)/bin/pgbkp"

test: system-deps install layer ## run the whole suite against real PostgreSQL, S3 and archive tools
	$(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: system-deps install layer ## the slow check kept out of `make test` (a ZIP64 member > 4 GiB)
	$(VENV)/bin/pytest -q -m slow $(PYTEST_ARGS)

lint: system-deps install ## ruff, mypy, and the deployment linters (sam validate --lint, cfn-lint, hadolint)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy handler/pgbkp
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

demo: system-deps install ## throwaway PostgreSQL + S3 server: back up, list, restore, show the result
	$(PY) -m tests.demo

bench: system-deps install ## benchmark against pg_dump > /dev/null and the naive dump->zip->upload (BENCH_ARGS=...)
	$(PY) tests/bench/bench_backup.py $(BENCH_ARGS)

clean: ## remove the venvs, caches and built layer
	rm -rf $(VENV) $(VENV)-lint .pytest_cache .ruff_cache .mypy_cache .hypothesis .aws-sam build dist
	rm -rf layers/postgresql layers/.cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
