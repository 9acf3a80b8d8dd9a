package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bireme/bireme/tokens"
)

// export, verify, import and remove, as two clusters' operators run them.
func TestKeysBundleCommands(t *testing.T) {
	dir := t.TempDir()
	path := func(p string) string { return filepath.Join(dir, p) }
	for _, td := range []string{"a", "b"} {
		if out, err := runKeys(t, "init-ca", "--trust-domain", td, "--out", path(td)); err != nil {
			t.Fatalf("init-ca %s: %v\n%s", td, err, out)
		}
	}
	if out, err := runKeys(t, "bundle", "export", "--ca-dir", path("b"), "--out", path("b.json"), "--refresh-hint", "1m"); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	out, err := runKeys(t, "bundle", "verify", "--trust-domain", "b", path("b.json"))
	if err != nil || !strings.Contains(out, "SPIFFE bundle of trust domain b: 1 CA(s), refresh hint 1m0s") || !strings.Contains(out, "sha256 fingerprint") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	// A bundle for the wrong trust domain is rejected, by verify and import.
	if out, err := runKeys(t, "bundle", "verify", "--trust-domain", "c", path("b.json")); err == nil || !strings.Contains(err.Error(), `not "c"`) {
		t.Fatalf("verify as c: %v\n%s", err, out)
	}
	bundles := path("bundles")
	if _, err := runKeys(t, "bundle", "import", "--trust-domain", "c", "--in", path("b.json"), "--dir", bundles); err == nil {
		t.Fatal("import of b's bundle as c's succeeded")
	}
	// The local domain is never imported.
	if _, err := runKeys(t, "bundle", "import", "--trust-domain", "a", "--in", path("b.json"), "--dir", bundles, "--cluster", "a"); err == nil {
		t.Fatal("import for the local trust domain succeeded")
	}
	if out, err := runKeys(t, "bundle", "import", "--trust-domain", "b", "--in", path("b.json"), "--dir", bundles, "--cluster", "a"); err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	got, err := tokens.LoadSPIFFEBundle(filepath.Join(bundles, "b.json"), "b")
	if err != nil || len(got.CAs) != 1 {
		t.Fatalf("imported bundle: %v", err)
	}
	if _, err := runKeys(t, "bundle", "import", "--trust-domain", "b", "--in", path("b.json"), "--dir", bundles); err == nil {
		t.Fatal("import replaced a bundle without --force")
	}
	// A PEM file is not a bundle.
	if _, err := runKeys(t, "bundle", "verify", "--trust-domain", "b", filepath.Join(path("b"), "ca.crt")); err == nil {
		t.Fatal("a PEM certificate passed as a bundle")
	}
	if out, err := runKeys(t, "bundle", "remove", "--trust-domain", "b", "--dir", bundles); err != nil {
		t.Fatalf("remove: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(bundles, "b.json")); !os.IsNotExist(err) {
		t.Fatal("remove left the bundle")
	}
}
