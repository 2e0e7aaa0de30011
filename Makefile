# The two set-up commands of the README: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
# The repo has a folder named operator/: never let the working directory shadow the stdlib.
export PYTHONSAFEPATH := 1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS_CACHE ?= $(HOME)/.cache/infergraph
TYPECHECK_ROOT := $(VENV)/typecheck

.PHONY: demo test lint typecheck contracts components kube jaeger unit bench bench-router install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/infergraph demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy and import-linter cannot follow setuptools' package-dir mapping, so they read a tree of
# links that has the installed shape (infergraph/router -> router, ...).
$(TYPECHECK_ROOT)/infergraph:
	@mkdir -p $(TYPECHECK_ROOT)/infergraph
	@for pkg in router predictors operator; do ln -sfn $(CURDIR)/$$pkg $(TYPECHECK_ROOT)/infergraph/$$pkg; done

typecheck: $(STAMP) $(TYPECHECK_ROOT)/infergraph
	cd $(TYPECHECK_ROOT) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
		-p infergraph.router -p infergraph.predictors -p infergraph.operator

contracts: $(STAMP) $(TYPECHECK_ROOT)/infergraph
	cd $(TYPECHECK_ROOT) && PYTHONPATH=$(CURDIR)/$(TYPECHECK_ROOT) $(CURDIR)/$(BIN)/lint-imports \
		--no-cache $(CURDIR)/pyproject.toml

# Real model servers for the protocol tests (Triton, KServe, vLLM), cached in $(TOOLS_CACHE).
components:
	PYTHON=$(PYTHON) tests/components/install.sh $(TOOLS_CACHE)

# Jaeger v2 for the trace tests, built from the Go module proxy into $(TOOLS_CACHE).
jaeger:
	tests/observability/build_jaeger.sh $(TOOLS_CACHE)

# kube-apiserver, etcd and the Knative Service CRD for the operator tests, cached in $(TOOLS_CACHE).
kube:
	tests/kube/build.sh $(TOOLS_CACHE)

unit: $(STAMP)
	INFERGRAPH_CACHE=$(TOOLS_CACHE) $(BIN)/python -m pytest

test: lint typecheck contracts components kube jaeger unit

# The peers benchmark (issue 6): infergraph, KServe's router, Ray Serve; results in bench/results.
bench: $(STAMP) jaeger
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	bash bench/install_peers.sh $(TOOLS_CACHE)
	INFERGRAPH_CACHE=$(TOOLS_CACHE) $(BIN)/python bench/peers.py

# The router's own costs: its two HTTP clients, metrics and tracing, Triton REST and gRPC.
bench-router: $(STAMP) components jaeger
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/router_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
