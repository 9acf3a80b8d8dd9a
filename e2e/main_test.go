// Package e2e runs the real bireme binary across network namespaces: nodes
// joined by a router (optionally through NAT), one `bireme enforce` process
// per node, real TCP clients and servers in the workloads' namespaces, and
// scapy for the packets no honest client would send.
//
// The tests need root (they create namespaces and iptables rules) and skip
// with a message otherwise. Each builds its own topology under a random
// prefix and removes it, with every enforcer process, when it ends.
package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// biremeBin is the binary under test, built once by TestMain.
var biremeBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	if os.Geteuid() != 0 || testing.Short() {
		// Every test skips (netnstest.RequireRoot, -short); nothing to build.
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "bireme-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	biremeBin = filepath.Join(dir, "bireme")
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		goTool = "go"
	}
	build := exec.Command(goTool, "build", "-o", biremeBin, "github.com/bireme/bireme/cmd/bireme")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build bireme:", err)
		return 1
	}
	return m.Run()
}
