package lab_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/lab"
	"github.com/bireme/bireme/netns/netnstest"
)

// world is the test's own model of the lab's labels and policies: the
// oracle the measured matrix is compared with.
type world struct {
	nsLabel  map[string]string // namespace -> its "ns" label
	podLabel map[string]string // "ns/pod" -> its "pod" label
	xFromY   bool              // x/deny-all + x/allow-from-y: x takes only namespaces labelled ns=y
	xDenyAll bool              // x/deny-all alone
	aFromB   bool              // y/a takes only pod=b pods of y
	cToY     bool              // z/c connects only to namespaces labelled ns=y
}

func newWorld() *world {
	w := &world{nsLabel: map[string]string{"x": "x", "y": "y", "z": "z"}, podLabel: map[string]string{}}
	for _, ns := range []string{"x", "y", "z"} {
		for _, p := range []string{"a", "b", "c"} {
			w.podLabel[ns+"/"+p] = p
		}
	}
	return w
}

func nsOf(ref string) string { return strings.SplitN(ref, "/", 2)[0] }

func (w *world) allowed(from, to string) bool {
	switch {
	case nsOf(to) == "x" && w.xFromY && w.nsLabel[nsOf(from)] != "y":
		return false
	case nsOf(to) == "x" && w.xDenyAll && !w.xFromY:
		return false
	case to == "y/a" && w.aFromB && (nsOf(from) != "y" || w.podLabel[from] != "b"):
		return false
	case from == "z/c" && w.cToY && w.nsLabel[nsOf(to)] != "y":
		return false
	}
	return true
}

func apply(t *testing.T, l *lab.Lab, files ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.Apply(ctx, files...); err != nil {
		t.Fatal(err)
	}
}

// Three namespaces of three pods on two nodes, each node with its own
// enforcer: deny-all, allow-from-namespace, allow-from-pod and egress
// policies, then label changes on the running lab, then policies removed.
func TestLabPolicies(t *testing.T) {
	netnstest.RequireNamespaces(t)
	l, _ := upLab(t, lab.Options{}, "testdata/three.yaml")
	pods := l.Pods()
	w := newWorld()
	expectMatrix(t, "no policy", probe(t, l), pods, w.allowed)

	apply(t, l, "testdata/deny-all-x.yaml")
	w.xDenyAll = true
	got := probe(t, l)
	expectMatrix(t, "deny-all in x", got, pods, w.allowed)
	if r := got["y/b>x/a:80"]; !strings.Contains(r.Reason, "deny-all") {
		t.Errorf("y/b -> x/a refused with reason %q, want the enforcer's record naming x/deny-all", r.Reason)
	}

	apply(t, l, "testdata/allow-from-ns-y.yaml", "testdata/allow-from-pod.yaml", "testdata/egress-z.yaml")
	w.xFromY, w.aFromB, w.cToY = true, true, true
	expectMatrix(t, "namespace, pod and egress rules", probe(t, l), pods, w.allowed)

	// y/c becomes pod=b (now let into y/a); namespace z becomes ns=y (now
	// let into x, and z/c may reach its own namespace).
	apply(t, l, "testdata/relabel.yaml")
	w.podLabel["y/c"] = "b"
	w.nsLabel["z"] = "y"
	expectMatrix(t, "labels changed", probe(t, l), pods, w.allowed)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.Delete(ctx, "testdata/deny-all-x.yaml", "testdata/allow-from-ns-y.yaml"); err != nil {
		t.Fatal(err)
	}
	w.xDenyAll, w.xFromY = false, false
	expectMatrix(t, "x policies deleted", probe(t, l), pods, w.allowed)
}

// With NAT between the nodes the decisions are the same: they never
// depended on addresses.
func TestLabPoliciesNAT(t *testing.T) {
	netnstest.RequireNamespaces(t)
	l, _ := upLab(t, lab.Options{NAT: true}, "testdata/three.yaml", "testdata/deny-all-x.yaml", "testdata/allow-from-ns-y.yaml", "testdata/allow-from-pod.yaml")
	w := newWorld()
	w.xDenyAll, w.xFromY, w.aFromB = true, true, true
	expectMatrix(t, "nat", probe(t, l), l.Pods(), w.allowed)
}

// With NAT between the nodes and no declaration of it, the servers see a
// node's address where the client's handshake names the client's own: v2
// handshakes bind the endpoints, so every connection between nodes is
// refused, with the reason, and connections within a node still work.
// (TestLabPoliciesNAT is the same lab with the declaration.)
func TestLabNATUndeclaredFailsClosed(t *testing.T) {
	netnstest.RequireNamespaces(t)
	l, _ := upLab(t, lab.Options{NAT: true, NoNATDeclaration: true}, "testdata/three.yaml")
	nodeOf := func(ref string) string { // three.yaml: a and b on node1, c on node2
		if strings.HasSuffix(ref, "/c") {
			return "node2"
		}
		return "node1"
	}
	got := probe(t, l)
	expectMatrix(t, "nat undeclared", got, l.Pods(), func(from, to string) bool { return nodeOf(from) == nodeOf(to) })
	if r := got["x/a>y/c:80"]; !strings.Contains(r.Reason, "endpoint-mismatch") {
		t.Errorf("x/a -> y/c refused for %q, want endpoint-mismatch", r.Reason)
	}
}

// The README's demo command runs to its matrices and its refused attack.
func TestDemoScript(t *testing.T) {
	netnstest.RequireNamespaces(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	state := filepath.Join(t.TempDir(), "demo")
	cmd := exec.CommandContext(ctx, "bash", "../scripts/demo.sh")
	cmd.Env = append(os.Environ(), "BIREME="+biremeBinary(t), "STATE="+state)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"### 1. No policy yet", "### 2. Applying", "### 3. Attack",
		"x/a -> y/c:5432  connected",
		"x/mallory -> y/c:5432  REFUSED",
		"unknown-ca", // refused for its identity, not by policy alone
		"The forged identity was refused",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("demo left its state directory %s", state)
	}
}
