package tokens

import (
	"encoding/pem"
	"strings"
	"testing"
	"time"
)

// A request made by NewNodeCSR reads back as what it asks for, and the
// certificate SignNode makes for it is a node certificate every verifier
// accepts (LoadNodeCredentials' checks, the engine's), for the request's key.
func TestNodeCSRRoundTrip(t *testing.T) {
	key, err := GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	req, err := NewNodeCSR(key, "cluster.local", "Node-1.example_a")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseNodeCSR(req)
	if err != nil {
		t.Fatal(err)
	}
	if got.TrustDomain != "cluster.local" || got.Node != "Node-1.example_a" || !got.PublicKey.Equal(&key.PublicKey) {
		t.Fatalf("parsed %+v", got)
	}
	ca, err := NewCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.SignNode(got.Node, got.PublicKey, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Errorf("certificate outlives its CA: %v > %v", cert.NotAfter, ca.Cert.NotAfter)
	}
	keyPEM, err := EncodeKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	both := append(keyPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	creds, err := NodeCredentialsFromPEM("state", both, both)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := NewTrustBundle(ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := bundle.verifyNodeCert(creds.Cert, time.Now(), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := NewEngine(Config{Credentials: creds, Trust: bundle}); err != nil {
		t.Fatal(err)
	}
}

// A CA that has expired, or is not valid yet, signs nothing: every
// verifier would refuse what it made.
func TestSignNodeRefusesOutsideTheCAValidity(t *testing.T) {
	ca, err := NewCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, err := GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []time.Time{ca.Cert.NotAfter.Add(time.Second), ca.Cert.NotBefore.Add(-time.Second)} {
		if _, err := ca.signNode("n1", &key.PublicKey, time.Hour, at); err == nil || !strings.Contains(err.Error(), "not now") {
			t.Errorf("signed at %v: %v", at, err)
		}
	}
}

func FuzzParseNodeCSR(f *testing.F) {
	key, err := GenerateNodeKey()
	if err != nil {
		f.Fatal(err)
	}
	req, err := NewNodeCSR(key, "cluster.local", "n1")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(req)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := ParseNodeCSR(data)
		if err != nil {
			return
		}
		// Whatever parses names a valid node and holds a key.
		if checkName("node name", got.Node, false) != nil || checkName("trust domain", got.TrustDomain, true) != nil || got.PublicKey == nil {
			t.Fatalf("accepted %+v", got)
		}
	})
}
