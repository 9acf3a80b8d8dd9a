package tokens

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// wantReason fails unless err is a *RejectError with reason want.
func wantReason(t *testing.T, err error, want Reason) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted, want rejection %q", want)
	}
	var re *RejectError
	if !errors.As(err, &re) {
		t.Fatalf("error %v is not a *RejectError", err)
	}
	if got := ReasonOf(err); got != want {
		t.Fatalf("reason %q (%v), want %q", got, err, want)
	}
}

func TestReasonOf(t *testing.T) {
	re := reject(ReasonExpired, "token of %s", "x")
	tests := []struct {
		name string
		err  error
		want Reason
	}{
		{"nil", nil, ""},
		{"plain", errors.New("boom"), ""},
		{"direct", re, ReasonExpired},
		{"wrapped", fmt.Errorf("queue 3: %w", re), ReasonExpired},
	}
	for _, tt := range tests {
		if got := ReasonOf(tt.err); got != tt.want {
			t.Errorf("%s: ReasonOf = %q, want %q", tt.name, got, tt.want)
		}
	}
	if re.Error() != "expired: token of x" || !errors.Is(re, re.Err) {
		t.Errorf("Error() = %q", re.Error())
	}
}

// craftSYN builds a SYN whose token carries claims signed by key, with the
// certificate certDER: what a misbehaving or compromised node could send.
func craftSYN(t *testing.T, certDER []byte, c *Claims, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	_, payload, sig, err := signClaims(c, key)
	if err != nil {
		t.Fatal(err)
	}
	n := newNonce()
	return appendSYN(nil, &n, &testConn, encodeToken(certDER, payload, sig))
}

// issueRaw issues a node certificate with arbitrary URIs signed by ca, with
// the key usage of a real node certificate.
func issueRaw(t *testing.T, ca *CA, uri string) *NodeCredentials {
	t.Helper()
	return issueNodeWith(t, ca, uri, nil)
}

// issueNodeWith issues a certificate naming uri, signed by ca, from a node
// certificate template that edit (if not nil) changes first: what a
// misconfigured or hostile CA operator could produce.
func issueNodeWith(t *testing.T, ca *CA, uri string, edit func(*x509.Certificate)) *NodeCredentials {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		URIs:         []*url.URL{u},
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	td, node, _ := CertTrustDomain(cert)
	return &NodeCredentials{Node: node, TrustDomain: td, Cert: cert, Key: key}
}

// selfSignedCA makes a CA of domain from the template NewCA uses, after
// edit (if not nil) changed it.
func selfSignedCA(t *testing.T, domain string, edit func(*x509.Certificate)) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(3),
		Subject:               pkix.Name{CommonName: domain},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: domain}},
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{TrustDomain: domain, Cert: cert, Key: key}
}

func testClaims(cluster, node string, iat time.Time) *Claims {
	id := workload("ns", "pod", 2)
	id.Cluster = cluster
	return claimsFor(id, node, iat, iat.Add(5*time.Minute))
}

