package filestore

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/internal/syncbuf"
	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/policy"
)

// TestWatch (watchDir, which Source runs on): a valid change is compiled and reported; a bad edit is
// logged with file, object and field and keeps the previous set; fixing it
// is picked up.
func TestWatch(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"world.yaml":    worldYAML,
		"policies.yaml": np("x", "deny", "  podSelector: {}\n  ingress: []"),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	changes := make(chan *policy.Engine, 10)
	done := make(chan error, 1)
	go func() {
		done <- watchDir(ctx, dir, 5*time.Millisecond, log, func(_ policy.Objects, e *policy.Engine) { changes <- e })
	}()
	live := policy.NewLive(nil)
	next := func(what string) {
		t.Helper()
		select {
		case e := <-changes:
			live.Swap(e)
		case <-ctx.Done():
			t.Fatalf("%s: no change reported; log: %s", what, logs.String())
		}
	}
	objs, err := k8s.Decode("world.yaml", []byte(worldYAML))
	if err != nil {
		t.Fatal(err)
	}
	server := k8s.IdentityOf("c1", objs.Namespace("x"), objs.Pod("x", "a"))
	client := k8s.IdentityOf("c1", objs.Namespace("x"), objs.Pod("x", "c"))
	allowed := func() bool {
		return live.Decide(server, policy.Peer{Identity: client}, policy.Ingress, 80, "TCP").Allowed
	}

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
		t.Fatalf("watchDir returned %v", err)
	}
	if err := watchDir(context.Background(), dir, 0, log, func(policy.Objects, *policy.Engine) {}); err == nil {
		t.Fatal("zero interval accepted")
	}
}
