package apisource

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bireme/bireme/agent/desired"
)

// fixedRuntime is a RuntimeNetNS with set answers by pod "ns/name"; the
// real one (package crinetns) is tested against a real containerd.
type fixedRuntime struct {
	mu    sync.Mutex
	paths map[string]string
	errs  map[string]error
	asked int
}

func (f *fixedRuntime) PodNetNS(_ context.Context, namespace, name, _ string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked++
	ref := namespace + "/" + name
	if err := f.errs[ref]; err != nil {
		return "", err
	}
	if p, ok := f.paths[ref]; ok {
		return p, nil
	}
	return "", errors.New("no ready pod sandbox")
}

func (f *fixedRuntime) set(ref, path string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paths[ref], f.errs[ref] = path, err
}

func TestSourceAsksTheRuntimeAndChecksTheAddress(t *testing.T) {
	client := fake.NewClientset(
		pod("x", "a", "n1", "198.18.0.2", corev1.PodRunning, nil),
		pod("x", "b", "n1", "198.18.0.3", corev1.PodRunning, nil),
	)
	scan := &fixedScan{byAddr: map[netip.Addr][]string{}}
	// The runtime's namespaces: each holds its pod's address (and the scan
	// would have found a.scan for a's address too: the runtime's answer is
	// the one taken when it checks out).
	scan.set("198.18.0.2", "/run/netns/rt-a")
	scan.set("198.18.0.3", "/run/netns/rt-b")
	rt := &fixedRuntime{paths: map[string]string{"x/a": "/run/netns/rt-a", "x/b": "/run/netns/rt-b"}, errs: map[string]error{}}
	s := runSource(t, Config{Client: client, Node: "n1", Cluster: "c1", NetNS: scan, Runtime: rt, Verify: 30 * time.Millisecond})
	s.until("start", func(st desired.State) bool {
		return refs(st) == "x/a@/run/netns/rt-a x/b@/run/netns/rt-b"
	})
	scan.mu.Lock()
	scans := scan.scans
	scan.mu.Unlock()
	if scans != 0 {
		t.Errorf("%d address scans while the runtime found every pod; want none", scans)
	}

	// The runtime names a namespace that does not hold b's IP: refused,
	// and b is looked up by the address scan, which finds it elsewhere.
	rt.set("x/b", "/run/netns/rt-a", nil)
	scan.set("198.18.0.3", "/run/netns/scan-b")
	s.until("runtime names a's namespace for b", func(st desired.State) bool {
		return refs(st) == "x/a@/run/netns/rt-a x/b@/run/netns/scan-b"
	})

	// The runtime fails for a and the scan does not find a's address:
	// a is released (fail closed), never kept on the runtime's word.
	rt.set("x/a", "", errors.New("connection refused"))
	scan.set("198.18.0.2")
	s.until("runtime down for a, scan finds nothing", func(st desired.State) bool {
		return refs(st) == "x/b@/run/netns/scan-b"
	})

	// The runtime answers again.
	rt.set("x/a", "/run/netns/rt-a", nil)
	scan.set("198.18.0.2", "/run/netns/rt-a")
	s.until("runtime back", func(st desired.State) bool {
		return refs(st) == "x/a@/run/netns/rt-a x/b@/run/netns/scan-b"
	})
}
