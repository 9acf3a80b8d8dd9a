package tokens

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/identity"
)

func TestDescribePEM(t *testing.T) {
	f := newFixture(t, "cluster.local")
	dir := t.TempDir()
	if err := f.a.Save(filepath.Join(dir, "n.crt"), filepath.Join(dir, "n.key")); err != nil {
		t.Fatal(err)
	}
	crt, _ := os.ReadFile(filepath.Join(dir, "n.crt"))
	key, _ := os.ReadFile(filepath.Join(dir, "n.key"))
	sec1, _ := x509.MarshalECPrivateKey(f.a.Key)
	sec1PEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.ca.Cert.Raw})
	now := time.Now()
	tests := []struct {
		name    string
		data    []byte
		now     time.Time
		want    []string
		wantErr string
	}{
		{"node certificate", crt, now, []string{"node certificate", "trust domain:       cluster.local", "node:               node-a", "subject:            (empty)", "(valid)"}, ""},
		{"CA certificate", caPEM, now, []string{"CA certificate", "subject:            CN=cluster.local"}, ""},
		{"expired", crt, now.Add(2 * 365 * 24 * time.Hour), []string{"(EXPIRED)"}, ""},
		{"not yet valid", crt, now.Add(-time.Hour), []string{"(NOT YET VALID)"}, ""},
		{"PKCS#8 key", key, now, []string{"private key (not shown)", "ECDSA P-256"}, ""},
		{"SEC1 key", sec1PEM, now, []string{"private key (not shown)"}, ""},
		{"bundle", append(append([]byte(nil), crt...), caPEM...), now, []string{"node certificate", "CA certificate"}, ""},
		{"other block", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}}), now, []string{"skipped"}, ""},
		{"garbage", []byte("nope"), now, nil, "no PEM block"},
		{"bad certificate", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}}), now, nil, "parse certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := DescribePEM(tt.data, tt.now)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "PRIVATE KEY-----") || strings.Contains(out, f.a.Key.D.Text(16)) {
				t.Fatal("private key material printed")
			}
		})
	}
}

// Methods on nil handshakes fail instead of panicking.
func TestNilHandshakes(t *testing.T) {
	var c *ClientHandshake
	var s *ServerHandshake
	if _, err := c.ConsumeSYNACK(nil, testServerISN); err == nil {
		t.Error("nil ConsumeSYNACK")
	}
	if _, err := c.NewACK(); err == nil {
		t.Error("nil NewACK")
	}
	if _, err := s.NewSYNACK(nil, testServerISN); err == nil {
		t.Error("nil NewSYNACK")
	}
	if err := s.ConsumeACK(nil); err == nil {
		t.Error("nil ConsumeACK")
	}
	if s.Peer() != nil || s.PeerNode() != "" || c.PeerNode() != "" {
		t.Error("nil peers")
	}
	// Zero values (not made by the engine) fail the same way.
	c, s = new(ClientHandshake), new(ServerHandshake)
	if _, err := c.ConsumeSYNACK([]byte{typeSYNACK}, testServerISN); err == nil {
		t.Error("zero ConsumeSYNACK")
	}
	if _, err := c.NewACK(); err == nil {
		t.Error("zero NewACK")
	}
	if _, err := s.NewSYNACK(&identity.Identity{Namespace: "a", Pod: "b"}, testServerISN); err == nil {
		t.Error("zero NewSYNACK")
	}
	if err := s.ConsumeACK(make([]byte, ACKSize)); err == nil {
		t.Error("zero ConsumeACK")
	}
	if s.Peer() != nil || s.PeerNode() != "" || c.PeerNode() != "" {
		t.Error("zero peers")
	}
}
