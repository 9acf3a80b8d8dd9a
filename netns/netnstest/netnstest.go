// Package netnstest holds helpers for tests that build network namespaces:
// a root guard and namespaces that are removed when the test ends.
package netnstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/bireme/bireme/netns"
)

// RequireNamespaces skips the test, with a message saying why, unless it
// may build network namespaces: not in -short mode (`make unit`: no root,
// no namespaces, seconds), and only as root on a machine with iproute2 and
// iptables.
func RequireNamespaces(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: builds network namespaces (not in -short mode)")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create network namespaces (run the suite as root, as CI does)")
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s not installed (apt-get install -y iproute2 iptables)", tool)
		}
	}
}

// Prefix returns a short random prefix for namespace and interface names so
// that concurrent tests never collide; it leaves room under IFNAMSIZ.
func Prefix() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return "bt" + hex.EncodeToString(b[:])
}

// NewNS creates a namespace that is deleted, with every process inside it,
// when the test ends, whether it passed or not.
func NewNS(t testing.TB, name string) *netns.NS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ns, err := netns.Create(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ns.Delete(ctx); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return ns
}
