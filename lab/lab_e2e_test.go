package lab_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/internal/testbin"
	"github.com/bireme/bireme/lab"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
)

// biremeBinary returns the bireme executable the lab runs: $BIREME_BIN
// (set by `make test`), or one built once for this test binary.
func biremeBinary(t *testing.T) string {
	t.Helper()
	bin, err := testbin.Bireme()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// upLab starts a lab in a fresh state directory and registers its teardown,
// which also checks that nothing is left behind.
func upLab(t *testing.T, opts lab.Options, files ...string) (*lab.Lab, lab.Config) {
	t.Helper()
	cfg := lab.Config{StateDir: filepath.Join(t.TempDir(), "lab"), Binary: biremeBinary(t)}
	opts.Prefix = netnstest.Prefix()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, cfg, opts, files...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := lab.Down(ctx, cfg); err != nil {
			t.Errorf("lab down: %v", err)
		}
		assertNothingLeft(t, opts.Prefix, cfg.StateDir)
	})
	return l, cfg
}

// assertNothingLeft checks that no namespace, process or state of the lab
// survives: rules lived only inside the lab's namespaces, so with them gone
// no rule is left either, which the root namespace's rule set confirms.
func assertNothingLeft(t *testing.T, prefix, stateDir string) {
	t.Helper()
	if left, _ := netns.List(prefix + "-"); len(left) > 0 {
		t.Errorf("namespaces left after lab down: %v", left)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err == nil && bytes.Contains(data, []byte(stateDir)) {
			t.Errorf("process left after lab down: %s: %q", p, bytes.ReplaceAll(data, []byte{0}, []byte{' '}))
		}
	}
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("state directory %s left after lab down (%v)", stateDir, err)
	}
	if out, err := exec.Command("iptables-save").Output(); err == nil && bytes.Contains(out, []byte(prefix)) {
		t.Errorf("root namespace rules mention the lab prefix %s", prefix)
	}
}

func probe(t *testing.T, l *lab.Lab) map[string]lab.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	results, err := l.Probe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]lab.Result{}
	for _, r := range results {
		out[fmt.Sprintf("%s>%s:%d", r.From, r.To, r.Port)] = r
	}
	return out
}

// expectMatrix compares a probe with want(from, to) over every ordered
// pair of pods, all on port 80.
func expectMatrix(t *testing.T, step string, got map[string]lab.Result, pods []string, want func(from, to string) bool) {
	t.Helper()
	bad := 0
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			r, ok := got[fmt.Sprintf("%s>%s:80", from, to)]
			if !ok {
				t.Errorf("%s: no probe %s -> %s", step, from, to)
				continue
			}
			if r.Connected != want(from, to) {
				bad++
				t.Errorf("%s: %s -> %s connected=%v, want %v (%s)", step, from, to, r.Connected, !r.Connected, r.Reason)
			}
		}
	}
	on80 := 0
	for _, r := range got {
		if r.Port == 80 {
			on80++
		}
	}
	if n := len(pods) * (len(pods) - 1); on80 != n {
		t.Errorf("%s: %d probes on port 80, want %d", step, on80, n)
	}
	if bad > 0 {
		var results []lab.Result
		for _, r := range got {
			results = append(results, r)
		}
		var buf bytes.Buffer
		_ = lab.WriteTable(&buf, pods, results)
		t.Logf("%s: matrix\n%s", step, buf.String())
	}
}

func all(string, string) bool { return true }