func TestConsumeSYNMalformed(t *testing.T) {
	f, ce, se := newPair(t)
	good, _, err := ce.NewSYN(workload("ns", "pod", 2), testConn)
	if err != nil {
		t.Fatal(err)
	}
	certLen := len(f.a.Cert.Raw)
	tokenAt := 1 + NonceSize + wireEndpointsSize4 // IPv4 endpoints
	claimsAt := tokenAt + 2 + certLen + 2
	mutate := func(fn func(b []byte) []byte) []byte { return fn(append([]byte(nil), good...)) }
	now := time.Now()
	tests := []struct {
		name    string
		payload []byte
	}{
		{"empty", nil},
		{"type only", []byte{typeSYN}},
		{"wrong type", mutate(func(b []byte) []byte { b[0] = typeSYNACK; return b })},
		{"unknown endpoint family", mutate(func(b []byte) []byte { b[1+NonceSize] = 5; return b })},
		{"nonce only", good[:1+NonceSize]},
		{"truncated endpoints", good[:tokenAt-1]},
		{"truncated certificate", good[:tokenAt+2+certLen/2]},
		{"truncated claims", good[:claimsAt+10]},
		{"signature short", good[:len(good)-1]},
		{"trailing byte", append(append([]byte(nil), good...), 0)},
		{"certificate length too big", mutate(func(b []byte) []byte { b[tokenAt] = 0xff; return b })},
		{"zero certificate length", mutate(func(b []byte) []byte { b[tokenAt], b[tokenAt+1] = 0, 0; return b })},
		{"garbage certificate", mutate(func(b []byte) []byte { copy(b[tokenAt+2:], bytes.Repeat([]byte{0x30}, 20)); return b })},
		{"claims not JSON", mutate(func(b []byte) []byte { b[claimsAt] = '['; return b })},
		{"claims missing pod", craftSYN(t, f.a.Cert.Raw, func() *Claims { c := testClaims("cluster.local", "node-a", now); c.Pod = ""; return c }(), f.a.Key)},
		{"claims missing exp", craftSYN(t, f.a.Cert.Raw, func() *Claims { c := testClaims("cluster.local", "node-a", now); c.ExpiresAt = nil; return c }(), f.a.Key)},
		{"claims bad port", craftSYN(t, f.a.Cert.Raw, func() *Claims {
			c := testClaims("cluster.local", "node-a", now)
			c.Ports = [][3]any{{"http", "TCP", 70000}}
			return c
		}(), f.a.Key)},
		{"certificate without node URI", craftSYN(t, f.ca.Cert.Raw, testClaims("cluster.local", "node-a", now), f.ca.Key)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := se.ConsumeSYN(tt.payload, testConn)
			wantReason(t, err, ReasonMalformed)
		})
	}
}

func TestConsumeSYNACKAndACKMalformed(t *testing.T) {
	_, ce, se := newPair(t)
	h := startHandshake(t, ce, se, workload("ns", "c", 1), workload("ns", "s", 1))
	syn, ch, sh, synack := h.syn, h.ch, h.sh, h.synack
	for name, p := range map[string][]byte{
		"empty":          nil,
		"a SYN":          syn,
		"truncated":      synack[:40],
		"no proof":       synack[:len(synack)-ProofSize],
		"trailing bytes": append(append([]byte(nil), synack...), 1, 2),
	} {
		t.Run("SYN-ACK "+name, func(t *testing.T) {
			_, err := ch.ConsumeSYNACK(p, testServerISN)
			wantReason(t, err, ReasonMalformed)
		})
	}
	if _, err := ch.NewACK(); err == nil {
		t.Fatal("NewACK before a verified SYN-ACK succeeded")
	}
	if _, err := ch.ConsumeSYNACK(synack, testServerISN); err != nil {
		t.Fatal(err)
	}
	ack, err := ch.NewACK()
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string][]byte{
		"empty":      nil,
		"short":      ack[:ACKSize-1],
		"long":       append(append([]byte(nil), ack...), 0),
		"wrong type": append([]byte{typeSYN}, ack[1:]...),
	} {
		t.Run("ACK "+name, func(t *testing.T) {
			wantReason(t, sh.ConsumeACK(p), ReasonMalformed)
		})
	}
	if err := sh.ConsumeACK(ack); err != nil {
		t.Fatal("the genuine ACK after malformed ones:", err)
	}
}

