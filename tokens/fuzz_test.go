package tokens

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Fuzz tests for every decoder of bytes that arrive from the network. Each
// checks that nothing panics and that every rejection is a *RejectError.
// Seeds: valid messages added with f.Add, plus the corpus checked in under
// testdata/fuzz (regenerate with BIREME_WRITE_FUZZ_CORPUS=1 go test -run
// TestWriteFuzzCorpus ./tokens).
//
// Run one with a count budget, for example
//
//	go test -run '^$' -fuzz '^FuzzConsumeSYN$' -fuzztime 500000x ./tokens
//
// With a duration budget (-fuzztime 30s) Go 1.26 can end a clean run with
// "context deadline exceeded" and no crasher on a loaded machine: a race in
// the fuzzing coordinator (golang/go#75804), not a finding.

// fuzzWorld is a client engine, a server engine and one handshake between
// them, with its three valid messages.
type fuzzWorld struct {
	ce, se           *Engine
	ch               *ClientHandshake
	sh               *ServerHandshake
	syn, synack, ack []byte
}

// fuzzGateway is a NAT gateway declared for cluster.local on the fuzz
// world's server: a fuzzed SYN seen from it may claim any source.
var fuzzGateway = netip.MustParseAddrPort("198.18.100.7:61000")

func newFuzzWorld(t testing.TB) *fuzzWorld {
	f := newFixture(t, "cluster.local")
	se, err := NewEngine(Config{Credentials: f.b, Trust: f.bundle,
		NATGateways: NATGateways{"cluster.local": {netip.MustParsePrefix("198.18.100.0/24")}}})
	if err != nil {
		t.Fatal(err)
	}
	w := &fuzzWorld{ce: newTestEngine(t, f.a, f.bundle, nil), se: se}
	if w.syn, w.ch, err = w.ce.NewSYN(workload("frontend", "web-1", 4), testConn); err != nil {
		t.Fatal(err)
	}
	// The server engine verifies a copy so that the fuzzed SYN seed is not a replay.
	if w.sh, err = w.se.ConsumeSYN(withNewNonce(w.syn), testConn); err != nil {
		t.Fatal(err)
	}
	// A SYN-ACK answering the client's real nonce.
	w.sh.clientNonce = w.ch.Nonce()
	if w.synack, err = w.sh.NewSYNACK(workload("backend", "api-1", 3), testServerISN); err != nil {
		t.Fatal(err)
	}
	if _, err := w.ch.ConsumeSYNACK(w.synack, testServerISN); err != nil {
		t.Fatal(err)
	}
	if w.ack, err = w.ch.NewACK(); err != nil {
		t.Fatal(err)
	}
	return w
}

func checkRejection(t *testing.T, err error) {
	if err != nil && ReasonOf(err) == "" {
		t.Fatalf("rejection without a reason: %v", err)
	}
}

