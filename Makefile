# Bireme: build, test, demo and benchmark entry points. Run as root for
# everything that builds network namespaces (test, demo, bench).
GO      ?= go
BIN     := bin/bireme
PKGS    := ./...

.PHONY: all build test unit k8s-e2e demo bench bench-short lint deps clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/bireme

# System packages (apt) the lab, tests and benchmarks use.
deps:
	bash scripts/install-deps.sh

# The whole suite, as CI runs it (scripts/test.sh: packages, build, every
# Go test including the root-only namespace tests, then the benchmark
# harness in short mode). Under 15 minutes.
test:
	./scripts/test.sh

# Unit tests only: no root, no namespaces, seconds.
unit:
	$(GO) test -count=1 -short $(PKGS)

# The Kubernetes suite against a real API server: etcd and a pinned
# kube-apiserver on loopback (scripts/k8s-env.sh builds it once and caches
# it under ~/.cache/bireme), `bireme agent` on simulated nodes. Part of
# `make test` too.
k8s-e2e: deps
	bash scripts/k8s-env.sh build
	$(GO) test -count=1 -timeout 10m ./k8s/... ./e2e/kubernetes/

# One lab, its matrix before and after a policy, and a refused forged
# identity; see README.md.
demo:
	./scripts/demo.sh

# Full benchmark run (by hand): writes docs/benchmarks.md and .json.
bench: deps build
	$(GO) run ./bench -bireme $(CURDIR)/$(BIN)

# The benchmark harness end to end in under a minute (part of `make test`).
bench-short: build
	BENCH_SHORT=1 $(GO) run ./bench -bireme $(CURDIR)/$(BIN)

lint:
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go') && exit 1)

clean:
	rm -rf bin