// Token and certificate validity, with the allowed clock skew, on both the
// cold (first verification) and the cached path.
func TestValidityWithClockSkew(t *testing.T) {
	f := newFixture(t, "cluster.local")
	const lifetime, skew = 2 * time.Minute, 10 * time.Second
	tests := []struct {
		name     string
		verifier time.Duration // verifier clock minus signer clock
		want     Reason
	}{
		{"fresh", 0, ""},
		{"verifier behind within skew", -skew + time.Second, ""},
		{"verifier behind beyond skew", -skew - 2*time.Second, ReasonNotYetValid},
		{"near the end of lifetime", lifetime - time.Second, ""},
		{"expired but within skew", lifetime + skew - time.Second, ""},
		{"expired beyond skew", lifetime + skew + 2*time.Second, ReasonExpired},
	}
	for _, tt := range tests {
		for _, cached := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/cached=%v", tt.name, cached), func(t *testing.T) {
				signerClock, verifierClock := newClock(), newClock()
				verifierClock.t = signerClock.t
				ce, err := NewEngine(Config{Credentials: f.a, Trust: f.bundle, Now: signerClock.Now, TokenLifetime: lifetime, ClockSkew: skew})
				if err != nil {
					t.Fatal(err)
				}
				se, err := NewEngine(Config{Credentials: f.b, Trust: f.bundle, Now: verifierClock.Now, TokenLifetime: lifetime, ClockSkew: skew})
				if err != nil {
					t.Fatal(err)
				}
				syn, _, err := ce.NewSYN(workload("ns", "c", 1), testConn)
				if err != nil {
					t.Fatal(err)
				}
				if cached { // verify once at the signing time, so the token is cached
					if _, err := se.ConsumeSYN(syn, testConn); err != nil {
						t.Fatal(err)
					}
					syn = withNewNonce(syn)
				}
				// Tokens carry whole seconds: keep clear of the boundary.
				verifierClock.Advance(tt.verifier)
				_, err = se.ConsumeSYN(syn, testConn)
				if tt.want == "" {
					if err != nil {
						t.Fatal(err)
					}
					return
				}
				wantReason(t, err, tt.want)
			})
		}
	}
}

func withNewNonce(syn []byte) []byte {
	out := append([]byte(nil), syn...)
	n := newNonce()
	copy(out[1:], n[:])
	return out
}

// An expired node certificate is rejected even with a fresh token.
func TestExpiredNodeCertificate(t *testing.T) {
	f := newFixture(t, "cluster.local")
	old := issueRaw(t, f.ca, "spiffe://cluster.local/node/old")
	se := newTestEngine(t, f.b, f.bundle, nil)
	clk := newClock()
	clk.Advance(2 * time.Hour) // the certificate from issueRaw ends in 1h
	syn := craftSYN(t, old.Cert.Raw, testClaims("cluster.local", "old", clk.Now()), old.Key)
	se.now = clk.Now
	_, err := se.ConsumeSYN(syn, testConn)
	wantReason(t, err, ReasonExpired)
}

func TestUnknownCA(t *testing.T) {
	f := newFixture(t, "cluster.local")
	sameName := newFixture(t, "cluster.local") // another CA with the same trust domain name
	other := newFixture(t, "other.example")
	se := newTestEngine(t, f.b, f.bundle, nil)
	for name, creds := range map[string]*NodeCredentials{
		"other CA, same domain name": sameName.a,
		"other domain":               other.a,
	} {
		t.Run(name, func(t *testing.T) {
			ce := newTestEngine(t, creds, other.bundle, nil)
			syn, _, err := ce.NewSYN(workload("ns", "c", 1), testConn)
			if err != nil {
				t.Fatal(err)
			}
			_, err = se.ConsumeSYN(syn, testConn)
			wantReason(t, err, ReasonUnknownCA)
		})
	}
	t.Run("self-signed node certificate", func(t *testing.T) {
		rogue, err := NewCA("cluster.local", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		n := issueRaw(t, rogue, "spiffe://cluster.local/node/x")
		syn := craftSYN(t, n.Cert.Raw, testClaims("cluster.local", "x", time.Now()), n.Key)
		_, err = se.ConsumeSYN(syn, testConn)
		wantReason(t, err, ReasonUnknownCA)
	})
}

// A CA of domain A can never vouch for an identity in domain B, even when
// the verifier trusts both CAs.
func TestWrongTrustDomain(t *testing.T) {
	a := newFixture(t, "a.example")
	b := newFixture(t, "b.example")
	both, err := NewTrustBundle(a.ca.Cert, b.ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	se := newTestEngine(t, b.b, both, nil)
	now := time.Now()
	crossCert := issueRaw(t, a.ca, "spiffe://b.example/node/intruder") // CA A names a node of B
	tests := []struct {
		name string
		syn  []byte
	}{
		{"token claims cluster B, node of A", craftSYN(t, a.a.Cert.Raw, testClaims("b.example", "node-a", now), a.a.Key)},
		{"CA A issued a certificate in domain B", craftSYN(t, crossCert.Cert.Raw, testClaims("b.example", "intruder", now), crossCert.Key)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := se.ConsumeSYN(tt.syn, testConn)
			wantReason(t, err, ReasonWrongTrustDomain)
		})
	}
	// A node refuses to sign for another cluster in the first place.
	ce := newTestEngine(t, a.a, both, nil)
	id := workload("ns", "c", 1)
	id.Cluster = "b.example"
	if _, _, err := ce.NewSYN(id, testConn); err == nil {
		t.Fatal("NewSYN signed an identity of another cluster")
	}
}

func TestBadSignature(t *testing.T) {
	f, ce, se := newPair(t)
	syn, _, err := ce.NewSYN(workload("ns", "c", 3), testConn)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(from, to string) []byte {
		if len(from) != len(to) || !bytes.Contains(syn, []byte(from)) {
			t.Fatalf("cannot edit %q", from)
		}
		return withNewNonce(bytes.Replace(syn, []byte(from), []byte(to), 1))
	}
	now := time.Now()
	tests := []struct {
		name string
		syn  []byte
	}{
		{"label value edited", edit(`"value-01"`, `"admin-01"`)},
		{"namespace edited", edit(`"ns":"ns"`, `"ns":"kk"`)},
		{"signature bit flipped", func() []byte { b := withNewNonce(syn); b[len(b)-1] ^= 1; return b }()},
		{"token signed by another node's key", craftSYN(t, f.a.Cert.Raw, testClaims("cluster.local", "node-a", now), f.b.Key)},
		{"token names another node", craftSYN(t, f.a.Cert.Raw, testClaims("cluster.local", "node-b", now), f.a.Key)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := se.ConsumeSYN(tt.syn, testConn)
			wantReason(t, err, ReasonBadSignature)
		})
	}
	if _, err := se.ConsumeSYN(syn, testConn); err != nil {
		t.Fatal("the genuine SYN after forgeries:", err)
	}
}

