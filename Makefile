# Bireme: build, test, demo and benchmark entry points. Run as root for
# everything that builds network namespaces (test, demo, bench).
GO      ?= go
BIN     := bin/bireme
# grpcnotrace: gRPC (the CRI client) otherwise imports golang.org/x/net/trace
# and with it html/template, whose method lookup by name makes the linker
# keep every exported method of every type: a 40% larger binary and about
# 20 MB more agent RSS (docs/benchmarks.md, "Kubernetes agent at scale").
# Every build of cmd/bireme uses it (internal/archtest checks).
TAGS    := grpcnotrace
PKGS    := ./...

.PHONY: all build test unit flows-e2e k8s-e2e k8s-scale k8s-demo cri-e2e docker-e2e docker-demo demo bench bench-short lint deps clean

all: build

build:
	$(GO) build -tags $(TAGS) -o $(BIN) ./cmd/bireme

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

# `bireme flows`, `flows map`, `flows verify` and the metrics on a lab's
# records (root; about a minute).
flows-e2e:
	$(GO) test -count=1 -run 'TestFlowsCLI|TestFlowsVerifyAcrossRotation' -v ./e2e/

# The Kubernetes suite against a real API server: etcd and a pinned
# kube-apiserver on loopback (scripts/k8s-env.sh builds it once and caches
# it under ~/.cache/bireme), `bireme agent` on simulated nodes. Part of
# `make test` too.
k8s-e2e: deps
	bash scripts/k8s-env.sh build
	$(GO) test -count=1 -timeout 10m ./k8s/... ./e2e/kubernetes/

# The agent's --cri-socket lookup against a real containerd of its own
# (scripts/cri-env.sh: own root, socket and CNI bridge in a network
# namespace; sandboxes run through CRI with kubelet's labels), and the
# agent with --cri-socket on a real API server. About 30 s; part of
# `make test` and `make k8s-e2e` too.
cri-e2e: deps build
	bash scripts/k8s-env.sh build
	$(GO) test -count=1 -v -timeout 3m ./k8s/crinetns/
	BIREME_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 5m -run TestAgentFindsPodsThroughCRI ./e2e/kubernetes/

# Issue 12's scale figures, by hand (about a minute): one agent on a cluster of
# 10,000 pods and 1,000 NetworkPolicies; RSS, time to converge, time from a
# policy change to the policy in force (goals: under 150 MB, under 1 s).
k8s-scale: deps build
	bash scripts/k8s-env.sh build
	BIREME_K8S_SCALE=1 BIREME_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -run TestAgentAtScale -timeout 15m ./e2e/kubernetes/

# The Docker suite: two dockerd instances of its own (scripts/docker-env.sh,
# each in a network namespace), `bireme docker` on both, `bireme enforce` on
# a third host; policy, forged identities, restarts, agent restart,
# uninstall. Part of `make test` too.
docker-e2e: deps build
	BIREME_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 10m ./e2e/docker/

# A Docker host's reachability matrix before and after a policy.
docker-demo:
	./scripts/docker-demo.sh

# One lab, its matrix before and after a policy, and a refused forged
# identity; see README.md.
demo:
	./scripts/demo.sh

# Bireme on Kubernetes: a local API server, two simulated nodes with agents,
# three pods, the reachability matrix before and after a NetworkPolicy
# created through the API; everything torn down at the end. See README.md.
k8s-demo:
	./scripts/k8s-demo.sh

# Two clusters with their own CAs through NAT: no trust, one-way, two-way
# with a policy admitting one remote workload, revocation cutting new and
# established connections; see README.md "Across clusters".
federation-demo:
	./scripts/federation-demo.sh

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
