package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/internal/syncbuf"
)

// The commands are a thin layer over flowlog, flowlog/query and
// flowlog/flowmap (whose tests check the answers); e2e's TestFlowsCLI runs
// them on a lab's records.
func TestFlowsCommands(t *testing.T) {
	dir := t.TempDir()
	path, keyFile := filepath.Join(dir, "n1.jsonl"), filepath.Join(dir, "flows.key")
	key, err := flowlog.LoadOrCreateKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	w, c, err := flowlog.OpenFile(flowlog.FileConfig{Path: path, Key: key, MaxBytes: 1200, Keep: 3})
	if err != nil {
		t.Fatal(err)
	}
	web := &identity.Identity{Cluster: "c", Namespace: "shop", Pod: "web", Labels: map[string]string{"app": "web"}}
	db := &identity.Identity{Cluster: "c", Namespace: "data", Pod: "db"}
	now := time.Now().UTC()
	for i := 0; i < 6; i++ {
		r := &flowlog.Record{Time: now.Add(time.Duration(i) * time.Second), Node: "n1", Direction: "ingress", Stage: "syn", Protocol: "TCP",
			LocalAddr: "198.18.0.2:5432", PeerAddr: "198.18.0.3:4100" + string(rune('0'+i)), Local: db, Peer: web,
			Verdict: flowlog.Allow, Policy: "data/allow", Reason: "allowed"}
		if i%2 == 1 {
			r.Verdict, r.Policy, r.Reason = flowlog.Deny, "", "no rule allows"
		}
		r.Handshake = flowlog.ThreeMessage
		if i == 2 {
			r.Handshake = flowlog.TwoMessage
		}
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(path + "*")
	var flowFiles []string
	for _, f := range files {
		if !strings.HasSuffix(f, ".head") {
			flowFiles = append(flowFiles, f)
		}
	}
	if len(flowFiles) < 2 {
		t.Fatalf("no rotation: %v", files)
	}

	out, err := runCommand(t, newRootCmd(), append([]string{"flows", "--verdict", "deny", "--from-label", "app=web", "--port", "5432"}, flowFiles...)...)
	if err != nil || strings.Count(out, "\n") != 4 || !strings.Contains(out, "shop/web") || strings.Contains(out, " allow ") {
		t.Errorf("flows --verdict deny: %v\n%s", err, out)
	}
	out, err = runCommand(t, newRootCmd(), append([]string{"flows", "--handshake", "two-message"}, flowFiles...)...)
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, "handshake=two-message") {
		t.Errorf("flows --handshake two-message: %v\n%s", err, out)
	}
	if _, err := runCommand(t, newRootCmd(), append([]string{"flows", "--handshake", "four"}, flowFiles...)...); err == nil || !strings.Contains(err.Error(), "--handshake") {
		t.Errorf("bad --handshake: %v", err)
	}
	out, err = runCommand(t, newRootCmd(), append([]string{"flows", "top", "--to", "data/"}, flowFiles...)...)
	if err != nil || !strings.Contains(out, "3      shop/web  data/db  allow    5432") {
		t.Errorf("flows top: %v\n%s", err, out)
	}
	out, err = runCommand(t, newRootCmd(), append([]string{"flows", "top", "--group", "namespace"}, flowFiles...)...)
	if err != nil || !strings.Contains(out, "3      shop/  data/  allow    5432") {
		t.Errorf("flows top --group namespace: %v\n%s", err, out)
	}
	out, err = runCommand(t, newRootCmd(), append([]string{"flows", "map", "--format", "dot"}, flowFiles...)...)
	if err != nil || !strings.Contains(out, `"shop/web" -> "data/db"`) || !strings.Contains(out, "style=dashed") {
		t.Errorf("flows map: %v\n%s", err, out)
	}
	out, err = runCommand(t, newRootCmd(), append([]string{"flows", "verify", "--key", keyFile}, flowFiles...)...)
	if err != nil || !strings.HasPrefix(out, "intact: 6 records (1 to 6)") {
		t.Errorf("flows verify: %v\n%s", err, out)
	}
	out, err = runCommand(t, newRootCmd(), "flows", "verify", path)
	if err == nil || !strings.Contains(out, "not verified") {
		t.Errorf("flows verify without key: %v\n%s", err, out)
	}
	// Cut the last record.
	b, _ := os.ReadFile(path)
	lines := strings.SplitAfter(strings.TrimSuffix(string(b), "\n"), "\n")
	os.WriteFile(path, []byte(strings.Join(lines[:len(lines)-1], "")), 0o640)
	out, err = runCommand(t, newRootCmd(), append([]string{"flows", "verify", "--key", keyFile}, flowFiles...)...)
	if err == nil || !strings.Contains(out, "broken: ") || !strings.Contains(out, "truncated") {
		t.Errorf("flows verify after truncation: %v\n%s", err, out)
	}
	if _, err := runCommand(t, newRootCmd(), "flows", "--since", "yesterday", path); err == nil || !strings.Contains(err.Error(), "--since") {
		t.Errorf("bad --since: %v", err)
	}
}

// TestFlowsFollow: --follow prints what is there, then what is appended.
func TestFlowsFollow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n1.jsonl")
	w, c, err := flowlog.OpenFile(flowlog.FileConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rec := func(pod string) *flowlog.Record {
		return &flowlog.Record{Time: time.Now(), Node: "n1", Direction: "egress", Protocol: "TCP", LocalAddr: "198.18.0.2:40000",
			PeerAddr: "198.18.0.3:80", Local: &identity.Identity{Namespace: "x", Pod: pod}, Verdict: flowlog.Allow}
	}
	w.Write(rec("before"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out syncbuf.Buffer
	cmd := newRootCmd()
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"flows", "--follow", "--from", "x/", path})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	for !strings.Contains(out.String(), "x/before -> 198.18.0.3:80/TCP") && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	w.Write(rec("after"))
	for !strings.Contains(out.String(), "x/after") && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "x/after") {
		t.Fatalf("follow printed:\n%s", out.String())
	}
}