// A SYN captured and replayed: to the same server it is rejected outright;
// to another server node it is accepted (that node never saw the nonce) but
// the replayer cannot produce the ACK.
func TestReplayedSYN(t *testing.T) {
	f := newFixture(t, "cluster.local")
	third := mustIssue(t, f.ca, "node-c")
	ce := newTestEngine(t, f.a, f.bundle, nil)
	se := newTestEngine(t, f.b, f.bundle, nil)
	other := newTestEngine(t, third, f.bundle, nil)
	client, server := workload("ns", "c", 1), workload("ns", "s", 1)

	syn, ch, err := ce.NewSYN(client, testConn)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := se.ConsumeSYN(syn, testConn)
	if err != nil {
		t.Fatal(err)
	}
	synack, _ := sh.NewSYNACK(server, testServerISN)
	if _, err := ch.ConsumeSYNACK(synack, testServerISN); err != nil {
		t.Fatal(err)
	}
	ack, _ := ch.NewACK()
	if err := sh.ConsumeACK(ack); err != nil {
		t.Fatal(err)
	}

	_, err = se.ConsumeSYN(syn, testConn)
	wantReason(t, err, ReasonReplayed)

	sh2, err := other.ConsumeSYN(syn, testConn)
	if err != nil {
		t.Fatal("a server that never saw the nonce:", err)
	}
	if _, err := sh2.NewSYNACK(server, testServerISN); err != nil {
		t.Fatal(err)
	}
	wantReason(t, sh2.ConsumeACK(ack), ReasonBadProof) // the captured ACK
	var guess [ACKSize]byte
	guess[0] = typeACK
	wantReason(t, sh2.ConsumeACK(guess[:]), ReasonBadProof)

	// The token cut out of the captured SYN into a SYN with a fresh nonce:
	// the server answers, but nobody without node-a's key can finish.
	sh3, err := se.ConsumeSYN(withNewNonce(syn), testConn)
	if err != nil {
		t.Fatal("a fresh nonce with a valid token:", err)
	}
	if _, err := sh3.NewSYNACK(server, testServerISN); err != nil {
		t.Fatal(err)
	}
	wantReason(t, sh3.ConsumeACK(ack), ReasonBadProof)
	// An attacker holding another node's key (node-c) cannot check or
	// answer the server's proof either.
	forged := appendSYN(nil, &[NonceSize]byte{1}, &testConn, syn[1+NonceSize+wireEndpointsSize4:])
	sh4, err := se.ConsumeSYN(forged, testConn)
	if err != nil {
		t.Fatal(err)
	}
	synack4, _ := sh4.NewSYNACK(server, testServerISN)
	attacker := &ClientHandshake{e: other, keys: other.keys.Load(), nonce: [NonceSize]byte{1}, token: ch.token, conn: testConn}
	_, err = attacker.ConsumeSYNACK(synack4, testServerISN)
	wantReason(t, err, ReasonBadProof)
}

