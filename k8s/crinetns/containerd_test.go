package crinetns

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/bireme/bireme/internal/crienv"
	"github.com/bireme/bireme/k8s/podnetns"
	"github.com/bireme/bireme/netns/netnstest"
)

// This test runs a real containerd (internal/crienv, scripts/cri-env.sh: its own root,
// state, socket and CNI bridge in a network namespace of its own), runs
// a pod sandbox through CRI as kubelet does, and checks that the lookup
// finds the sandbox's namespace, that the namespace holds the address the
// runtime gave the sandbox, and that it does not hold another address (the
// check apisource makes against status.podIP on every reconcile).

func sameNamespace(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func TestContainerdSandboxNamespace(t *testing.T) {
	netnstest.RequireNamespaces(t)
	env := crienv.Start(t, netip.MustParsePrefix("198.19.241.0/24")) // e2e/kubernetes uses 198.19.240.0/24
	endpoint := env.Endpoint
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	c, err := Dial(Config{Endpoint: endpoint, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() }) // after the sandboxes' removal, registered later
	v, err := c.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("runtime: %s", v)

	ipA := env.RunSandbox(t, ctx, "ns-a", "pod-a", "uid-a").IP
	ipB := env.RunSandbox(t, ctx, "ns-a", "pod-b", "uid-b").IP
	if !env.Network.Contains(ipA) || ipA == ipB {
		t.Fatalf("sandbox addresses %s and %s: want two addresses of the CNI range", ipA, ipB)
	}

	pathA, err := c.PodNetNS(ctx, "ns-a", "pod-a", "uid-a")
	if err != nil {
		t.Fatalf("PodNetNS(pod-a): %v", err)
	}
	pathB, err := c.PodNetNS(ctx, "ns-a", "pod-b", "uid-b")
	if err != nil {
		t.Fatalf("PodNetNS(pod-b): %v", err)
	}
	t.Logf("pod-a %s in %s, pod-b %s in %s", ipA, pathA, ipB, pathB)
	if sameNamespace(t, pathA, pathB) {
		t.Fatalf("two sandboxes, one namespace: %s and %s", pathA, pathB)
	}

	verify := podnetns.Scanner{}
	// The namespace the runtime names holds the sandbox's address...
	if err := verify.Verify(pathA, ipA); err != nil {
		t.Errorf("Verify(pod-a's namespace, its IP %s) = %v, want nil", ipA, err)
	}
	// ...and a pod whose status.podIP is not that address is refused.
	if err := verify.Verify(pathA, ipB); !errors.Is(err, podnetns.ErrNotHeld) {
		t.Errorf("Verify(pod-a's namespace, pod-b's IP %s) = %v, want ErrNotHeld", ipB, err)
	}
	// It is the namespace the address scan finds for that address.
	snap, err := verify.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if scanned, err := snap.Lookup(ipA); err != nil || !sameNamespace(t, scanned, pathA) {
		t.Errorf("scan found %q (%v) for %s; CRI found %s", scanned, err, ipA, pathA)
	}

	// Labels must all match: a pod of the same name with another UID (a
	// pod deleted and made again) or in another namespace has no sandbox.
	for _, k := range [][3]string{{"ns-a", "pod-a", "uid-other"}, {"ns-b", "pod-a", "uid-a"}, {"ns-a", "pod-c", "uid-a"}} {
		if p, err := c.PodNetNS(ctx, k[0], k[1], k[2]); !errors.Is(err, ErrNoSandbox) {
			t.Errorf("PodNetNS(%v) = %q, %v; want ErrNoSandbox", k, p, err)
		}
	}

	// A cached path is served again; a stopped sandbox is no longer found.
	if again, err := c.PodNetNS(ctx, "ns-a", "pod-a", "uid-a"); err != nil || again != pathA {
		t.Errorf("PodNetNS(pod-a) again = %q, %v; want %s", again, err, pathA)
	}
	list, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{LabelPodUID: "uid-b"}}})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("list pod-b's sandbox: %v, %v", list, err)
	}
	if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: list.Items[0].Id}); err != nil {
		t.Fatal(err)
	}
	if p, err := c.PodNetNS(ctx, "ns-a", "pod-b", "uid-b"); !errors.Is(err, ErrNoSandbox) {
		t.Errorf("PodNetNS(stopped pod-b) = %q, %v; want ErrNoSandbox", p, err)
	}
}