// A lab without enforcers: build, status, change, probe, tear down, with
// and without NAT. Everything connects; pods come and go.
func TestLabLifecycle(t *testing.T) {
	netnstest.RequireNamespaces(t)
	for _, nat := range []bool{false, true} {
		t.Run(fmt.Sprintf("nat=%v", nat), func(t *testing.T) {
			l, cfg := upLab(t, lab.Options{NoEnforce: true, NAT: nat}, "testdata/three.yaml")
			pods := l.Pods()
			if len(pods) != 9 {
				t.Fatalf("pods %v", pods)
			}
			st := l.Status()
			if len(st.Nodes) != 2 || len(st.Pods) != 9 || st.NAT != nat {
				t.Fatalf("status %+v", st)
			}
			for _, p := range st.Pods {
				if !netns.Exists(p.NetNS) {
					t.Errorf("pod %s: status names netns %s, which does not exist", p.Pod, p.NetNS)
				}
				if p.Labels["pod"] == "" || p.Addr.As4()[0] != 198 || p.Node == "" {
					t.Errorf("pod status %+v", p)
				}
			}
			expectMatrix(t, "open", probe(t, l), pods, all)

			// A second process (another `bireme lab` command) works on the lab.
			if _, err := lab.Open(cfg); err == nil {
				t.Fatal("opened a lab that another command holds")
			}
			l.Close()
			l2, err := lab.Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			newPod := filepath.Join(t.TempDir(), "d.yaml")
			if err := os.WriteFile(newPod, []byte(`apiVersion: v1
kind: Pod
metadata: {name: d, namespace: "y", labels: {pod: d}}
spec:
  nodeName: node3
  containers: [{name: m, image: i, ports: [{containerPort: 80}, {containerPort: 8080}]}]
`), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := l2.Apply(ctx, newPod); err != nil {
				t.Fatal(err)
			}
			got := probe(t, l2)
			expectMatrix(t, "with y/d", got, l2.Pods(), all)
			if r := got["x/a>y/d:8080"]; !r.Connected {
				t.Errorf("x/a -> y/d:8080 on the new node: %+v", r)
			}
			if len(l2.Status().Nodes) != 3 {
				t.Errorf("nodes after adding y/d: %+v", l2.Status().Nodes)
			}
			// Moving a pod to another node with other ports rebuilds it.
			if err := os.WriteFile(newPod, []byte(`apiVersion: v1
kind: Pod
metadata: {name: d, namespace: "y", labels: {pod: d}}
spec:
  nodeName: node1
  containers: [{name: m, image: i, ports: [{containerPort: 8081}]}]
`), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := l2.Apply(ctx, newPod); err != nil {
				t.Fatal(err)
			}
			got = probe(t, l2)
			if r := got["x/a>y/d:8081"]; !r.Connected {
				t.Errorf("x/a -> y/d:8081 after the move: %+v", r)
			}
			if _, ok := got["x/a>y/d:8080"]; ok {
				t.Error("y/d still probed on its old port 8080")
			}
			for _, p := range l2.Status().Pods {
				if p.Pod == "y/d" && (p.Node != "node1" || p.Addr.As4()[2] != 1) {
					t.Errorf("y/d after the move: %+v", p)
				}
			}
			if err := l2.Delete(ctx, newPod); err != nil {
				t.Fatal(err)
			}
			if netns.Exists(netnsOf(l2, "y/d")) || len(l2.Pods()) != 9 {
				t.Errorf("y/d still there after delete: %v", l2.Pods())
			}
			// Bad input changes nothing.
			bad := filepath.Join(t.TempDir(), "bad.yaml")
			_ = os.WriteFile(bad, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: e, namespace: x}\nspec: {containers: [{name: m, image: i, ports: [{containerPort: 99999}]}]}\n"), 0o644)
			if err := l2.Apply(ctx, bad); err == nil {
				t.Error("applied a pod with port 99999")
			}
			if len(l2.Pods()) != 9 {
				t.Errorf("pods after a refused apply: %v", l2.Pods())
			}
			l = l2
		})
	}
}

func netnsOf(l *lab.Lab, pod string) string {
	for _, p := range l.Status().Pods {
		if p.Pod == pod {
			return p.NetNS
		}
	}
	return "none"
}

// Two labs of the same files cannot share a state directory, and a failed
// build leaves nothing.
func TestLabUpRefusesAndCleansUp(t *testing.T) {
	netnstest.RequireNamespaces(t)
	_, cfg := upLab(t, lab.Options{NoEnforce: true}, "testdata/three.yaml")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := lab.Up(ctx, cfg, lab.Options{NoEnforce: true}, "testdata/three.yaml"); err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("second lab in one state directory: %v", err)
	}

	// A binary that is not bireme cannot serve: the build fails halfway
	// and must clean up.
	failCfg := lab.Config{StateDir: filepath.Join(t.TempDir(), "lab"), Binary: "/bin/false"}
	prefix := netnstest.Prefix()
	if _, err := lab.Up(ctx, failCfg, lab.Options{NoEnforce: true, Prefix: prefix}, "testdata/three.yaml"); err == nil {
		t.Fatal("lab up with a broken binary succeeded")
	}
	assertNothingLeft(t, prefix, failCfg.StateDir)
}

// `lab down` cleans up from what a crash leaves: no state.json, a lab
// command killed while holding the lock.
func TestLabDownAfterCrash(t *testing.T) {
	netnstest.RequireNamespaces(t)
	cfg := lab.Config{StateDir: filepath.Join(t.TempDir(), "lab"), Binary: biremeBinary(t)}
	prefix := netnstest.Prefix()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t.Cleanup(func() { _ = lab.Down(context.Background(), cfg) })
	if _, err := lab.Up(ctx, cfg, lab.Options{NoEnforce: true, Prefix: prefix}, "testdata/three.yaml"); err != nil {
		t.Fatal(err)
	}
	// The *Lab is never closed (its process "died"), and its state is lost.
	if err := os.Remove(filepath.Join(cfg.StateDir, "state.json")); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Open(cfg); err == nil {
		t.Error("opened a lab without state")
	}
	if err := lab.Down(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, prefix, cfg.StateDir)
}