// Two concurrent handshakes between the same pair: nothing from one is
// accepted in the other.
func TestBadProof(t *testing.T) {
	_, ce, se := newPair(t)
	client, server := workload("ns", "c", 1), workload("ns", "s", 1)
	start := func() (*ClientHandshake, *ServerHandshake, []byte) {
		h := startHandshake(t, ce, se, client, server)
		return h.ch, h.sh, h.synack
	}
	ch1, sh1, synack1 := start()
	ch2, sh2, synack2 := start()

	t.Run("SYN-ACKs swapped", func(t *testing.T) {
		_, err := ch1.ConsumeSYNACK(synack2, testServerISN)
		wantReason(t, err, ReasonBadProof)
	})
	t.Run("SYN-ACK echoing another nonce", func(t *testing.T) {
		b := append([]byte(nil), synack1...)
		b[1] ^= 0x80
		_, err := ch1.ConsumeSYNACK(b, testServerISN)
		wantReason(t, err, ReasonBadProof)
	})
	t.Run("SYN-ACK with the right echo but another handshake's nonce and proof", func(t *testing.T) {
		b := append([]byte(nil), synack2...)
		n := ch1.Nonce()
		copy(b[1:], n[:])
		_, err := ch1.ConsumeSYNACK(b, testServerISN)
		wantReason(t, err, ReasonBadProof)
	})
	t.Run("SYN-ACK proof bit flipped", func(t *testing.T) {
		b := append([]byte(nil), synack1...)
		b[len(b)-1] ^= 1
		_, err := ch1.ConsumeSYNACK(b, testServerISN)
		wantReason(t, err, ReasonBadProof)
	})
	t.Run("server token cut into another SYN-ACK", func(t *testing.T) {
		// A valid token of another server workload with the right nonces and proof.
		other := startHandshake(t, ce, se, client, workload("ns", "other-server", 1)).synack
		b := append([]byte(nil), synack1[:1+2*NonceSize]...)
		b = append(b, other[1+2*NonceSize:len(other)-ProofSize]...)
		b = append(b, synack1[len(synack1)-ProofSize:]...)
		_, err := ch1.ConsumeSYNACK(b, testServerISN)
		wantReason(t, err, ReasonBadProof)
	})
	if _, err := ch1.ConsumeSYNACK(synack1, testServerISN); err != nil {
		t.Fatal(err)
	}
	if _, err := ch2.ConsumeSYNACK(synack2, testServerISN); err != nil {
		t.Fatal(err)
	}
	ack1, _ := ch1.NewACK()
	ack2, _ := ch2.NewACK()
	t.Run("ACKs swapped", func(t *testing.T) {
		wantReason(t, sh1.ConsumeACK(ack2), ReasonBadProof)
		wantReason(t, sh2.ConsumeACK(ack1), ReasonBadProof)
	})
	t.Run("ACK before SYN-ACK", func(t *testing.T) {
		syn, _, _ := ce.NewSYN(client, testConn)
		sh, err := se.ConsumeSYN(syn, testConn)
		if err != nil {
			t.Fatal(err)
		}
		wantReason(t, sh.ConsumeACK(ack1), ReasonBadProof)
	})
	if err := sh1.ConsumeACK(ack1); err != nil {
		t.Fatal(err)
	}
	if err := sh2.ConsumeACK(ack2); err != nil {
		t.Fatal(err)
	}
}