// FuzzConsumeSYN fuzzes the SYN, seen either directly (observed as the
// fuzz world's connection) or from a declared NAT gateway.
func FuzzConsumeSYN(f *testing.F) {
	w := newFuzzWorld(f)
	f.Add(w.syn, false)
	f.Add(w.syn, true)
	f.Add(w.syn[:len(w.syn)/2], false)
	f.Add([]byte{typeSYN}, false)
	f.Add(ipv6SYN(f, w), false)
	f.Add(syn2Seed(w), false)
	f.Fuzz(func(t *testing.T, payload []byte, viaGateway bool) {
		observed := testConn
		if viaGateway {
			observed.Client = fuzzGateway
		}
		sh, err := w.se.ConsumeSYN(payload, observed)
		checkRejection(t, err)
		if err == nil {
			if sh.Peer() == nil {
				t.Fatal("accepted SYN without a peer identity")
			}
			if sh.conn.Server != observed.Server {
				t.Fatalf("accepted a SYN sent to %s at %s", sh.conn.Server, observed.Server)
			}
			if sh.conn.Client != observed.Client && !viaGateway {
				t.Fatalf("accepted a SYN sent from %s, seen from %s, not a NAT gateway", sh.conn.Client, observed.Client)
			}
			if _, err := sh.NewSYNACK(workload("backend", "api-1", 1), testServerISN); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// syn2Seed is a two-message SYN (twomessage.go) with the fuzz world's
// client token, for a key the server does not hold.
func syn2Seed(w *fuzzWorld) []byte {
	var nc [NonceSize]byte
	var keyID [keyIDSize]byte
	var mac [ProofSize]byte
	nc[0] = 0x5a
	return appendSYN2(nil, &nc, &testConn, 1, &keyID, &mac, w.syn[1+NonceSize+wireEndpointsSize4:])
}

// ipv6SYN is a SYN of the fuzz world's client on an IPv6 connection (the
// long form of the endpoints) that the fuzz world's server accepts when it
// observes testConn: its endpoints are testConn's, IPv4-mapped.
func ipv6SYN(t testing.TB, w *fuzzWorld) []byte {
	mapped := func(ap netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
	}
	conn := Endpoints{Client: mapped(testConn.Client), Server: mapped(testConn.Server), ClientISN: testConn.ClientISN}
	syn, _, err := w.ce.NewSYN(workload("frontend", "web-1", 1), conn)
	if err != nil {
		t.Fatal(err)
	}
	if syn[1+NonceSize] != 6 {
		t.Fatalf("IPv4-mapped endpoints encoded as family %d", syn[1+NonceSize])
	}
	return syn
}

func FuzzConsumeSYNACK(f *testing.F) {
	w := newFuzzWorld(f)
	f.Add(w.synack)
	f.Add(w.synack[:len(w.synack)-ProofSize])
	f.Add([]byte{typeSYNACK})
	var nc [NonceSize]byte
	var proof [ProofSize]byte
	f.Add(appendSYNACK2(nil, &nc, w.syn[1+NonceSize+wireEndpointsSize4:], &proof))
	f.Add([]byte{typeSYNACK2})
	f.Fuzz(func(t *testing.T, payload []byte) {
		// A fresh handshake with the world's nonce, so an accepted fuzzed
		// SYN-ACK does not change the state other inputs see.
		ch := &ClientHandshake{e: w.ce, keys: w.ch.keys, nonce: w.ch.nonce, token: w.ch.token, conn: w.ch.conn}
		peer, err := ch.ConsumeSYNACK(payload, testServerISN)
		checkRejection(t, err)
		if err == nil && peer == nil {
			t.Fatal("accepted SYN-ACK without a peer identity")
		}
		_, _ = SYNACKClientNonce(payload)
	})
}

func FuzzConsumeACK(f *testing.F) {
	w := newFuzzWorld(f)
	f.Add(w.ack)
	f.Add(w.ack[:5])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, payload []byte) {
		err := w.sh.ConsumeACK(payload)
		checkRejection(t, err)
		if err == nil && string(payload) != string(w.ack) {
			t.Fatalf("accepted an ACK that is not the client's: %x", payload)
		}
	})
}

// FuzzParseToken exercises the token decoder and the full verification of
// arbitrary certificate, claims and signature bytes.
func FuzzParseToken(f *testing.F) {
	w := newFuzzWorld(f)
	f.Add(w.syn[1+NonceSize+wireEndpointsSize4:])
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := parseToken(b)
		checkRejection(t, err)
		if err != nil {
			return
		}
		_, err = w.se.verifyPeer(tok, w.se.now())
		checkRejection(t, err)
	})
}

// FuzzVerifyJWT exercises the JWT form's decoder.
func FuzzVerifyJWT(f *testing.F) {
	w := newFuzzWorld(f)
	tok, err := w.ce.SignJWT(workload("frontend", "web-1", 4))
	if err != nil {
		f.Fatal(err)
	}
	cert := w.ce.keys.Load().creds.Cert
	f.Add(tok)
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, s string) {
		_, _, err := w.se.VerifyJWT(s, cert)
		checkRejection(t, err)
	})
}

