package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bireme/bireme/tokens"
)

func TestKeyWatcher(t *testing.T) {
	dir := t.TempDir()
	ca, err := tokens.NewCA("c1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key")
	issue := func() *tokens.NodeCredentials {
		t.Helper()
		creds, err := ca.IssueNode("n1", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		// Save refuses nothing here: the files are replaced as a renewal would.
		_ = os.Remove(certFile)
		_ = os.Remove(keyFile)
		if err := creds.Save(certFile, keyFile); err != nil {
			t.Fatal(err)
		}
		return creds
	}
	issue()
	w := newKeyWatcher(certFile, keyFile)
	if _, changed, err := w.check(); changed || err != nil {
		t.Fatalf("unchanged files: changed=%v err=%v", changed, err)
	}

	renewed := issue()
	// Make the change visible even on filesystems with coarse timestamps.
	later := time.Now().Add(2 * time.Second)
	for _, f := range []string{certFile, keyFile} {
		if err := os.Chtimes(f, later, later); err != nil {
			t.Fatal(err)
		}
	}
	creds, changed, err := w.check()
	if err != nil || !changed {
		t.Fatalf("renewed files: changed=%v err=%v", changed, err)
	}
	if !creds.Cert.Equal(renewed.Cert) {
		t.Error("check returned other credentials than the renewed ones")
	}
	if _, changed, _ := w.check(); changed {
		t.Error("the same renewal reported twice")
	}

	// A half-written pair (key missing) is an error and is retried later.
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	if _, changed, err := w.check(); err == nil || changed {
		t.Errorf("missing key: changed=%v err=%v; want an error", changed, err)
	}
}