// Rotation at every point of a handshake: in-flight handshakes complete,
// new ones use the new certificate.
func TestRotationMidHandshake(t *testing.T) {
	f := newFixture(t, "cluster.local")
	client, server := workload("ns", "c", 1), workload("ns", "s", 1)
	for _, at := range []string{"client after SYN", "server after SYN", "server after SYN-ACK", "both after SYN-ACK"} {
		t.Run(at, func(t *testing.T) {
			ce := newTestEngine(t, f.a, f.bundle, nil)
			se := newTestEngine(t, f.b, f.bundle, nil)
			rotate := func(e *Engine, node string) {
				if err := e.Rotate(mustIssue(t, f.ca, node)); err != nil {
					t.Fatal(err)
				}
			}
			syn, ch, err := ce.NewSYN(client, testConn)
			if err != nil {
				t.Fatal(err)
			}
			if at == "client after SYN" {
				rotate(ce, "node-a")
			}
			sh, err := se.ConsumeSYN(syn, testConn)
			if err != nil {
				t.Fatal(err)
			}
			if at == "server after SYN" {
				rotate(se, "node-b")
			}
			synack, err := sh.NewSYNACK(server, testServerISN)
			if err != nil {
				t.Fatal(err)
			}
			if at == "server after SYN-ACK" || at == "both after SYN-ACK" {
				rotate(se, "node-b")
			}
			if at == "both after SYN-ACK" {
				rotate(ce, "node-a")
			}
			if _, err := ch.ConsumeSYNACK(synack, testServerISN); err != nil {
				t.Fatal(err)
			}
			ack, _ := ch.NewACK()
			if err := sh.ConsumeACK(ack); err != nil {
				t.Fatal(err)
			}
			// New handshakes work and carry the new certificates.
			handshake(t, ce, se, client, server)
			syn2, _, _ := ce.NewSYN(client, testConn)
			if bytes.Contains(syn2, f.a.Cert.Raw) && at != "server after SYN" && at != "server after SYN-ACK" {
				t.Fatal("a new SYN still carries the old certificate")
			}
		})
	}
	t.Run("refuses another trust domain", func(t *testing.T) {
		e := newTestEngine(t, f.a, f.bundle, nil)
		other := newFixture(t, "other.example")
		if err := e.Rotate(other.a); err == nil {
			t.Fatal("rotated into another trust domain")
		}
		if err := e.Rotate(&NodeCredentials{Node: "node-a", TrustDomain: "cluster.local", Cert: f.a.Cert, Key: f.b.Key}); err == nil {
			t.Fatal("rotated to a key that does not match its certificate")
		}
	})
}

