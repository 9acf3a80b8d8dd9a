package podnetns

import (
	"context"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/bireme/bireme/netns/netnstest"
)

// The main goroutine keeps the process's main thread, so that a test can
// put that thread into another namespace (see onMainThread).
func init() { runtime.LockOSThread() }

// onMainThread runs functions on the process's main thread, the one
// /proc/self/ns/net describes.
var onMainThread = make(chan func())

func TestMain(m *testing.M) {
	done := make(chan int)
	go func() { done <- m.Run() }()
	for {
		select {
		case f := <-onMainThread:
			f()
		case code := <-done:
			os.Exit(code)
		}
	}
}

// While another goroutine holds the main thread inside a pod's namespace
// (as the datapath does while it adds rules there), a scan still finds that
// pod: the agent once took the pod's namespace for its own and skipped it,
// so the pod flapped between protected and "no network namespace holds the
// address".
func TestScanWhileMainThreadIsInAPodNamespace(t *testing.T) {
	netnstest.RequireNamespaces(t)
	prefix, subnet := netnstest.Prefix(), randomSubnet()
	pod := netnstest.NewNS(t, prefix+"-main")
	addAddr(t, pod, subnet+".2")

	entered, release, back := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	onMainThread <- func() {
		back <- pod.Do(func() error {
			close(entered)
			<-release
			return nil
		})
	}
	<-entered
	snap, err := Scanner{}.Scan(context.Background())
	close(release)
	if err := <-back; err != nil {
		t.Fatalf("main thread in %s: %v", pod.Path(), err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if got, err := snap.Lookup(netip.MustParseAddr(subnet + ".2")); err != nil || got != pod.Path() {
		t.Errorf("Lookup(%s.2) = %q, %v; want %s", subnet, got, err, pod.Path())
	}
}
