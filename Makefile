# Tideflow developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV   := .venv
BENCH_ARGS ?=
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BUF    := node_modules/.bin/buf
GO_DIR := workers/go
NODE_DIR := workers/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
KUSTOMIZE := $(VENV)/bin/kustomize

.PHONY: setup proto proto-check buf-lint buf-breaking lint typecheck pytest test clean demo dev bench \
        go-test go-build node-test node-build demo-polyglot

## setup: create .venv and install both distributions and the dev tools, pinned by constraints.txt
setup: $(STAMP) $(BUF) $(NODE_STAMP) $(KUSTOMIZE)

$(STAMP): constraints.txt requirements-dev.txt requirements-bench.txt requirements-workers.txt sdk_python/pyproject.toml services/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip install -q --disable-pip-version-check \
	    -e 'sdk_python[cli]' -e services -r requirements-dev.txt
	touch $@

# kustomize, pinned by tools/kustomize/go.sum, renders deploy/k8s (tests/unit/test_k8s_manifests.py)
$(KUSTOMIZE): tools/kustomize/go.mod tools/kustomize/go.sum | $(STAMP)
	cd tools/kustomize && go build -o $(CURDIR)/$(KUSTOMIZE) sigs.k8s.io/kustomize/kustomize/v5

$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error
	touch $@

## proto: regenerate the stubs from proto/ for every language (committed): Python, Go, TypeScript
proto: $(STAMP) $(BUF) $(NODE_STAMP)
	$(PY) tools/protogen.py generate
	$(GO_DIR)/generate.sh
	node $(NODE_DIR)/scripts/generate.mjs

## proto-check: fail if the committed generated code differs from what proto/ generates
proto-check: $(STAMP) $(BUF) $(NODE_STAMP)
	$(PY) tools/protogen.py check
	$(GO_DIR)/generate.sh --check
	node $(NODE_DIR)/scripts/generate.mjs --check

## buf-lint / buf-breaking: proto style, and wire compatibility against the main branch
buf-lint: $(BUF)
	$(BUF) lint

buf-breaking: $(BUF)
	if git rev-parse --verify -q main >/dev/null; then \
	    $(BUF) breaking --against '.git#branch=main'; \
	else echo "buf-breaking: no main branch to compare against, skipped"; fi

## lint: ruff and mypy --strict (generated code excluded)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## pytest: the test suites (start a throwaway PostgreSQL, a single-node Cassandra and, for the
## node-loss chaos test, a three-node Cassandra ring on 127.0.0.1-3 themselves)
pytest: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

## go-test: the Go worker library: gofmt, go vet, go test, and the example worker's binary
## (modules from go.sum through the Go module proxy)
go-test:
	cd $(GO_DIR) && test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	cd $(GO_DIR) && go vet ./... && go test ./...
	$(MAKE) go-build

go-build:
	cd $(GO_DIR) && go build -o bin/tideflow-go-worker ./cmd/tideflow-go-worker

## node-test: the TypeScript worker library: tsc --strict (also builds dist/example.js) and node --test
node-test: node-build
	cd $(NODE_DIR) && node --test dist/test/

node-build: $(NODE_STAMP)
	cd $(NODE_DIR) && node_modules/.bin/tsc -p .

## test: everything CI checks
test: setup lint proto-check buf-lint buf-breaking go-test node-test pytest

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache

## demo: the first-run demo (throwaway server + document workers, one run per sample document)
demo: setup
	$(PY) -m demo

## demo-polyglot: one flow whose blocks run on Python, Go, TypeScript and model workers
demo-polyglot: setup go-build node-build
	$(PY) -m demo.polyglot

## dev: the demo, then keep server (127.0.0.1:7233, .tideflow/demo.db) and workers up until Ctrl-C
dev: setup
	$(PY) -m demo --keep

## bench: seq3 on three role processes + a durable PostgreSQL: the sequential phase and a
## closed-loop window (100 in flight); reports under bench/results/. Options: BENCH_ARGS="..."
## (e.g. BENCH_ARGS="fanout --rates 50,100,150,200"; see bench/README.md, python -m bench -h)
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)