// Two trust domains federated: each trusts both CAs; identities keep their
// own cluster.
func TestFederation(t *testing.T) {
	a := newFixture(t, "a.example")
	b := newFixture(t, "b.example")
	both, err := NewTrustBundle(a.ca.Cert, b.ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if got := both.TrustDomains(); len(got) != 2 || got[0] != "a.example" || got[1] != "b.example" {
		t.Fatalf("TrustDomains = %v", got)
	}
	ea := newTestEngine(t, a.a, both, nil)
	eb := newTestEngine(t, b.a, both, nil)
	client, server := workload("ns", "c", 1), workload("ns", "s", 1)
	for _, dir := range []struct {
		name       string
		ce, se     *Engine
		cdom, sdom string
	}{
		{"a to b", ea, eb, "a.example", "b.example"},
		{"b to a", eb, ea, "b.example", "a.example"},
	} {
		t.Run(dir.name, func(t *testing.T) {
			clientSaw, serverSaw := handshake(t, dir.ce, dir.se, client, server)
			if clientSaw.Cluster != dir.sdom || serverSaw.Cluster != dir.cdom {
				t.Fatalf("clusters seen: client saw %q, server saw %q", clientSaw.Cluster, serverSaw.Cluster)
			}
		})
	}
	// Without federation, b's node does not know a's CA.
	alone := newTestEngine(t, b.b, b.bundle, nil)
	syn, _, _ := ea.NewSYN(client, testConn)
	_, err = alone.ConsumeSYN(syn, testConn)
	wantReason(t, err, ReasonUnknownCA)
}

// A token whose labels change is re-signed; the server sees the new labels.
func TestLabelChangeResigns(t *testing.T) {
	_, ce, se := newPair(t)
	id := workload("ns", "c", 1)
	handshake(t, ce, se, id, workload("ns", "s", 0))
	changed := id.Clone()
	changed.Labels["role"] = "admin"
	_, saw := handshake(t, ce, se, changed, workload("ns", "s", 0))
	if saw.Labels["role"] != "admin" {
		t.Fatalf("server saw labels %v", saw.Labels)
	}
	// Even an identity changed in place is noticed.
	changed.Labels["role"] = "guest"
	_, saw = handshake(t, ce, se, changed, workload("ns", "s", 0))
	if saw.Labels["role"] != "guest" {
		t.Fatalf("server saw labels %v after an in-place change", saw.Labels)
	}
}

// Local tokens are re-signed once half their lifetime passed, and never
// outlive the node certificate.
func TestTokenRefresh(t *testing.T) {
	f := newFixture(t, "cluster.local")
	clk := newClock()
	e, err := NewEngine(Config{Credentials: f.a, Trust: f.bundle, Now: clk.Now, TokenLifetime: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	id := workload("ns", "c", 1)
	j1, _ := e.SignJWT(id)
	clk.Advance(20 * time.Second)
	j2, _ := e.SignJWT(id)
	clk.Advance(15 * time.Second)
	j3, _ := e.SignJWT(id)
	if j1 != j2 {
		t.Error("re-signed before half the lifetime")
	}
	if j2 == j3 {
		t.Error("not re-signed after half the lifetime")
	}
	clk.Advance(2 * 365 * 24 * time.Hour) // past the node certificate
	if _, err := e.SignJWT(id); err == nil {
		t.Error("signed with an expired node certificate")
	}
}

// A rejected certificate is rejected again, with the same reason, from the
// negative cache.
func TestBadCertificateRemembered(t *testing.T) {
	f := newFixture(t, "cluster.local")
	other := newFixture(t, "other.example")
	se := newTestEngine(t, f.b, f.bundle, nil)
	ce := newTestEngine(t, other.a, other.bundle, nil)
	for i := 0; i < 3; i++ {
		syn, _, _ := ce.NewSYN(workload("ns", "c", 1), testConn)
		_, err := se.ConsumeSYN(syn, testConn)
		wantReason(t, err, ReasonUnknownCA)
	}
	if n := se.verifier.Load().badCerts.len(); n != 1 {
		t.Fatalf("%d certificates remembered as bad, want 1", n)
	}
	// Trusting the other CA later clears what was remembered.
	both, err := NewTrustBundle(f.ca.Cert, other.ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if err := se.SetTrust(both); err != nil {
		t.Fatal(err)
	}
	if err := ce.SetTrust(both); err != nil {
		t.Fatal(err)
	}
	handshake(t, ce, se, workload("ns", "c", 1), workload("ns", "s", 1))
	// And removing a CA rejects tokens verified before.
	if err := se.SetTrust(other.bundle); err != nil {
		t.Fatal(err)
	}
	syn, _, _ := newTestEngine(t, f.a, f.bundle, nil).NewSYN(workload("ns", "c", 1), testConn)
	_, err = se.ConsumeSYN(syn, testConn)
	wantReason(t, err, ReasonUnknownCA)
	if se.SetTrust(nil) == nil {
		t.Fatal("SetTrust(nil) accepted")
	}
}

// Every Reason the package declares is explained in docs/protocol.md (as
// **reason**), since operators read it off flow records.
func TestReasonsDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "protocol.md"))
	if err != nil {
		t.Fatal(err)
	}
	file, err := parser.ParseFile(token.NewFileSet(), "errors.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, decl := range file.Decls {
		gen, ok := decl.(*ast.GenDecl)
		if !ok || gen.Tok != token.CONST {
			continue
		}
		for _, spec := range gen.Specs {
			vs := spec.(*ast.ValueSpec)
			if typ, ok := vs.Type.(*ast.Ident); !ok || typ.Name != "Reason" {
				continue
			}
			for _, v := range vs.Values {
				if lit, ok := v.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					reasons = append(reasons, strings.Trim(lit.Value, `"`))
				}
			}
		}
	}
	if len(reasons) < 8 {
		t.Fatalf("found %d reasons in errors.go (%v): the parse is broken", len(reasons), reasons)
	}
	for _, r := range reasons {
		if !strings.Contains(string(doc), "**"+r+"**") {
			t.Errorf("reason %q is not explained in docs/protocol.md (want **%s**)", r, r)
		}
	}
}
