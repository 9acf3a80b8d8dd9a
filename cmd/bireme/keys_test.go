package main

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/tokens"
)

// runKeys runs `bireme keys ARGS...` and returns its output.
func runKeys(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return runCommand(t, newKeysCmd(), args...)
}

func TestKeysCommands(t *testing.T) {
	dir := t.TempDir()
	caDir, nodeDir := filepath.Join(dir, "ca"), filepath.Join(dir, "node-1")
	if out, err := runKeys(t, "init-ca", "--trust-domain", "cluster.local", "--out", caDir, "--validity", "48h"); err != nil {
		t.Fatalf("init-ca: %v\n%s", err, out)
	}
	if out, err := runKeys(t, "issue-node", "--ca-dir", caDir, "--node", "node-1", "--out", nodeDir); err != nil {
		t.Fatalf("issue-node: %v\n%s", err, out)
	}
	for _, f := range []string{"ca/ca.crt", "ca/ca.key", "node-1/node.crt", "node-1/node.key", "node-1/ca.crt"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	if _, err := os.Stat(filepath.Join(nodeDir, "ca.key")); err == nil {
		t.Error("issue-node copied the CA key")
	}

	// The files work: an engine built from them completes a handshake with
	// another node of the same CA.
	creds, err := tokens.LoadNodeCredentials(filepath.Join(nodeDir, "node.crt"), filepath.Join(nodeDir, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	if creds.Node != "node-1" || creds.TrustDomain != "cluster.local" {
		t.Fatalf("loaded %s/%s", creds.TrustDomain, creds.Node)
	}
	bundle, err := tokens.LoadTrustBundle(filepath.Join(nodeDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(bundle.CAs("cluster.local")) != 1 {
		t.Fatal("the copied ca.crt is not the cluster CA")
	}
	// Both carry what the engine checks (node: key usage digitalSignature
	// and keyAgreement, not a CA; CA: a CA with certSign).
	node2Dir := filepath.Join(dir, "node-2")
	if out, err := runKeys(t, "issue-node", "--ca-dir", caDir, "--node", "node-2", "--out", node2Dir); err != nil {
		t.Fatalf("issue-node node-2: %v\n%s", err, out)
	}
	creds2, err := tokens.LoadNodeCredentials(filepath.Join(node2Dir, "node.crt"), filepath.Join(node2Dir, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	handshakeWith(t, creds, creds2, bundle)

	// show: the facts, and never the private key.
	out, err := runKeys(t, "show", filepath.Join(nodeDir, "node.crt"), filepath.Join(nodeDir, "node.key"), filepath.Join(caDir, "ca.crt"))
	if err != nil {
		t.Fatalf("show: %v\n%s", err, out)
	}
	for _, want := range []string{"node certificate", "trust domain:       cluster.local", "node:               node-1",
		"CA certificate", "private key (not shown)", "(valid)", "sha256 fingerprint:"} {
		if !strings.Contains(out, want) {
			t.Errorf("show output lacks %q:\n%s", want, out)
		}
	}
	keyPEM, err := os.ReadFile(filepath.Join(nodeDir, "node.key"))
	if err != nil || len(keyPEM) == 0 {
		t.Fatalf("read node.key (%d bytes): %v", len(keyPEM), err)
	}
	for _, line := range strings.Split(string(keyPEM), "\n") {
		if len(line) > 16 && !strings.HasPrefix(line, "-----") && strings.Contains(out, line) {
			t.Fatal("show printed private key material")
		}
	}
	// The key's public fingerprint matches the certificate's.
	var fps []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "public key sha256:") {
			fps = append(fps, strings.TrimSpace(strings.SplitN(l, ":", 2)[1]))
		}
	}
	if len(fps) != 3 || fps[0] != fps[1] || fps[0] == fps[2] {
		t.Errorf("public key fingerprints %v: want cert == key != CA", fps)
	}
}

func TestKeysCommandErrors(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if _, err := runKeys(t, "init-ca", "--trust-domain", "cluster.local", "--out", caDir); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(caDir, "ca.key"))
	if err != nil || len(before) == 0 {
		t.Fatalf("read ca.key (%d bytes): %v", len(before), err)
	}
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"CA exists", []string{"init-ca", "--trust-domain", "cluster.local", "--out", caDir}, "exists"},
		{"bad trust domain", []string{"init-ca", "--trust-domain", "Bad/Domain", "--out", filepath.Join(dir, "x")}, "trust domain"},
		{"missing flag", []string{"init-ca", "--out", filepath.Join(dir, "y")}, "trust-domain"},
		{"no CA", []string{"issue-node", "--ca-dir", filepath.Join(dir, "none"), "--node", "n", "--out", filepath.Join(dir, "n")}, "no such file"},
		{"bad node name", []string{"issue-node", "--ca-dir", caDir, "--node", "a/b", "--out", filepath.Join(dir, "n")}, "node name"},
		{"show garbage", []string{"show", garbage}, "no PEM block"},
		{"show missing", []string{"show", filepath.Join(dir, "missing")}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runKeys(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q\n%s", err, tt.want, out)
			}
		})
	}
	after, err := os.ReadFile(filepath.Join(caDir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("a refused init-ca changed the CA key")
	}
	if _, err := runKeys(t, "init-ca", "--trust-domain", "cluster.local", "--out", caDir, "--force"); err != nil {
		t.Fatal("--force:", err)
	}
}

// handshakeWith runs a full handshake between an engine on client and one on
// server, both trusting bundle, and fails the test on any error.
func handshakeWith(t *testing.T, client, server *tokens.NodeCredentials, bundle *tokens.TrustBundle) {
	t.Helper()
	ce, err := tokens.NewEngine(tokens.Config{Credentials: client, Trust: bundle})
	if err != nil {
		t.Fatal(err)
	}
	se, err := tokens.NewEngine(tokens.Config{Credentials: server, Trust: bundle})
	if err != nil {
		t.Fatal(err)
	}
	conn := tokens.Endpoints{Client: netip.MustParseAddrPort("198.18.1.2:40000"), Server: netip.MustParseAddrPort("198.18.2.2:80"), ClientISN: 1}
	const serverISN = 2
	syn, ch, err := ce.NewSYN(&identity.Identity{Namespace: "ns", Pod: "client"}, conn)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := se.ConsumeSYN(syn, conn)
	if err != nil {
		t.Fatal("ConsumeSYN:", err)
	}
	synack, err := sh.NewSYNACK(&identity.Identity{Namespace: "ns", Pod: "server"}, serverISN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.ConsumeSYNACK(synack, serverISN); err != nil {
		t.Fatal("ConsumeSYNACK:", err)
	}
	ack, err := ch.NewACK()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.ConsumeACK(ack); err != nil {
		t.Fatal("ConsumeACK:", err)
	}
}
