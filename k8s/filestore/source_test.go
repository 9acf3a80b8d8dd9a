package filestore_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bireme/bireme/agent"
	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/internal/syncbuf"
	"github.com/bireme/bireme/k8s/filestore"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

func storePod(name, node, netns, app string) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: x
  labels: {app: %s}
  annotations: {bireme.io/netns: %s}
spec:
  nodeName: %s
  containers: [{name: main, image: none}]
`, name, app, netns, node)
}

const storeNamespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"

// writeStore replaces the store's one file atomically, as writers should.
func writeStore(t *testing.T, dir string, docs ...string) {
	t.Helper()
	tmp := filepath.Join(dir, ".store.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(strings.Join(docs, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "store.yaml")); err != nil {
		t.Fatal(err)
	}
}

// TestSourceStates: the first state comes at start with this node's
// annotated pods and the compiled policy; a valid change brings a new state;
// an invalid one brings none and is logged; a pod with a bad annotation is
// logged and skipped.
func TestSourceStates(t *testing.T) {
	store := t.TempDir()
	writeStore(t, store, storeNamespace, storePod("a", "n1", "ns-a", "web"), storePod("c", "n2", "ns-c", "web"))
	var logs syncbuf.Buffer
	src, err := filestore.NewSource(filestore.Config{Dir: store, Node: "n1", Cluster: "c1", Poll: 10 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	states := make(chan desired.State, 10)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(s desired.State) { states <- s }) }()
	next := func(what string) desired.State {
		t.Helper()
		select {
		case s := <-states:
			return s
		case <-ctx.Done():
			t.Fatalf("%s: no state; log: %s", what, logs.String())
			return desired.State{}
		}
	}
	refs := func(s desired.State) []string {
		var out []string
		for _, w := range s.Workloads {
			out = append(out, fmt.Sprintf("%s@%s app=%s", w.Ref, filepath.Base(w.NetNS), w.Identity.Labels["app"]))
		}
		return out
	}

	first := next("start")
	if got, want := refs(first), []string{"x/a@ns-a app=web"}; !reflect.DeepEqual(got, want) || first.Policy == nil || first.Trust != nil {
		t.Fatalf("first state: %v, policy %v, trust %v; want %v, a policy, no trust", got, first.Policy, first.Trust, want)
	}
	if id := first.Workloads[0].Identity; id.Cluster != "c1" || id.NamespaceLabels["kubernetes.io/metadata.name"] != "x" {
		t.Errorf("identity %+v: want cluster c1 and the namespace's labels", id)
	}

	writeStore(t, store, storeNamespace, storePod("a", "n1", "ns-a", "api"), storePod("b", "n1", "a/b", "db"))
	if got, want := refs(next("change")), []string{"x/a@ns-a app=api"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after a change: %v, want %v", got, want)
	}
	if !strings.Contains(logs.String(), "workload skipped") || !strings.Contains(logs.String(), "pod x/b") {
		t.Errorf("bad annotation not logged: %s", logs.String())
	}

	writeStore(t, store, storeNamespace, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name, namespace: x}\n")
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), "Bad_Name"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("invalid store not logged: %s", logs.String())
		}
	}
	select {
	case s := <-states:
		t.Fatalf("invalid store delivered %v", refs(s))
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v after its context ended", err)
	}

	// An invalid store at start is an error: there is no last good set.
	if err := src.Run(context.Background(), func(desired.State) { t.Error("state from an invalid store") }); err == nil || !strings.Contains(err.Error(), "Bad_Name") {
		t.Fatalf("Run on an invalid store = %v", err)
	}
}

// recordingDatapath keeps the installed workloads by namespace path.
type recordingDatapath struct {
	mu    sync.Mutex
	state map[string]desired.Workload
}

func (d *recordingDatapath) Install(_ context.Context, w desired.Workload) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.state[w.NetNS] = w
	return nil
}

func (d *recordingDatapath) Update(w desired.Workload) error {
	return d.Install(context.Background(), w)
}

func (d *recordingDatapath) Remove(_ context.Context, w desired.Workload) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.state, w.NetNS)
	return nil
}

func (d *recordingDatapath) snapshot() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for path, w := range d.state {
		out = append(out, fmt.Sprintf("%s=%s app=%s", filepath.Base(path), w.Ref, w.Identity.Labels["app"]))
	}
	sort.Strings(out)
	return out
}

// TestAgentFollowsStore runs an agent on the file store with a recording
// datapath (no root needed) and changes the store under it, as `bireme
// enforce` does with the real datapath.
func TestAgentFollowsStore(t *testing.T) {
	store := t.TempDir()
	writeStore(t, store, storeNamespace, storePod("a", "n1", "ns-a", "web"), storePod("b", "n1", "ns-b", "db"), storePod("c", "n2", "ns-c", "web"))
	ca, err := tokens.NewCA("c1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := ca.IssueNode("n1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := tokens.NewTrustBundle(ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := tokens.NewEngine(tokens.Config{Credentials: creds, Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	src, err := filestore.NewSource(filestore.Config{Dir: store, Node: "n1", Cluster: "c1", Poll: 20 * time.Millisecond, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	dp := &recordingDatapath{state: map[string]desired.Workload{}}
	live := policy.NewLive(nil)
	a, err := agent.New(agent.Config{Source: src, Datapath: dp, Policy: live, Placement: agent.NewLivePlacement(), Tokens: engine, Poll: 20 * time.Millisecond, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	waitFor := func(what string, want []string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			got := dp.snapshot()
			if reflect.DeepEqual(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: installed %v, want %v\nlog:\n%s", what, got, want, logs.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("start", []string{"ns-a=x/a app=web", "ns-b=x/b app=db"})
	if live.Engine() == nil {
		t.Error("the store's policy is not in force")
	}

	writeStore(t, store, storeNamespace, storePod("a", "n1", "ns-a", "api"), storePod("c", "n2", "ns-c", "web"))
	waitFor("a relabelled, b gone", []string{"ns-a=x/a app=api"})

	// An invalid store keeps the last good set.
	writeStore(t, store, storeNamespace, storePod("a", "n1", "ns-a", "web"), "---\napiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name, namespace: x}\n")
	time.Sleep(200 * time.Millisecond)
	waitFor("invalid store", []string{"ns-a=x/a app=api"})

	writeStore(t, store, storeNamespace, storePod("a", "n1", "ns-a", "api"), storePod("d", "n1", "/proc/1/ns/net", "web"))
	waitFor("d added by path", []string{"net=x/d app=web", "ns-a=x/a app=api"})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v, want nil after a clean stop", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	// Stopping fails closed: the rules stay until an explicit uninstall.
	if got, want := dp.snapshot(), []string{"net=x/d app=web", "ns-a=x/a app=api"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after stop: installed %v; want %v left in place", got, want)
	}
}
