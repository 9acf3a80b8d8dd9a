package policy

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bireme/bireme/internal/syncbuf"
)

// TestLiveSwap: a swap applies to the next decision; label changes of the
// local pod, the peer pod and the peer's namespace apply at once because
// they change the identities decided on.
func TestLiveSwap(t *testing.T) {
	allowClients := np("x", "web", "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: client}}}]}]")
	e1 := compileWith(t)
	live := NewLive(e1)
	objs := e1.Objects()
	server, client := ident(t, objs, "x/a"), ident(t, objs, "y/b")
	decide := func() Decision { return live.Decide(server, Peer{Identity: client}, Ingress, 80, "TCP") }

	if d := decide(); !d.Allowed {
		t.Fatalf("before policy: %s", d.Reason)
	}
	e2 := compileWith(t, allowClients)
	live.Swap(e2)
	if live.Engine() != e2 {
		t.Fatal("Engine() is not the swapped engine")
	}
	if d := decide(); !d.Allowed || d.Policy != "x/web" {
		t.Fatalf("allowed client: %s", d.Reason)
	}

	// The client's pod label changes: a new identity, denied.
	client = client.Clone()
	client.Labels["app"] = "batch"
	if d := decide(); d.Allowed {
		t.Fatalf("relabelled client still allowed: %s", d.Reason)
	}
	client.Labels["app"] = "client"
	// The client's namespace label changes (through its Namespace object and
	// IdentityOf, as the agent does): denied.
	objs2 := parseObjects(t, strings.Replace(fixtureYAML, "{team: b}", "{team: c}", 1), allowClients)
	e3, err := Compile(objs2)
	if err != nil {
		t.Fatal(err)
	}
	live.Swap(e3)
	client = ident(t, objs2, "y/b")
	if d := decide(); d.Allowed {
		t.Fatalf("client in relabelled namespace still allowed: %s", d.Reason)
	}
	// The server's label changes so the policy no longer selects it: open.
	client = ident(t, objs, "y/b")
	server = server.Clone()
	server.Labels["app"] = "api"
	if d := decide(); !d.Allowed || d.Policy != "" {
		t.Fatalf("unselected server: %s", d.Reason)
	}
	// The policy is removed again.
	live.Swap(e1)
	server.Labels["app"] = "web"
	if d := decide(); !d.Allowed || d.Policy != "" {
		t.Fatalf("after removal: %s", d.Reason)
	}
	// No engine: fail closed.
	var empty Live
	if d := empty.Decide(server, Peer{Identity: client}, Ingress, 80, "TCP"); d.Allowed {
		t.Fatal("zero Live allowed")
	}
	if d := NewLive(nil).Decide(server, Peer{Identity: client}, Ingress, 80, "TCP"); d.Allowed {
		t.Fatal("Live(nil) allowed")
	}
}

// TestWatchDir: a valid change is compiled and reported; a bad edit is
// logged with file, object and field and keeps the previous set; fixing it
// is picked up.
func TestWatchDir(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"world.yaml":    fixtureYAML,
		"policies.yaml": np("x", "deny", "  podSelector: {}\n  ingress: []"),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	changes := make(chan *Engine, 10)
	done := make(chan error, 1)
	go func() {
		done <- WatchDirLog(ctx, dir, 5*time.Millisecond, log, func(_ Objects, e *Engine) { changes <- e })
	}()
	live := NewLive(nil)
	next := func(what string) {
		t.Helper()
		select {
		case e := <-changes:
			live.Swap(e)
		case <-ctx.Done():
			t.Fatalf("%s: no change reported; log: %s", what, logs.String())
		}
	}
	objs := parseObjects(t, fixtureYAML)
	server, client := ident(t, objs, "x/a"), ident(t, objs, "x/c")
	allowed := func() bool { return live.Decide(server, Peer{Identity: client}, Ingress, 80, "TCP").Allowed }

	next("initial set")
	if allowed() {
		t.Fatal("initial deny policy not in force")
	}
	// Replace the file atomically, as writers of the store should: the
	// watcher never reads a dot file, and rename swaps the whole content.
	write := func(content string) {
		t.Helper()
		tmp := filepath.Join(dir, ".policies.yaml.tmp")
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "policies.yaml")); err != nil {
			t.Fatal(err)
		}
	}
	write(np("x", "deny", "  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]"))
	next("valid edit")
	if !allowed() {
		t.Fatal("edited policy not in force")
	}

	write(np("x", "deny", "  podSelector: {}\n  ingress: [{ports: [{port: 80, endPort: 1}]}]"))
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "spec.ingress[0].ports[0].endPort") {
		if time.Now().After(deadline) {
			t.Fatalf("bad edit not logged; log: %s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, want := range []string{"policies.yaml", "NetworkPolicy x/deny"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q: %s", want, logs.String())
		}
	}
	select {
	case <-changes:
		t.Fatal("bad edit was reported as a change")
	case <-time.After(50 * time.Millisecond):
	}
	if !allowed() {
		t.Fatal("previous set not kept")
	}
	if n := strings.Count(logs.String(), "rejected"); n != 1 {
		t.Errorf("bad edit logged %d times, want once", n)
	}

	write(np("x", "deny", "  podSelector: {}\n  ingress: []"))
	next("fixed edit")
	if allowed() {
		t.Fatal("fixed policy not in force")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("WatchDir returned %v", err)
	}
	if err := WatchDir(context.Background(), dir, 0, func(Objects, *Engine) {}); err == nil {
		t.Fatal("zero interval accepted")
	}
}

// TestLiveConcurrent: decisions from several goroutines while engines are
// swapped always come whole from one engine or the other (run with -race).
func TestLiveConcurrent(t *testing.T) {
	open := compileWith(t)
	closed := compileWith(t, np("x", "deny", "  podSelector: {}\n  ingress: []"))
	live := NewLive(open)
	objs := open.Objects()
	server, client := ident(t, objs, "x/a"), ident(t, objs, "x/c")
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 3000 {
				d := live.Decide(server, Peer{Identity: client}, Ingress, uint16(80+(i+g)%4), "TCP")
				okOpen := d.Allowed && d.Reason == "allowed: no policy selects x/a for ingress"
				okClosed := !d.Allowed && d.Reason == "denied: selected by x/deny and no rule allows"
				if !okOpen && !okClosed {
					errs <- d.Reason
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for i := 0; ; i++ {
		select {
		case <-done:
			close(errs)
			for e := range errs {
				t.Errorf("torn decision: %s", e)
			}
			return
		default:
		}
		if i%2 == 0 {
			live.Swap(closed)
		} else {
			live.Swap(open)
		}
		runtime.Gosched()
	}
}
