package tokens

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/identity"
)

func TestBundleRoundTrip(t *testing.T) {
	b1, b2 := newFixture(t, "b.example"), newFixture(t, "b.example")
	in, err := NewBundle("b.example", []*x509.Certificate{b1.ca.Cert, b2.ca.Cert, b1.ca.Cert}, 7, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	data, err := in.MarshalSPIFFE()
	if err != nil {
		t.Fatal(err)
	}
	// The standard members, as other SPIFFE implementations read them.
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if raw["spiffe_refresh_hint"] != float64(300) || raw["spiffe_sequence"] != float64(7) {
		t.Errorf("refresh hint / sequence members: %v", raw)
	}
	keys := raw["keys"].([]any)
	if len(keys) != 2 || keys[0].(map[string]any)["use"] != "x509-svid" || keys[0].(map[string]any)["crv"] != "P-256" {
		t.Fatalf("keys: %v", keys)
	}
	out, err := ParseSPIFFEBundle("test", data, "b.example")
	if err != nil {
		t.Fatal(err)
	}
	if out.TrustDomain != "b.example" || len(out.CAs) != 2 || out.Sequence != 7 || out.RefreshHint != 5*time.Minute {
		t.Fatalf("parsed %+v", out)
	}
	if !out.CAs[0].Equal(b1.ca.Cert) || !out.CAs[1].Equal(b2.ca.Cert) {
		t.Error("CAs changed in the round trip")
	}
}

func TestBundleRejects(t *testing.T) {
	b := newFixture(t, "b.example")
	c := newFixture(t, "c.example")
	good, err := NewBundle("b.example", []*x509.Certificate{b.ca.Cert}, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	goodJSON, _ := good.MarshalSPIFFE()
	otherKey, _ := (&Bundle{TrustDomain: "c.example", CAs: []*x509.Certificate{c.ca.Cert}}).MarshalSPIFFE()
	// b's certificate with c's key coordinates.
	var mixed, cj spiffeBundleJSON
	_ = json.Unmarshal(goodJSON, &mixed)
	_ = json.Unmarshal(otherKey, &cj)
	mixed.Keys[0].X, mixed.Keys[0].Y = cj.Keys[0].X, cj.Keys[0].Y
	mixedJSON, _ := json.Marshal(mixed)
	jwtOnly := `{"keys":[{"use":"jwt-svid","kty":"EC","crv":"P-256","x":"AA","y":"AA","kid":"k"}]}`
	nodeCert := `{"keys":[{"use":"x509-svid","kty":"EC","x5c":["` + b64(b.a.Cert.Raw) + `"]}]}`
	for _, tc := range []struct {
		name, data, domain, want string
	}{
		{"bundle for the wrong trust domain", string(goodJSON), "c.example", `vouches for trust domain "b.example", not "c.example"`},
		{"key and certificate disagree", string(mixedJSON), "b.example", "not the key of certificate"},
		{"only JWT authorities", jwtOnly, "b.example", "no x509-svid key"},
		{"a node certificate is no CA", nodeCert, "b.example", "not a CA"},
		{"not JSON", "-----BEGIN CERTIFICATE-----", "b.example", "not SPIFFE bundle JSON"},
		{"no keys", `{"spiffe_sequence":1}`, "b.example", `no "keys"`},
		{"two certificates in one key", `{"keys":[{"use":"x509-svid","kty":"EC","x5c":["` + b64(b.ca.Cert.Raw) + `","` + b64(c.ca.Cert.Raw) + `"]}]}`, "b.example", "exactly one certificate"},
		{"bad trust domain name", string(goodJSON), "B/evil", "not allowed"},
		{"trailing data", string(goodJSON) + "{}", "b.example", "data after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSPIFFEBundle("f.json", []byte(tc.data), tc.domain)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "f.json") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

// A jwt-svid key next to the x509 authority is ignored, as the SPIFFE
// bundle specification asks of consumers that do not use it.
func TestBundleIgnoresJWTAuthorities(t *testing.T) {
	b := newFixture(t, "b.example")
	data := `{"keys":[{"use":"jwt-svid","kty":"EC","crv":"P-256","x":"AA","y":"AA","kid":"k"},` +
		`{"use":"x509-svid","kty":"EC","x5c":["` + b64(b.ca.Cert.Raw) + `"]}],"spiffe_refresh_hint":60}`
	out, err := ParseSPIFFEBundle("f", []byte(data), "b.example")
	if err != nil {
		t.Fatal(err)
	}
	if len(out.CAs) != 1 || out.RefreshHint != time.Minute {
		t.Fatalf("%+v", out)
	}
}

// Federation end to end in the engine: a cluster trusts another's nodes
// only once it holds that cluster's bundle, a foreign identity carries its
// verified trust domain, and a bundle never extends to the local domain.
func TestWithBundlesFederates(t *testing.T) {
	a, b := newFixture(t, "a.example"), newFixture(t, "b.example")
	bBundle, err := NewBundle("b.example", []*x509.Certificate{b.ca.Cert}, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	serverA := newTestEngine(t, a.a, a.bundle, nil)
	clientB := newTestEngine(t, b.a, b.bundle, nil)
	client := workload("shop", "web", 1)
	client.NamespaceLabels[identity.LabelCluster] = "a.example" // asserted by b: never believed

	syn, _, err := clientB.NewSYN(client, testConn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := serverA.ConsumeSYN(syn, testConn); ReasonOf(err) != ReasonUnknownCA {
		t.Fatalf("without b's bundle: %v, want unknown-ca", err)
	}
	fed, err := a.bundle.WithBundles(bBundle)
	if err != nil {
		t.Fatal(err)
	}
	if err := serverA.SetTrust(fed); err != nil {
		t.Fatal(err)
	}
	syn, _, err = clientB.NewSYN(client, testConn)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := serverA.ConsumeSYN(syn, testConn)
	if err != nil {
		t.Fatalf("with b's bundle: %v", err)
	}
	peer := sh.Peer()
	if peer.Cluster != "b.example" {
		t.Errorf("peer cluster %q", peer.Cluster)
	}
	if v, _ := peer.NamespaceLabel(identity.LabelCluster); v != "b.example" {
		t.Errorf("cluster label %q: the receiver must set it from the verified trust domain", v)
	}
	// Revoked: the engine forgets what it verified under the old trust.
	if err := serverA.SetTrust(a.bundle); err != nil {
		t.Fatal(err)
	}
	syn, _, _ = clientB.NewSYN(client, testConn)
	if _, err := serverA.ConsumeSYN(syn, testConn); ReasonOf(err) != ReasonUnknownCA {
		t.Fatalf("after removing b's bundle: %v, want unknown-ca", err)
	}

	// A bundle for the local domain, or a second one for b, is refused.
	aAsForeign, _ := NewBundle("a.example", []*x509.Certificate{b.ca.Cert}, 0, 0)
	if aAsForeign != nil {
		t.Fatal("a bundle for a.example accepted b's CA")
	}
	other := newFixture(t, "a.example")
	localAgain, err := NewBundle("a.example", []*x509.Certificate{other.ca.Cert}, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.bundle.WithBundles(localAgain); err == nil {
		t.Error("a foreign bundle for the local trust domain was merged")
	}
	if _, err := a.bundle.WithBundles(bBundle, bBundle); err == nil {
		t.Error("two bundles for one domain were merged")
	}
}

func FuzzParseSPIFFEBundle(f *testing.F) {
	b := newFixture(f, "b.example")
	good, _ := (&Bundle{TrustDomain: "b.example", CAs: []*x509.Certificate{b.ca.Cert}, RefreshHint: time.Minute}).MarshalSPIFFE()
	f.Add(good)
	f.Add([]byte(`{"keys":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := ParseSPIFFEBundle("fuzz", data, "b.example")
		if err != nil {
			return
		}
		for _, c := range out.CAs {
			if td, node, err := CertTrustDomain(c); err != nil || td != "b.example" || node != "" || !c.IsCA {
				t.Fatalf("accepted a certificate that is no CA of b.example: %v %q %q", err, td, node)
			}
		}
	})
}

func b64(der []byte) string { return base64.StdEncoding.EncodeToString(der) }
