package tokens

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"testing"
)

// The hand-rolled HMAC with cached pads is exactly HKDF-Expand.
func TestProofsAreHKDFExpand(t *testing.T) {
	f := newFixture(t, "cluster.local")
	ka, _ := f.a.Key.ECDH()
	kb, _ := f.b.Key.ECDH()
	k1, err := newPairKey(ka, kb.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	k2, err := newPairKey(kb, ka.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	nc, ns := newNonce(), newNonce()
	hc, hs := sha256.Sum256([]byte("client token")), sha256.Sum256([]byte("server token"))
	s1, c1, err := handshakeProofs(k1, &nc, &ns, &hc, &hs)
	if err != nil {
		t.Fatal(err)
	}
	s2, c2, _ := handshakeProofs(k2, &nc, &ns, &hc, &hs)
	if s1 != s2 || c1 != c2 {
		t.Fatal("the two nodes derive different proofs")
	}
	z, _ := ka.ECDH(kb.PublicKey())
	prk, _ := hkdf.Extract(sha256.New, z, []byte(pairSalt))
	info := proofsInfo + string(nc[:]) + string(ns[:]) + string(hc[:]) + string(hs[:])
	want, err := hkdf.Expand(sha256.New, prk, info, 32)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want[:16], s1[:]) || !bytes.Equal(want[16:], c1[:]) {
		t.Fatalf("proofs %x %x, HKDF-Expand %x", s1, c1, want)
	}
	// Every input changes the proofs.
	other := newNonce()
	if s, _, _ := handshakeProofs(k1, &other, &ns, &hc, &hs); s == s1 {
		t.Error("client nonce not bound")
	}
	if s, _, _ := handshakeProofs(k1, &nc, &other, &hc, &hs); s == s1 {
		t.Error("server nonce not bound")
	}
	if s, _, _ := handshakeProofs(k1, &nc, &ns, &hs, &hs); s == s1 {
		t.Error("client token not bound")
	}
	if s, _, _ := handshakeProofs(k1, &nc, &ns, &hc, &hc); s == s1 {
		t.Error("server token not bound")
	}
}
