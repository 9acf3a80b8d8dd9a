package dockersource

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/internal/syncbuf"
)

// fakeEngine is an in-memory engine for the unit test; the e2e test in
// e2e/docker runs the real one.
type fakeEngine struct {
	mu         sync.Mutex
	containers map[string]Container
	events     chan string
}

func (f *fakeEngine) Running(context.Context) ([]Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Container
	for _, c := range f.containers {
		c.Pid = 0 // a list does not give it
		out = append(out, c)
	}
	return out, nil
}

func (f *fakeEngine) Inspect(_ context.Context, id string) (Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[id]
	if !ok {
		return Container{}, fmt.Errorf("no container %s", id)
	}
	return c, nil
}

func (f *fakeEngine) Events(ctx context.Context) (<-chan string, <-chan error) {
	return f.events, make(chan error)
}

func (f *fakeEngine) set(c Container) {
	f.mu.Lock()
	f.containers[c.ID] = c
	f.mu.Unlock()
	f.events <- c.ID
}

func (f *fakeEngine) remove(id string) {
	f.mu.Lock()
	delete(f.containers, id)
	f.mu.Unlock()
	f.events <- id
}

func TestSource(t *testing.T) {
	dir := t.TempDir()
	write := func(content string) {
		tmp := filepath.Join(dir, ".p.tmp")
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "p.yaml")); err != nil {
			t.Fatal(err)
		}
	}
	write("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: x}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: w, namespace: peer}\nspec: {nodeName: peer, containers: [{name: c, image: i}]}\n")
	labels := map[string]string{LabelProtect: "true", LabelNamespace: "x", "app": "web"}
	eng := &fakeEngine{containers: map[string]Container{
		"1": {ID: "1", Name: "web", Labels: labels, Pid: 100},
		"2": {ID: "2", Name: "other", Pid: 101},
		"3": {ID: "3", Name: "hostnet", Labels: labels, NetworkMode: "host", Pid: 102},
	}, events: make(chan string)}
	var logs syncbuf.Buffer
	src, err := New(Config{Engine: eng, Rules: Rules{Host: "dock1"}, Cluster: "c", PolicyDir: dir, Poll: 10 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	states := make(chan desired.State, 20)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(s desired.State) { states <- s }) }()
	next := func(what string, want ...string) desired.State {
		t.Helper()
		for {
			select {
			case s := <-states:
				var got []string
				for _, w := range s.Workloads {
					got = append(got, w.Ref+"@"+w.NetNS)
				}
				if strings.Join(got, " ") == strings.Join(want, " ") {
					return s
				}
			case <-ctx.Done():
				t.Fatalf("%s: no state with %v; log:\n%s", what, want, logs.String())
			}
		}
	}
	first := next("start", "x/web@/proc/100/ns/net")
	if first.Policy == nil {
		t.Fatal("first state has no policy")
	}
	if node, _ := first.Placement.NodeOf("x", "web"); node != "dock1" {
		t.Errorf("x/web placed on %q", node)
	}
	if node, _ := first.Placement.NodeOf("peer", "w"); node != "peer" {
		t.Errorf("peer/w placed on %q", node)
	}
	if id := first.Workloads[0].Identity; id.Labels["app"] != "web" || id.NamespaceLabels["team"] != "x" || id.Cluster != "c" {
		t.Errorf("identity %+v", id)
	}
	if !strings.Contains(logs.String(), "refused: --network host") {
		t.Errorf("host-network container not refused in the log:\n%s", logs.String())
	}

	// A restart: same container, new process.
	eng.set(Container{ID: "1", Name: "web", Labels: labels, Pid: 200})
	next("restart", "x/web@/proc/200/ns/net")
	// Another container opts in; then the first goes.
	eng.set(Container{ID: "2", Name: "other", Labels: labels, Pid: 101})
	next("opt in", "x/other@/proc/101/ns/net", "x/web@/proc/200/ns/net")
	eng.remove("1")
	next("removed", "x/other@/proc/101/ns/net")

	// An invalid policy directory is logged and changes nothing.
	write("apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n")
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), "Bad_Name"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("invalid policy directory not logged:\n%s", logs.String())
		}
	}
	select {
	case s := <-states:
		if s.Policy != nil {
			t.Fatal("an invalid policy directory was delivered")
		}
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v", err)
	}

	// A policy directory that does not load at start is an error.
	src2, _ := New(Config{Engine: eng, Rules: Rules{Host: "dock1"}, Cluster: "c", PolicyDir: dir})
	if err := src2.Run(context.Background(), func(desired.State) {}); err == nil || !strings.Contains(err.Error(), "Bad_Name") {
		t.Fatalf("Run on an invalid directory = %v", err)
	}
}
