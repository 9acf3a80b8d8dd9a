// Package testbin gives end-to-end tests the bireme binary under test:
// $BIREME_BIN when set (scripts/test.sh builds it once for the whole
// suite), otherwise one built once per test binary.
package testbin

import (
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
		goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, e := os.Stat(goTool); e != nil {
			goTool = "go"
		}
		// The tags of every build of the binary (Makefile: TAGS).
		out, e := exec.Command(goTool, "build", "-tags", "grpcnotrace", "-o", built, "github.com/bireme/bireme/cmd/bireme").CombinedOutput()
		if e != nil {
			err = fmt.Errorf("go build bireme: %v: %s", e, out)
		}
	})
	return built, err
}

// Cleanup removes a binary Bireme built (not one named by $BIREME_BIN).
func Cleanup() {
	if built != "" && os.Getenv("BIREME_BIN") == "" {
		_ = os.RemoveAll(filepath.Dir(built))
	}
}
