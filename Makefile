# SomaKamachiq developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
BUF := web/node_modules/.bin/buf
export UV_CACHE_DIR := $(CURDIR)/.cache/uv
export UV_PYTHON_DOWNLOADS := never

.PHONY: help setup gen check-gen lint breaking test test-unit run down bench eval clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## install everything (Python env, web tooling, real servers), idempotently, into .cache/
	@scripts/bootstrap.sh

gen: ## regenerate gen/python, web/src/gen and deploy/envoy/envoy.yaml from proto/
	@scripts/bootstrap.sh --python-only
	@scripts/gen.sh
	@echo "generated gen/python, web/src/gen and deploy/envoy/envoy.yaml"

check-gen: ## fail when gen/, web/src/gen or deploy/envoy/envoy.yaml is stale against proto/
	@scripts/check-gen.sh

lint: ## ruff, mypy (strict), import-linter contracts, buf lint and format, tsc on web/
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	.venv/bin/lint-imports
	$(BUF) lint
	$(BUF) format --diff --exit-code
	web/node_modules/.bin/tsc -p web

breaking: ## buf breaking (FILE) against the contract as it stood before this session's work
	@scripts/breaking.sh

test: setup ## run every test (starts and stops the real servers itself)
	$(PY) -m pytest tests

test-unit: ## the fast unit tests only
	$(PY) -m pytest tests/unit

run: setup ## run the platform: real servers + all services + Envoy on 127.0.0.1:8080 (Ctrl-C stops)
	$(PY) -m skm_stack up

down: ## stop what `make run` started (by PID)
	$(PY) -m skm_stack down

bench: setup ## side-by-side ratios in one run: runtime, Envoy, policy, conversations, tools (python -m bench --help)
	$(PY) -m bench

eval: setup ## the registered models against the capsules in evals/ (python -m evals --help); report in .state/eval
	$(PY) -m evals

clean: ## remove servers' state (not the download cache)
	rm -rf .state
