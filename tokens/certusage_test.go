package tokens

import (
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A node certificate is fit only for what a node key does: sign identity
// tokens (digitalSignature) and key the handshake proofs by static ECDH
// (keyAgreement). It must not be a CA, whose certificate could then speak
// for a node. Each is refused on the SYN path, on the JWT path and as a
// node's own credentials, and remembered like other certificates time
// cannot cure.
func TestNodeCertificateUsage(t *testing.T) {
	f := newFixture(t, "cluster.local")
	tests := []struct {
		name string
		edit func(*x509.Certificate)
	}{
		{"digitalSignature only", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature }},
		{"keyAgreement only", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyAgreement }},
		{"no key usage extension", func(c *x509.Certificate) { c.KeyUsage = 0 }},
		{"a CA certificate", func(c *x509.Certificate) {
			c.IsCA, c.BasicConstraintsValid = true, true
			c.KeyUsage |= x509.KeyUsageCertSign
		}},
		{"CA flag with the node key usages", func(c *x509.Certificate) { c.IsCA, c.BasicConstraintsValid = true, true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			se := newTestEngine(t, f.b, f.bundle, nil)
			odd := issueNodeWith(t, f.ca, "spiffe://cluster.local/node/odd", tt.edit)
			claims := testClaims("cluster.local", "odd", time.Now())
			for range 2 { // the second time from the bad-certificate memory
				_, err := se.ConsumeSYN(craftSYN(t, odd.Cert.Raw, claims, odd.Key), testConn)
				wantReason(t, err, ReasonWrongCertUsage)
			}
			if n := se.verifier.Load().badCerts.len(); n != 1 {
				t.Errorf("%d certificates remembered as bad, want 1", n)
			}

			jwtString, _, _, err := signClaims(claims, odd.Key)
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = se.VerifyJWT(jwtString, odd.Cert)
			wantReason(t, err, ReasonWrongCertUsage)

			// Refused at start as a node's own credentials, rather than by
			// every peer at every handshake.
			_, err = NewEngine(Config{Credentials: odd, Trust: f.bundle})
			wantReason(t, err, ReasonWrongCertUsage)
			wantReason(t, se.Rotate(&NodeCredentials{Node: "odd", TrustDomain: "cluster.local", Cert: odd.Cert, Key: odd.Key}), ReasonWrongCertUsage)
		})
	}
	t.Run("what IssueNode makes", func(t *testing.T) {
		handshake(t, newTestEngine(t, f.a, f.bundle, nil), newTestEngine(t, f.b, f.bundle, nil), workload("ns", "c", 1), workload("ns", "s", 1))
	})
}

// Only a CA certificate (basic constraints CA:TRUE, key usage certSign)
// enters a trust bundle or loads as a CA; the refusal names the certificate.
func TestTrustBundleHoldsOnlyCAs(t *testing.T) {
	f := newFixture(t, "cluster.local")
	tests := []struct {
		name string
		ca   *CA
	}{
		{"a node certificate", &CA{TrustDomain: "cluster.local", Cert: f.a.Cert, Key: f.a.Key}},
		{"CA without key usage extension", selfSignedCA(t, "other.example", func(c *x509.Certificate) { c.KeyUsage = 0 })},
		{"CA without certSign", selfSignedCA(t, "other.example", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature })},
		{"certSign without basic constraints", selfSignedCA(t, "other.example", func(c *x509.Certificate) {
			c.IsCA, c.BasicConstraintsValid = false, false
		})},
		{"basic constraints CA:FALSE", selfSignedCA(t, "other.example", func(c *x509.Certificate) { c.IsCA = false })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewTrustBundle(f.ca.Cert, tt.ca.Cert)
			wantReason(t, err, ReasonWrongCertUsage)
			if !strings.Contains(err.Error(), "certificate 1 ") {
				t.Errorf("error %q does not say which certificate", err)
			}

			dir := t.TempDir()
			certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
			if err := tt.ca.Save(certFile, keyFile); err != nil {
				t.Fatal(err)
			}
			_, err = LoadCA(certFile, keyFile)
			wantReason(t, err, ReasonWrongCertUsage)
			_, err = LoadTrustBundle(certFile)
			wantReason(t, err, ReasonWrongCertUsage)
		})
	}
	t.Run("what NewCA makes", func(t *testing.T) {
		if _, err := NewTrustBundle(f.ca.Cert, selfSignedCA(t, "other.example", nil).Cert); err != nil {
			t.Fatal(err)
		}
	})
}