// TestWriteFuzzCorpus (re)writes the checked-in seed corpus from freshly
// generated messages and hand-made malformed ones. It only runs when
// BIREME_WRITE_FUZZ_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("BIREME_WRITE_FUZZ_CORPUS") != "1" {
		t.Skip("set BIREME_WRITE_FUZZ_CORPUS=1 to rewrite testdata/fuzz")
	}
	w := newFuzzWorld(t)
	tok, _ := w.ce.SignJWT(workload("frontend", "web-1", 4))
	write := func(target, name string, v any) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var line string
		switch v := v.(type) {
		case []byte:
			line = fmt.Sprintf("[]byte(%q)", v)
		case string:
			line = fmt.Sprintf("string(%q)", v)
		}
		if target == "FuzzConsumeSYN" { // (payload, viaGateway)
			line += fmt.Sprintf("\nbool(%v)", strings.HasSuffix(name, "-via-gateway"))
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte("go test fuzz v1\n"+line+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	flip := func(b []byte, i int) []byte { c := append([]byte(nil), b...); c[i] ^= 0x55; return c }
	tokenAt := 1 + NonceSize + wireEndpointsSize4
	write("FuzzConsumeSYN", "valid", w.syn)
	write("FuzzConsumeSYN", "valid-via-gateway", w.syn)
	write("FuzzConsumeSYN", "ipv6", ipv6SYN(t, w))
	write("FuzzConsumeSYN", "version-1", append([]byte{0x11}, w.syn[1:]...))
	write("FuzzConsumeSYN", "bad-endpoint-family", flip(w.syn, 1+NonceSize))
	write("FuzzConsumeSYN", "other-server-via-gateway", flip(w.syn, tokenAt-2))
	write("FuzzConsumeSYN", "truncated", w.syn[:100])
	write("FuzzConsumeSYN", "bad-cert-length", flip(w.syn, tokenAt))
	write("FuzzConsumeSYN", "bad-claims", flip(w.syn, len(w.syn)-80))
	write("FuzzConsumeSYNACK", "valid", w.synack)
	write("FuzzConsumeSYNACK", "bad-proof", flip(w.synack, len(w.synack)-1))
	write("FuzzConsumeSYNACK", "short", w.synack[:33])
	write("FuzzConsumeACK", "valid", w.ack)
	write("FuzzConsumeACK", "wrong-type", flip(w.ack, 0))
	write("FuzzConsumeSYNACK", "version-1", append([]byte{0x12}, w.synack[1:]...))
	write("FuzzConsumeACK", "version-1", append([]byte{0x13}, w.ack[1:]...))
	write("FuzzParseToken", "valid", w.syn[tokenAt:])
	write("FuzzParseToken", "empty-fields", []byte{0, 0, 0, 0})
	m, _ := parseSYN(w.syn)
	write("FuzzParseClaims", "valid", m.token.payload)
	write("FuzzParseClaims", "huge-port", []byte(`{"c":"x","ns":"y","p":"z","iss":"n","iat":1,"exp":2,"pt":[["a","TCP",1e9]]}`))
	write("FuzzVerifyJWT", "valid", tok)
	write("FuzzVerifyJWT", "no-signature", tok[:len(tok)-20])
}

// FuzzParseClaims exercises the claims decoder directly: in a SYN it is
// only reached after the signature verified, which random mutations rarely
// get past.
func FuzzParseClaims(f *testing.F) {
	w := newFuzzWorld(f)
	m, err := parseSYN(w.syn)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(m.token.payload)
	f.Add([]byte(`{"c":"x","ns":"y","p":"z","iss":"n","iat":1,"exp":2,"pt":[["a","TCP",1e9]]}`))
	f.Add([]byte(`{"c":"x","ns":"y","p":"z","iss":"n","iat":1,"exp":2,"pt":[[null,{},-1]],"l":{"a":1}}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		c, err := parseClaims(payload)
		checkRejection(t, err)
		if err != nil {
			return
		}
		id, err := c.identity()
		checkRejection(t, err)
		if err == nil && (id.Cluster == "" || id.Namespace == "" || id.Pod == "") {
			t.Fatalf("accepted claims without cluster, namespace or pod: %s", payload)
		}
	})
}
