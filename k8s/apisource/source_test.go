package apisource

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/k8s/podnetns"
)

// These tests drive the Source with client-go's fake clientset and a fixed
// scan; the same Source runs against a real API server and real
// namespaces in the agent's Kubernetes integration test (cmd/bireme).

// fixedScan is a NetNSScanner with a set answer, which a test may change.
type fixedScan struct {
	mu     sync.Mutex
	byAddr map[netip.Addr][]string
	scans  int
}

func (f *fixedScan) Scan(context.Context) (*podnetns.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scans++
	return podnetns.NewSnapshot(f.byAddr), nil
}

// Verify accepts a path the set answer lists for addr: the namespace
// holds the address.
func (f *fixedScan) Verify(path string, addr netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if slices.Contains(f.byAddr[addr], path) {
		return nil
	}
	return fmt.Errorf("%s does not hold %s: %w", path, addr, podnetns.ErrNotHeld)
}

func (f *fixedScan) set(addr string, paths ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.byAddr[netip.MustParseAddr(addr)] = paths
}

func pod(ns, name, node, ip string, phase corev1.PodPhase, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: "sa-" + name},
		Status:     corev1.PodStatus{Phase: phase, PodIP: ip},
	}
}

// states runs a Source and hands out the states it delivers.
type states struct {
	t  *testing.T
	ch chan desired.State
}

