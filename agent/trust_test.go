package agent

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/bireme/bireme/tokens"
)

// writeBundle writes td's bundle of ca into dir as TD.json.
func writeBundle(t *testing.T, dir, name string, td string, ca *tokens.CA) {
	t.Helper()
	b, err := tokens.NewBundle(td, []*x509.Certificate{ca.Cert}, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SaveSPIFFE(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func newCA(t *testing.T, td string) *tokens.CA {
	t.Helper()
	ca, err := tokens.NewCA(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// The reloader follows the bundle directory: a bundle added is trusted, a
// bad one is refused while the others still change, a removed one is
// distrusted and reported, and the local domain never comes from a bundle.
func TestTrustReloaderFollowsBundleDir(t *testing.T) {
	dir := t.TempDir()
	bundles := filepath.Join(dir, "bundles")
	if err := os.Mkdir(bundles, 0o755); err != nil {
		t.Fatal(err)
	}
	a, b, c := newCA(t, "a"), newCA(t, "b"), newCA(t, "c")
	caFile := filepath.Join(dir, "ca.crt")
	if err := tokens.SaveCertificate(a.Cert, caFile); err != nil {
		t.Fatal(err)
	}
	writeBundle(t, bundles, "b.json", "b", b)
	var revoked []string
	r, trust, err := LoadTrust(TrustFiles{CAFiles: []string{caFile}, BundleDir: bundles, LocalDomain: "a",
		OnRevoke: func(td string) { revoked = append(revoked, td) }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := trust.TrustDomains(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("first trust %v", got)
	}
	node, err := a.IssueNode("n1", 0)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := tokens.NewEngine(tokens.Config{Credentials: node, Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	r.Attach(engine)

	steps := []struct {
		name        string
		change      func()
		wantDomains []string
		wantRevoked []string
	}{
		{"nothing changed", func() {}, []string{"b"}, nil},
		{"c's bundle added, with a ConfigMap's dot entries beside it", func() {
			writeBundle(t, bundles, "c.json", "c", c)
			_ = os.WriteFile(filepath.Join(bundles, "..data"), []byte("x"), 0o644)
		}, []string{"b", "c"}, nil},
		{"c's file replaced by b's CA: wrong trust domain, c's last good bundle kept", func() {
			writeBundle(t, bundles, "c.json.tmp", "b", b)
			if err := os.Rename(filepath.Join(bundles, "c.json.tmp"), filepath.Join(bundles, "c.json")); err != nil {
				t.Fatal(err)
			}
		}, []string{"b", "c"}, nil},
		{"a bundle for the local domain is refused", func() { writeBundle(t, bundles, "a.json", "b", b) }, []string{"b", "c"}, nil},
		{"b removed: revoked at once", func() { os.Remove(filepath.Join(bundles, "b.json")) }, []string{"c"}, []string{"b"}},
		{"c removed although its file was bad", func() { os.Remove(filepath.Join(bundles, "c.json")) }, nil, []string{"b", "c"}},
	}
	for _, s := range steps {
		s.change()
		r.Reload()
		if got := r.Domains(); !slices.Equal(got, s.wantDomains) {
			t.Errorf("%s: foreign domains %v, want %v", s.name, got, s.wantDomains)
		}
		if !slices.Equal(revoked, s.wantRevoked) {
			t.Errorf("%s: revoked %v, want %v", s.name, revoked, s.wantRevoked)
		}
	}
}

func TestLoadTrustRefusesBadBundleAtStart(t *testing.T) {
	dir := t.TempDir()
	a, b := newCA(t, "a"), newCA(t, "b")
	caFile := filepath.Join(dir, "ca.crt")
	if err := tokens.SaveCertificate(a.Cert, caFile); err != nil {
		t.Fatal(err)
	}
	writeBundle(t, dir, "c.json", "b", b) // b's CA filed as c's
	if _, _, err := LoadTrust(TrustFiles{CAFiles: []string{caFile}, BundleDir: dir, LocalDomain: "a"}, nil); err == nil {
		t.Fatal("a bundle for the wrong trust domain was accepted at start")
	}
}
