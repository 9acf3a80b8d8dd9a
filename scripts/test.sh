#!/usr/bin/env bash
# Runs Bireme's whole test suite as CI does (README: "Run the tests"), as
# root on a Debian machine with Go 1.26: installs the packages, builds
# bin/bireme, runs every Go test (the namespace tests need root and run
# here), the core packages again under the race detector, then the
# benchmark harness in short mode so it never rots.
# Takes under 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

stage() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

stage "installing packages"
bash scripts/install-deps.sh

stage "building bin/bireme"
go build -o bin/bireme ./cmd/bireme

stage "go test ./..."
BIREME_BIN="$PWD/bin/bireme" go test -count=1 -timeout 14m ./...

stage "race detector: enforcer, tokens, policy, agent (namespace tests included)"
go test -race -count=1 -timeout 12m ./enforcer/ ./tokens/ ./policy/ ./agent/...

stage "benchmark harness, short mode"
BENCH_SHORT=1 go run ./bench -bireme "$PWD/bin/bireme"

stage "all tests passed"
