#!/usr/bin/env bash
# Runs Bireme's whole test suite as CI does (README: "Run the tests"), as
# root on a Debian machine with Go 1.26: installs the packages, builds
# bin/bireme, runs every Go test (the namespace tests need root and run
# here), the core packages again under the race detector, then the
# benchmark harness in short mode so it never rots.
# Takes about 9 minutes (under 15) on 2 cores, plus 2.5-5 minutes once per machine to
# build the Kubernetes tests' kube-apiserver.
set -euo pipefail
cd "$(dirname "$0")/.."

stage() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

stage "installing packages"
bash scripts/install-deps.sh

stage "building bin/bireme"
go build -tags grpcnotrace -o bin/bireme ./cmd/bireme

# Built once per machine and cached under ~/.cache/bireme (2.5-5 min the
# first time, nothing after): its own stage, so the Kubernetes tests in
# `go test ./...` only start it.
stage "kube-apiserver for the Kubernetes tests (scripts/k8s-env.sh build)"
bash scripts/k8s-env.sh build

stage "go test ./..."
BIREME_BIN="$PWD/bin/bireme" go test -count=1 -timeout 14m ./...

# About a minute: the script itself must not rot (TestFederation tests
# the same steps in Go).
stage "make federation-demo (two clusters, trust bundles, revocation)"
BIREME="$PWD/bin/bireme" STATE="$(mktemp -d)/federation-demo" bash scripts/federation-demo.sh

stage "race detector: enforcer, tokens, policy, agent (namespace tests included)"
go test -race -count=1 -timeout 12m ./enforcer/ ./tokens/ ./policy/ ./agent/...

stage "benchmark harness, short mode"
BENCH_SHORT=1 go run ./bench -bireme "$PWD/bin/bireme"

stage "all tests passed"
