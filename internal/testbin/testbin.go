// Package testbin gives end-to-end tests the bireme binary under test:
// $BIREME_BIN when set (scripts/test.sh builds it once for the whole
// suite), otherwise one built once per test binary. Build is the one Go
// build of the binary (the bench harness uses it too).
package testbin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
)

var (
	once  sync.Once
	built string
	err   error
)

// Bireme returns the path of the bireme binary, building it on first use
// when $BIREME_BIN is not set. The built binary lives in a temporary
// directory that Cleanup removes.
func Bireme() (string, error) {
	if bin := os.Getenv("BIREME_BIN"); bin != "" {
		return bin, nil
	}
	once.Do(func() {
		dir, e := os.MkdirTemp("", "bireme-bin-")
		if e != nil {
			err = e
			return
		}
		built = filepath.Join(dir, "bireme")
		err = Build(context.Background(), "", built)
	})
	return built, err
}

// BuildTags are the tags of every build of cmd/bireme (Makefile: TAGS;
// internal/archtest checks the Makefile and scripts): grpcnotrace keeps
// gRPC's golang.org/x/net/trace, and with it html/template, out of the
// binary (about 20 MB of agent RSS, docs/benchmarks.md).
const BuildTags = "grpcnotrace"

// Build builds cmd/bireme with BuildTags into out, running the go tool in
// dir (any directory inside the module; "" for the current one).
func Build(ctx context.Context, dir, out string) error {
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		goTool = "go"
	}
	cmd := exec.CommandContext(ctx, goTool, "build", "-tags", BuildTags, "-o", out, "github.com/bireme/bireme/cmd/bireme")
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build -tags %s bireme: %v: %s", BuildTags, err, b)
	}
	return nil
}

// Cleanup removes a binary Bireme built (not one named by $BIREME_BIN).
func Cleanup() {
	if built != "" && os.Getenv("BIREME_BIN") == "" {
		_ = os.RemoveAll(filepath.Dir(built))
	}
}
