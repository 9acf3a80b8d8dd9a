// Package e2e runs the real bireme binary across network namespaces: a lab
// (package lab) of nodes joined by a router (optionally through NAT), one
// `bireme enforce` process per node, real TCP clients and servers in the
// workloads' namespaces, and scapy for the packets no honest client would
// send.
//
// The tests need root (they create namespaces and iptables rules) and skip
// with a message otherwise. Each builds its own lab under a random prefix
// and removes it, with every enforcer process, when it ends.
package e2e

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/bireme/bireme/internal/testbin"
)

// biremeBin is the binary under test: $BIREME_BIN, or built once by TestMain.
var biremeBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	if os.Geteuid() != 0 || testing.Short() {
		// Every test skips (netnstest.RequireNamespaces, -short); nothing to build.
		return m.Run()
	}
	bin, err := testbin.Bireme()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer testbin.Cleanup()
	biremeBin = bin
	return m.Run()
}