func runSource(t *testing.T, cfg Config) *states {
	t.Helper()
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	s := &states{t: t, ch: make(chan desired.State, 100)}
	go func() { done <- src.Run(ctx, func(st desired.State) { s.ch <- st }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
	return s
}

// next waits for the next state, at most a second: the Source promises
// changes within a second.
func (s *states) next(what string) desired.State {
	s.t.Helper()
	select {
	case st := <-s.ch:
		return st
	case <-time.After(time.Second):
		s.t.Fatalf("no state within 1s after %s", what)
		return desired.State{}
	}
}

// until reads states until one satisfies cond, for at most a second: one
// API change may come as several states (this node's pods and every pod's
// placement are two informers).
func (s *states) until(what string, cond func(desired.State) bool) desired.State {
	s.t.Helper()
	deadline := time.After(time.Second)
	for {
		select {
		case st := <-s.ch:
			if cond(st) {
				return st
			}
		case <-deadline:
			s.t.Fatalf("no state as expected within 1s after %s", what)
			return desired.State{}
		}
	}
}

func refs(st desired.State) string {
	var out []string
	for _, w := range st.Workloads {
		out = append(out, w.Ref+"@"+w.NetNS)
	}
	return strings.Join(out, " ")
}

func TestSourceFollowsTheAPI(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"team": "blue"}}},
		pod("x", "a", "n1", "198.18.0.2", corev1.PodRunning, map[string]string{"app": "a"}),
		pod("x", "pending", "n1", "", corev1.PodPending, nil),
		pod("x", "other-node", "n2", "198.18.0.9", corev1.PodRunning, nil),
		pod("x", "no-netns", "n1", "198.18.0.4", corev1.PodRunning, nil),
		pod("x", "twin", "n1", "198.18.0.5", corev1.PodRunning, nil),
	)
	host := pod("x", "host", "n1", "198.18.0.6", corev1.PodRunning, nil)
	host.Spec.HostNetwork = true
	if _, err := client.CoreV1().Pods("x").Create(ctx, host, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	scan := &fixedScan{byAddr: map[netip.Addr][]string{}}
	scan.set("198.18.0.2", "/run/netns/a")
	scan.set("198.18.0.9", "/run/netns/other")
	scan.set("198.18.0.5", "/run/netns/t1", "/run/netns/t2") // ambiguous
	scan.set("198.18.0.6", "/run/netns/host")
	s := runSource(t, Config{Client: client, Node: "n1", Cluster: "c1", NetNS: scan, Verify: 50 * time.Millisecond})

	first := s.next("start")
	if first.Policy == nil {
		t.Error("first state has no policy: the agent would enforce nothing")
	}
	if got, want := refs(first), "x/a@/run/netns/a"; got != want {
		t.Fatalf("first workloads = %q, want %q (only the running pod of n1 with one namespace, not hostNetwork)", got, want)
	}
	if node, ok := first.Placement.NodeOf("x", "other-node"); !ok || node != "n2" {
		t.Errorf("first placement of x/other-node = %q, %v; want n2 (every node's pods are placed)", node, ok)
	}
	if node, ok := first.Placement.NodeOf("x", "a"); !ok || node != "n1" {
		t.Errorf("first placement of x/a = %q, %v; want n1", node, ok)
	}
	id := first.Workloads[0].Identity
	if id.Cluster != "c1" || id.Namespace != "x" || id.Pod != "a" || id.ServiceAccount != "sa-a" ||
		id.Labels["app"] != "a" || id.NamespaceLabels["team"] != "blue" {
		t.Errorf("identity = %+v; want cluster c1, x/a, service account sa-a, label app=a, namespace label team=blue", id)
	}

	// The pending pod starts running; its namespace appears.
	scan.set("198.18.0.3", "/run/netns/pending")
	running := pod("x", "pending", "n1", "198.18.0.3", corev1.PodRunning, nil)
	if _, err := client.CoreV1().Pods("x").UpdateStatus(ctx, running, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.until("pod running", func(st desired.State) bool {
		return refs(st) == "x/a@/run/netns/a x/pending@/run/netns/pending"
	})

	// A label change gives the pod its new identity.
	a, err := client.CoreV1().Pods("x").Get(ctx, "a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a.Labels["app"] = "a2"
	if _, err := client.CoreV1().Pods("x").Update(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.until("label change", func(st desired.State) bool {
		return len(st.Workloads) > 0 && st.Workloads[0].Identity.Labels["app"] == "a2"
	})

	// A namespace label change reaches the identities and the policy.
	nsX, err := client.CoreV1().Namespaces().Get(ctx, "x", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsX.Labels["team"] = "red"
	if _, err := client.CoreV1().Namespaces().Update(ctx, nsX, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.until("namespace label change", func(st desired.State) bool {
		return st.Policy != nil && len(st.Workloads) > 0 && st.Workloads[0].Identity.NamespaceLabels["team"] == "red"
	})

	// A new policy is compiled and delivered.
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "deny-all"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}
	if _, err := client.NetworkingV1().NetworkPolicies("x").Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.until("policy created", func(st desired.State) bool {
		return st.Policy != nil && len(st.Policy.Objects().Policies) == 1 && st.Policy.Objects().Policies[0].Name == "deny-all"
	})

	// Deleting a pod releases it.
	if err := client.CoreV1().Pods("x").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Two informers see the deletion; the two states may come in either
	// order.
	placed, released := true, false
	s.until("pod deleted", func(st desired.State) bool {
		if st.Placement != nil {
			_, stillPlaced := st.Placement.NodeOf("x", "a")
			placed = stillPlaced
		}
		released = refs(st) == "x/pending@/run/netns/pending"
		return !placed && released
	})

	// A namespace that vanishes without the API knowing is noticed by the
	// periodic check.
	scan.set("198.18.0.3")
	s.until("namespace vanished", func(st desired.State) bool { return refs(st) == "" })
}

// Nothing changes, nothing is delivered: the periodic check finds the same
// namespaces and stays quiet.
func TestSourceDeliversOnlyChanges(t *testing.T) {
	client := fake.NewClientset(pod("x", "a", "n1", "198.18.0.2", corev1.PodRunning, nil))
	scan := &fixedScan{byAddr: map[netip.Addr][]string{}}
	scan.set("198.18.0.2", "/run/netns/a")
	s := runSource(t, Config{Client: client, Node: "n1", Cluster: "c1", NetNS: scan, Verify: 20 * time.Millisecond})
	s.next("start")
	select {
	case st := <-s.ch:
		t.Errorf("state delivered with nothing changed: %q", refs(st))
	case <-time.After(300 * time.Millisecond):
	}
	scan.mu.Lock()
	defer scan.mu.Unlock()
	if scan.scans < 3 {
		t.Errorf("%d scans in 300ms with a 20ms verify interval; the namespaces are not being checked again", scan.scans)
	}
}

func TestNewRequiresItsDependencies(t *testing.T) {
	client := fake.NewClientset()
	scan := &fixedScan{}
	for name, cfg := range map[string]Config{
		"no client":      {Node: "n1", Cluster: "c1", NetNS: scan},
		"no node":        {Client: client, Cluster: "c1", NetNS: scan},
		"no cluster":     {Client: client, Node: "n1", NetNS: scan},
		"no scanner":     {Client: client, Node: "n1", Cluster: "c1"},
		"negative check": {Client: client, Node: "n1", Cluster: "c1", NetNS: scan, Verify: -time.Second},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
}

// An API server that never answers is an error after SyncTimeout, not a
// silent wait with nothing protected.
func TestSourceFailsWithoutTheAPI(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("list", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	src, err := New(Config{Client: client, Node: "n1", Cluster: "c1", NetNS: &fixedScan{}, SyncTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = src.Run(ctx, func(desired.State) { t.Error("state delivered without the API") })
	if err == nil || !strings.Contains(err.Error(), "no complete view") {
		t.Errorf("Run = %v; want an error about the missing view", err)
	}
}
