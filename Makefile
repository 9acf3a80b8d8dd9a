# Bireme build, test, demo and benchmark entry points.
GO      ?= go
BIN     := bin/bireme
PKGS    := ./...

.PHONY: build test unit demo bench lint deps clean

build:
	$(GO) build -o $(BIN) ./cmd/bireme

deps:
	bash scripts/install-deps.sh

# Full suite: root-only namespace tests run when root, skip otherwise.
test: deps build
	$(GO) test -count=1 -timeout 25m $(PKGS)

# Unit tests only (no root needed).
unit:
	$(GO) test -count=1 -short $(PKGS)

demo: deps build
	./$(BIN) lab run -f examples/demo/model.yaml

bench: deps build
	$(GO) run ./bench

lint:
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l .)" || (gofmt -l . && exit 1)

clean:
	rm -rf bin
