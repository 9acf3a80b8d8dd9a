package tokens

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("cluster.local", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	node, err := ca.IssueNode("node-1", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if node.Cert.NotAfter.After(ca.Cert.NotAfter) {
		t.Error("node certificate outlives its CA")
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	// A pre-existing world-readable file must end up 0600 too.
	if err := os.WriteFile(p("node.key"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(p("ca.crt"), p("ca.key")); err != nil {
		t.Fatal(err)
	}
	if err := node.Save(p("node.crt"), p("node.key")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.crt", "ca.key", "node.crt", "node.key"} {
		st, err := os.Stat(p(f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	ca2, err := LoadCA(p("ca.crt"), p("ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if ca2.TrustDomain != "cluster.local" || !ca2.Key.Equal(ca.Key) {
		t.Errorf("loaded CA %q differs", ca2.TrustDomain)
	}
	n2, err := LoadNodeCredentials(p("node.crt"), p("node.key"))
	if err != nil {
		t.Fatal(err)
	}
	if n2.Node != "node-1" || n2.TrustDomain != "cluster.local" || !n2.Key.Equal(node.Key) {
		t.Errorf("loaded node %s/%s differs", n2.TrustDomain, n2.Node)
	}
	// A loaded CA issues certificates that the saved CA certificate verifies.
	n3, err := ca2.IssueNode("node-3", 0)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := LoadTrustBundle(p("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	e := newTestEngine(t, n2, bundle, nil)
	handshake(t, newTestEngine(t, n3, bundle, nil), e, workload("a", "b", 1), workload("c", "d", 1))
	// Entries without files left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 {
		t.Errorf("%d files in the directory, want 4 (temporary files left?)", len(entries))
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	ca, _ := NewCA("cluster.local", 0)
	other, _ := NewCA("other.example", 0)
	node, _ := ca.IssueNode("n", 0)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(ca.Save(p("ca.crt"), p("ca.key")))
	must(other.Save(p("other.crt"), p("other.key")))
	must(node.Save(p("node.crt"), p("node.key")))
	must(os.WriteFile(p("garbage"), []byte("not pem"), 0o600))
	tests := []struct {
		name string
		load func() error
		want string
	}{
		{"CA key mismatch", func() error { _, err := LoadCA(p("ca.crt"), p("other.key")); return err }, "does not match"},
		{"node cert as CA", func() error { _, err := LoadCA(p("node.crt"), p("node.key")); return err }, "not a CA"},
		{"CA cert as node", func() error { _, err := LoadNodeCredentials(p("ca.crt"), p("ca.key")); return err }, "not a Bireme node"},
		{"missing file", func() error { _, err := LoadCA(p("nope.crt"), p("ca.key")); return err }, "no such file"},
		{"garbage cert", func() error { _, err := LoadNodeCredentials(p("garbage"), p("node.key")); return err }, "no PEM"},
		{"garbage key", func() error { _, err := LoadNodeCredentials(p("node.crt"), p("garbage")); return err }, "no PEM"},
		{"node cert in bundle", func() error { _, err := LoadTrustBundle(p("node.crt")); return err }, "not a CA"},
		{"empty bundle", func() error { _, err := NewTrustBundle(); return err }, "no CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.load()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
	// One file with several CAs (federation or CA rotation).
	a, _ := os.ReadFile(p("ca.crt"))
	b, _ := os.ReadFile(p("other.crt"))
	must(os.WriteFile(p("bundle.pem"), append(a, b...), 0o600))
	bundle, err := LoadTrustBundle(p("bundle.pem"), p("ca.crt"))
	must(err)
	if got := bundle.TrustDomains(); len(got) != 2 || len(bundle.CAs("cluster.local")) != 1 {
		t.Fatalf("bundle domains %v, %d CAs for cluster.local", got, len(bundle.CAs("cluster.local")))
	}
}

func TestNames(t *testing.T) {
	for _, bad := range []string{"", "UPPER.case", "a/b", "spiffe://x", "a b", strings.Repeat("a", 254)} {
		if _, err := NewCA(bad, 0); err == nil {
			t.Errorf("NewCA(%q) accepted", bad)
		}
	}
	ca, err := NewCA("cluster.local", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "a/b", "../x", "n?x"} {
		if _, err := ca.IssueNode(bad, 0); err == nil {
			t.Errorf("IssueNode(%q) accepted", bad)
		}
	}
	n, err := ca.IssueNode("Node_1.zone-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	td, node, err := CertTrustDomain(n.Cert)
	if err != nil || td != "cluster.local" || node != "Node_1.zone-a" {
		t.Fatalf("CertTrustDomain = %q, %q, %v", td, node, err)
	}
}
