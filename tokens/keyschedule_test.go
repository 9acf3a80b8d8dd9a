package tokens

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"net/netip"
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
	s1, c1, err := handshakeProofs(k1, &nc, &ns, &hc, &hs, &testConn, testServerISN)
	if err != nil {
		t.Fatal(err)
	}
	s2, c2, _ := handshakeProofs(k2, &nc, &ns, &hc, &hs, &testConn, testServerISN)
	if s1 != s2 || c1 != c2 {
		t.Fatal("the two nodes derive different proofs")
	}
	z, _ := ka.ECDH(kb.PublicKey())
	prk, _ := hkdf.Extract(sha256.New, z, []byte(pairSalt))
	client4, server4 := testConn.Client.Addr().As16(), testConn.Server.Addr().As16()
	info := proofsInfo + string(nc[:]) + string(ns[:]) + string(hc[:]) + string(hs[:]) +
		string(client4[:]) + "\x9c\x40" + string(server4[:]) + "\x1f\x90" + // ports 40000, 8080
		"\x10\x00\x00\x01" + "\x20\x00\x00\x02" // ISNs
	want, err := hkdf.Expand(sha256.New, prk, info, 32)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want[:16], s1[:]) || !bytes.Equal(want[16:], c1[:]) {
		t.Fatalf("proofs %x %x, HKDF-Expand %x", s1, c1, want)
	}
	// Every input changes the proofs.
	other := newNonce()
	if s, _, _ := handshakeProofs(k1, &other, &ns, &hc, &hs, &testConn, testServerISN); s == s1 {
		t.Error("client nonce not bound")
	}
	if s, _, _ := handshakeProofs(k1, &nc, &other, &hc, &hs, &testConn, testServerISN); s == s1 {
		t.Error("server nonce not bound")
	}
	if s, _, _ := handshakeProofs(k1, &nc, &ns, &hs, &hs, &testConn, testServerISN); s == s1 {
		t.Error("client token not bound")
	}
	if s, _, _ := handshakeProofs(k1, &nc, &ns, &hc, &hc, &testConn, testServerISN); s == s1 {
		t.Error("server token not bound")
	}
	for name, change := range map[string]func(*Endpoints, *uint32){
		"client address": func(e *Endpoints, _ *uint32) { e.Client = netip.MustParseAddrPort("198.18.9.9:40000") },
		"client port":    func(e *Endpoints, _ *uint32) { e.Client = netip.AddrPortFrom(e.Client.Addr(), 40001) },
		"server address": func(e *Endpoints, _ *uint32) { e.Server = netip.MustParseAddrPort("198.18.9.9:8080") },
		"server port":    func(e *Endpoints, _ *uint32) { e.Server = netip.AddrPortFrom(e.Server.Addr(), 8081) },
		"client ISN":     func(e *Endpoints, _ *uint32) { e.ClientISN++ },
		"server ISN":     func(_ *Endpoints, isn *uint32) { *isn++ },
	} {
		conn, isn := testConn, uint32(testServerISN)
		change(&conn, &isn)
		if s, c, _ := handshakeProofs(k1, &nc, &ns, &hc, &hs, &conn, isn); s == s1 || c == c1 {
			t.Errorf("%s not bound", name)
		}
	}
}
