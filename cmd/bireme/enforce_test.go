package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/tokens"
)

// TestRunNodeRefusesBadStart: what `bireme enforce` cannot start with is an
// error naming the problem, and nothing is left running. (No case here
// reaches a workload, so no root is needed.)
func TestRunNodeRefusesBadStart(t *testing.T) {
	dir := t.TempDir()
	ca, err := tokens.NewCA("c1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := ca.Save(caFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	creds, err := ca.IssueNode("n1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key")
	if err := creds.Save(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	store, badStore := filepath.Join(dir, "store"), filepath.Join(dir, "bad")
	for _, d := range []string{store, badStore} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bad := "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name, namespace: x}\n"
	if err := os.WriteFile(filepath.Join(badStore, "store.yaml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	good := enforceOptions{node: "n1", cluster: "c1", store: store, caBundle: []string{caFile},
		certFile: certFile, keyFile: keyFile, queues: 1, poll: 20 * time.Millisecond,
		identityNetworks: []string{"198.18.0.0/16"}}

	tests := []struct {
		name   string
		change func(*enforceOptions)
		want   string
	}{
		{"no node", func(o *enforceOptions) { o.node = "" }, "Node"},
		{"no CA bundle", func(o *enforceOptions) { o.caBundle = nil }, "CA bundle"},
		{"store missing", func(o *enforceOptions) { o.store = filepath.Join(dir, "nope") }, "file store"},
		{"store is a file", func(o *enforceOptions) { o.store = caFile }, "not a directory"},
		{"wrong cluster", func(o *enforceOptions) { o.cluster = "other" }, `trust domain "c1"`},
		{"key missing", func(o *enforceOptions) { o.keyFile = filepath.Join(dir, "nope.key") }, "credentials"},
		{"CA file missing", func(o *enforceOptions) { o.caBundle = []string{filepath.Join(dir, "nope.crt")} }, "CA bundle"},
		{"invalid store", func(o *enforceOptions) { o.store = badStore }, "Bad_Name"},
		{"too many queues", func(o *enforceOptions) { o.queues = 5000 }, "queues"},
		{"negative poll", func(o *enforceOptions) { o.poll = -time.Second }, "poll"},
		{"no identity networks", func(o *enforceOptions) { o.identityNetworks = nil }, "--identity-networks"},
		{"bad identity network", func(o *enforceOptions) { o.identityNetworks = []string{"198.18.0.0/33"} }, "198.18.0.0/33"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good
			tt.change(&o)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := runNode(ctx, o, o.fileStore, flowlog.NewWriter(io.Discard), nil, nil, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("runNode = %v; want an error mentioning %q", err, tt.want)
			}
		})
	}
}
