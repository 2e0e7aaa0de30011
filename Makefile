# The two set-up commands of the README: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
# The repo has a folder named operator/: never let the working directory shadow the stdlib.
export PYTHONSAFEPATH := 1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS_CACHE ?= $(HOME)/.cache/infergraph

.PHONY: demo test lint typecheck contracts pyright components kube jaeger images cluster unit bench bench-router bench-resilience bench-grpc install clean

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
	$(BIN)/python bench/readme.py --check || (echo "README's benchmark section is stale: run bench/readme.py" && exit 1)

# The code, the tests and the benchmarks, as one strict program (infergraph.* resolves through
# src/infergraph, the tests' own modules relative to the repository).
typecheck: $(STAMP)
	$(BIN)/mypy -p infergraph
	$(BIN)/mypy tests bench

contracts: $(STAMP)
	$(BIN)/lint-imports --no-cache

# Every import resolves as an editor (pyright, Pylance) sees it.
pyright: $(STAMP)
	$(BIN)/pyright

# Real model servers for the protocol tests (Triton, KServe, vLLM), cached in $(TOOLS_CACHE).
components:
	PYTHON=$(PYTHON) tests/components/install.sh $(TOOLS_CACHE)

# Jaeger v2 for the trace tests, built from the Go module proxy into $(TOOLS_CACHE).
jaeger:
	tests/observability/build_jaeger.sh $(TOOLS_CACHE)

# kube-apiserver, etcd and the Knative Service CRD for the operator tests, cached in $(TOOLS_CACHE).
kube:
	tests/kube/build.sh $(TOOLS_CACHE)

# The router and operator images, built with podman on a local Debian base (cached).
images:
	tests/images/build.sh $(TOOLS_CACHE)

# The cluster tier's pieces: kubelet, controller-manager, scheduler, kube-proxy, CoreDNS, Knative
# Serving and the images it runs, with containerd from Debian (cached; includes `images`).
cluster:
	tests/cluster/build.sh $(TOOLS_CACHE)

unit: $(STAMP)
	INFERGRAPH_CACHE=$(TOOLS_CACHE) $(BIN)/python -m pytest

test: lint typecheck contracts pyright components kube jaeger images cluster unit

# The whole benchmark (about 15 minutes): the peers (infergraph, KServe's router, Ray Serve),
# the router's own costs, then the README's benchmark section from the results.
bench: $(STAMP) jaeger components
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	bash bench/install_peers.sh $(TOOLS_CACHE)
	INFERGRAPH_CACHE=$(TOOLS_CACHE) $(BIN)/python bench/peers.py
	$(BIN)/python bench/router_bench.py --repeats 1 --duration 3 --clients fast
	$(BIN)/python bench/readme.py

# The router's own costs: its two HTTP clients, metrics and tracing, Triton REST and gRPC.
# The resilience policies against faulty model servers, beside KServe's router (a few minutes).
bench-resilience: $(STAMP)
	bash bench/install_peers.sh $(TOOLS_CACHE) no-ray
	INFERGRAPH_CACHE=$(TOOLS_CACHE) $(BIN)/python bench/resilience.py

# gRPC ingress against direct Triton gRPC and REST ingress, on a real Triton (a minute or two).
bench-grpc: $(STAMP) components
	INFERGRAPH_CACHE=$(TOOLS_CACHE) $(BIN)/python bench/grpc_ingress.py

bench-router: $(STAMP) components jaeger
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/router_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
