# ZLayer's one entry point for building, generating, linting and testing.
# `make help` lists the targets. Everything runs as root on Debian 12;
# scripts/install-deps.sh installs what is missing (apt packages, Go tools).

SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/go/bin
export GOFLAGS := -buildvcs=false

# containers/image without cgo dependencies (gpgme, btrfs, devicemapper).
GO_TAGS := containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper
VERSION ?= $(shell git describe --always --dirty --tags 2>/dev/null || echo dev)
LDFLAGS := -s -w -X zlayer.dev/libs/daemon/version.Version=$(VERSION)
BIN := $(CURDIR)/bin
# Every module of the workspace, as import-path patterns.
PKGS = $(shell go list -m -f '{{.Path}}/...')
CMDS := services/agent/cmd/zlayer-agent services/scheduler/cmd/zlayer-scheduler \
	services/proxy/cmd/zlayer-proxy services/overlay/cmd/zlayer-overlay \
	services/registry/cmd/zlayer-registry services/zlctl/cmd/zlctl services/devctl/cmd/devctl
# Extra binaries a component needs beside its daemon (e.g. the agent's
# per-container monitor); built when present.
EXTRA_CMDS := $(wildcard services/agent/cmd/zlayer-monitor)
FUZZTIME ?= 20s

.PHONY: help deps build test test-short lint proto proto-check fmt-check units-check run bench fuzz clean

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## install apt packages and pinned Go tools when missing (root)
	@bash scripts/install-deps.sh

build: deps ## build every binary into bin/
	@mkdir -p $(BIN)
	go build -tags '$(GO_TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/ $(addprefix ./,$(CMDS) $(EXTRA_CMDS))

proto: deps ## regenerate libs/api (Go + Python) from proto/
	find libs/api -name '*.pb.go' -delete
	find libs/api/python -name '*_pb2*.py' -delete
	buf generate

proto-check: deps ## buf format + lint, and fail when committed generated code is stale
	buf format --diff --exit-code
	buf lint
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	  buf generate -o $$tmp && \
	  for f in $$(cd $$tmp && find . -type f); do \
	    cmp -s $$tmp/$$f $$f || { echo "stale generated file: $$f (run make proto)"; exit 1; }; \
	  done && \
	  for f in $$(find libs/api -name '*.pb.go' -o -name '*_pb2*.py'); do \
	    [ -f $$tmp/$$f ] || { echo "generated file without a proto: $$f (run make proto)"; exit 1; }; \
	  done && echo "proto-check: generated code is current"

fmt-check: ## gofmt
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed:"; echo "$$out"; exit 1; }

lint: deps fmt-check proto-check ## gofmt, go vet, buf lint, generated-code drift
	go vet -tags '$(GO_TAGS)' $(PKGS)

units-check: ## (part of the tests) systemd-analyze verify is in tests/e2e

test: build lint ## all tests, as root, nothing skipped; then a bounded fuzz run
	ZLAYER_BIN_DIR=$(BIN) go test -tags '$(GO_TAGS)' -count=1 -timeout 20m $(PKGS)
	$(MAKE) fuzz

test-short: ## the fast unprivileged loop
	go test -tags '$(GO_TAGS)' -short $(PKGS)

fuzz: ## each fuzz target for FUZZTIME (default 20s)
	@for d in $$(grep -rl --include='*_test.go' '^func Fuzz' libs services | xargs -n1 dirname | sort -u); do \
	  for f in $$(grep -h '^func Fuzz' $$d/*_test.go | sed 's/func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do \
	    echo "fuzz $$d $$f"; (cd $$d && go test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) .) || exit 1; \
	  done; \
	done

run: build ## start a local node (Ctrl-C stops it)
	$(BIN)/devctl up --demo --demo-file deploy/examples/demo.yaml

bench: build ## run every benchmark script in scripts/bench
	@for s in scripts/bench/*.sh; do echo "== $$s"; bash $$s || exit 1; done

clean: ## remove build output
	rm -rf $(BIN)
