package tokens

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// twoMsgEngine is an engine with the two-message handshake on.
func twoMsgEngine(t testing.TB, creds *NodeCredentials, trust *TrustBundle, clk *clock, mod func(*Config)) *Engine {
	t.Helper()
	cfg := Config{Credentials: creds, Trust: trust, TwoMessage: true}
	if clk != nil {
		cfg.Now = clk.Now
	}
	if mod != nil {
		mod(&cfg)
	}
	e, err := NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// twoMsgPair is a client and a server engine with the two-message
// handshake on, on one settable clock already past the servers' start-up
// window, and the client knowing the server (one three-message handshake
// done).
func twoMsgPair(t testing.TB) (f *fixture, clk *clock, ce, se *Engine) {
	t.Helper()
	f = newFixture(t, "cluster.local")
	clk = newClock()
	ce = twoMsgEngine(t, f.a, f.bundle, clk, nil)
	se = twoMsgEngine(t, f.b, f.bundle, clk, nil)
	clk.Advance(2 * DefaultTwoMessageWindow)
	handshake(t, ce, se, workload("frontend", "web-1", 2), workload("backend", "api-1", 2))
	return f, clk, ce, se
}

var (
	twoMsgClient = workload("frontend", "web-1", 2)
	twoMsgServer = workload("backend", "api-1", 2)
)

// twoMessage runs SYN2 -> SYN-ACK2 and fails unless both sides complete in
// two messages.
func twoMessage(t testing.TB, ce, se *Engine, conn Endpoints) (syn []byte) {
	t.Helper()
	syn, ch, err := ce.NewSYN(twoMsgClient, conn)
	if err != nil {
		t.Fatal(err)
	}
	if syn[0] != typeSYN2 {
		t.Fatalf("SYN to a known server is type 0x%02x, want 0x%02x", syn[0], typeSYN2)
	}
	sh, err := se.ConsumeSYN(syn, conn)
	if err != nil {
		t.Fatal("ConsumeSYN:", err)
	}
	if !sh.TwoMessage() {
		t.Fatalf("server fell back to three messages: %s", sh.Fallback())
	}
	synack, err := sh.NewSYNACK(twoMsgServer, testServerISN)
	if err != nil {
		t.Fatal(err)
	}
	if synack[0] != typeSYNACK2 {
		t.Fatalf("SYN-ACK type 0x%02x, want 0x%02x", synack[0], typeSYNACK2)
	}
	id, err := ch.ConsumeSYNACK(synack, testServerISN)
	if err != nil {
		t.Fatal("ConsumeSYNACK:", err)
	}
	if !ch.TwoMessage() || id.Pod != "api-1" || sh.Peer().Pod != "web-1" {
		t.Fatalf("client two-message %v, client saw %s, server saw %s", ch.TwoMessage(), id, sh.Peer())
	}
	if _, err := ch.NewACK(); err == nil {
		t.Fatal("NewACK gave a proof after a two-message handshake")
	}
	if err := sh.ConsumeACK([]byte{typeACK, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}); err == nil {
		t.Fatal("ConsumeACK accepted a proof for a two-message handshake")
	}
	return syn
}

func TestTwoMessageHandshake(t *testing.T) {
	_, _, ce, se := twoMsgPair(t)
	twoMessage(t, ce, se, testConn)
	// Another connection to the same server address, other ports and ISN.
	other := testConn
	other.Client = netip.AddrPortFrom(other.Client.Addr(), 40001)
	other.ClientISN++
	twoMessage(t, ce, se, other)
}

// threeMessage completes the handshake of syn in three messages after the
// server fell back, and returns the server's reason, typed and in words.
// The client says it was declined exactly when it sent a two-message SYN.
func threeMessage(t *testing.T, syn []byte, ch *ClientHandshake, se *Engine, observed Endpoints) (FallbackReason, string) {
	t.Helper()
	sh, err := se.ConsumeSYN(syn, observed)
	if err != nil {
		t.Fatal("ConsumeSYN:", err)
	}
	if sh.TwoMessage() {
		t.Fatal("server took the two-message path")
	}
	synack, err := sh.NewSYNACK(twoMsgServer, testServerISN)
	if err != nil {
		t.Fatal(err)
	}
	if synack[0] != typeSYNACK {
		t.Fatalf("fallback SYN-ACK type 0x%02x", synack[0])
	}
	if _, err := ch.ConsumeSYNACK(synack, testServerISN); err != nil {
		t.Fatal("ConsumeSYNACK:", err)
	}
	if ch.TwoMessage() {
		t.Fatal("client thinks the fallback completed in two messages")
	}
	ack, err := ch.NewACK()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.ConsumeACK(ack); err != nil {
		t.Fatal("ConsumeACK:", err)
	}
	want := FallbackReason("")
	if syn[0] == typeSYN2 {
		want = FallbackDeclined
	}
	if got := ch.FallbackReason(); got != want {
		t.Errorf("client fallback reason %q, want %q", got, want)
	}
	return sh.FallbackReason(), sh.Fallback()
}

// Every reason to fall back leads to the three-message handshake, which
// completes; afterwards the two-message one works again where the reason
// went away.
func TestTwoMessageFallback(t *testing.T) {
	for _, tc := range []struct {
		name string
		// prepare changes the world after the client knows the server;
		// it returns the server engine and the connection it observes.
		prepare func(t *testing.T, f *fixture, clk *clock, ce, se *Engine) (*Engine, Endpoints)
		reason  FallbackReason
		why     string
		syn1    bool // the client still sends a three-message SYN
	}{
		{name: "server has it disabled", reason: FallbackDisabled, why: "disabled",
			prepare: func(t *testing.T, f *fixture, clk *clock, ce, se *Engine) (*Engine, Endpoints) {
				return newTestEngine(t, f.b, f.bundle, clk), testConn
			}},
		{name: "server node key changed", reason: FallbackUnknownKey, why: "another key",
			prepare: func(t *testing.T, f *fixture, clk *clock, ce, se *Engine) (*Engine, Endpoints) {
				if err := se.Rotate(mustIssue(t, f.ca, "node-b")); err != nil {
					t.Fatal(err)
				}
				return se, testConn
			}},
		{name: "address now served by another node", reason: FallbackUnknownKey, why: "another key",
			prepare: func(t *testing.T, f *fixture, clk *clock, ce, se *Engine) (*Engine, Endpoints) {
				return twoMsgEngine(t, mustIssue(t, f.ca, "node-c"), f.bundle, clk, nil), testConn
			}},
		{name: "server restarted", reason: FallbackRestart, why: "restart",
			prepare: func(t *testing.T, f *fixture, clk *clock, ce, se *Engine) (*Engine, Endpoints) {
				return twoMsgEngine(t, f.b, f.bundle, clk, nil), testConn
			}},
		{name: "client clock behind", reason: FallbackStaleTimestamp, why: "older than",
			prepare: func(t *testing.T, f *fixture, clk *clock, ce, se *Engine) (*Engine, Endpoints) {
				late := &clock{t: clk.Now().Add(10 * time.Second)}
				return twoMsgEngine(t, f.b, f.bundle, late, func(c *Config) { c.Now = func() time.Time { return late.Now() } }), testConn
			}},
		{name: "client clock ahead", reason: FallbackFutureTimestamp, why: "ahead",
			prepare: func(t *testing.T, f *fixture, clk *clock, ce, se *Engine) (*Engine, Endpoints) {
				// A server started long ago whose clock is 10s behind.
				early := &clock{t: clk.Now().Add(-time.Hour)}
				s := twoMsgEngine(t, f.b, f.bundle, early, nil)
				early.Advance(time.Hour - 10*time.Second)
				return s, testConn
			}},
		{name: "client behind a declared NAT", reason: FallbackNAT, why: "NAT",
			prepare: func(t *testing.T, f *fixture, clk *clock, ce, se *Engine) (*Engine, Endpoints) {
				early := &clock{t: clk.Now().Add(-time.Minute)}
				s := twoMsgEngine(t, f.b, f.bundle, early, func(c *Config) {
					c.NATGateways = NATGateways{"cluster.local": {netip.MustParsePrefix("198.18.100.0/24")}}
				})
				early.Advance(time.Minute)
				observed := testConn
				observed.Client = fuzzGateway
				return s, observed
			}},
		{name: "client has it disabled", syn1: true,
			prepare: func(t *testing.T, f *fixture, clk *clock, ce, se *Engine) (*Engine, Endpoints) {
				return se, testConn
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, clk, ce, se := twoMsgPair(t)
			if tc.syn1 {
				ce = newTestEngine(t, f.a, f.bundle, clk)
			}
			server, observed := tc.prepare(t, f, clk, ce, se)
			syn, ch, err := ce.NewSYN(twoMsgClient, testConn)
			if err != nil {
				t.Fatal(err)
			}
			if got := syn[0] == typeSYN; got != tc.syn1 {
				t.Fatalf("SYN type 0x%02x", syn[0])
			}
			reason, why := threeMessage(t, syn, ch, server, observed)
			if reason != tc.reason || !strings.Contains(why, tc.why) {
				t.Fatalf("fallback reason %q (%q), want %q saying %q", reason, why, tc.reason, tc.why)
			}
		})
	}
}

// The MAC binds the SYN2's fields: any change makes the server fall back to
// three messages (where the change is harmless or fails the proofs), never
// accept in two.
func TestTwoMessageMACBinds(t *testing.T) {
	_, _, ce, se := twoMsgPair(t)
	syn, _, err := ce.NewSYN(twoMsgClient, testConn)
	if err != nil {
		t.Fatal(err)
	}
	fixed := 1 + NonceSize + wireEndpointsSize4 + tsSize + keyIDSize + ProofSize
	for i := 1; i < fixed; i++ {
		if i >= 1+NonceSize && i < 1+NonceSize+wireEndpointsSize4 {
			continue // endpoints: a change is endpoint-mismatch, below
		}
		b := append([]byte(nil), syn...)
		b[i] ^= 0x01
		sh, err := se.VerifySYN(b, testConn)
		if err != nil {
			t.Fatalf("byte %d flipped: %v", i, err)
		}
		if sh.TwoMessage() {
			t.Fatalf("byte %d flipped: still accepted in two messages", i)
		}
	}
	// The client ISN is bound too.
	other := testConn
	other.ClientISN++
	sh, err := se.VerifySYN(syn, other)
	if err != nil || sh.TwoMessage() {
		t.Fatalf("SYN2 with another ISN: err %v, two-message %v", err, sh.TwoMessage())
	}
}

// A SYN2 replayed to the same server within the window is refused by the
// strike register; replayed after the server restarted (its register
// lost), it is not accepted in two messages (its timestamp predates the
// restart) and its three-message answer needs the client node's key.
func TestTwoMessageReplay(t *testing.T) {
	f, clk, ce, se := twoMsgPair(t)
	syn := twoMessage(t, ce, se, testConn)
	_, err := se.ConsumeSYN(syn, testConn)
	wantReason(t, err, ReasonReplayed)

	clk.Advance(time.Second) // within the window
	_, err = se.ConsumeSYN(syn, testConn)
	wantReason(t, err, ReasonReplayed)

	restarted := twoMsgEngine(t, f.b, f.bundle, clk, nil)
	sh, err := restarted.ConsumeSYN(syn, testConn)
	if err != nil {
		t.Fatal(err)
	}
	if sh.TwoMessage() {
		t.Fatal("restarted server accepted a pre-restart SYN2 in two messages")
	}
	if sh.FallbackReason() != FallbackRestart || !strings.Contains(sh.Fallback(), "restart") {
		t.Errorf("fallback reason: %s (%s)", sh.FallbackReason(), sh.Fallback())
	}
	// Long after the restart, a SYN2 sent before it is still refused (by
	// its timestamp now).
	clk.Advance(time.Minute)
	later := twoMsgEngine(t, f.b, f.bundle, clk, nil)
	clk.Advance(time.Minute)
	if sh, err := later.ConsumeSYN(syn, testConn); err != nil || sh.TwoMessage() {
		t.Fatalf("old SYN2: err %v, two-message %v", err, sh.TwoMessage())
	}
	// A new SYN2 after the restart window works.
	twoMessage(t, ce, later, testConn)
}

// When the strike register forgets nonces early (full), SYN2s sent before
// fall back to three messages.
func TestTwoMessageRegisterLoss(t *testing.T) {
	f := newFixture(t, "cluster.local")
	clk := newClock()
	ce := twoMsgEngine(t, f.a, f.bundle, clk, nil)
	se := twoMsgEngine(t, f.b, f.bundle, clk, func(c *Config) { c.ReplayCacheSize = 4 })
	clk.Advance(2 * DefaultTwoMessageWindow)
	handshake(t, ce, se, twoMsgClient, twoMsgServer)
	syn := twoMessage(t, ce, se, testConn)
	held, _, err := ce.NewSYN(twoMsgClient, testConn) // sent now, delivered late
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 8; i++ { // fills the register, which forgets early
		c := testConn
		c.Client = netip.AddrPortFrom(c.Client.Addr(), uint16(41000+i))
		s, _, err := ce.NewSYN(twoMsgClient, c)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := se.ConsumeSYN(s, c); err != nil {
			t.Fatal(err)
		}
	}
	if se.replay.len() > 4 {
		t.Fatalf("register holds %d nonces, bound 4", se.replay.len())
	}
	// The forgotten nonce of syn is not replayable in two messages either.
	if sh, err := se.ConsumeSYN(syn, testConn); err == nil && sh.TwoMessage() {
		t.Fatal("forgotten SYN2 replayed in two messages")
	}
	sh, err := se.ConsumeSYN(held, testConn)
	if err != nil {
		t.Fatal(err)
	}
	if sh.TwoMessage() {
		t.Fatal("SYN2 sent before the register forgot nonces accepted in two messages")
	}
}

// A server node answering with a token of another node under its own pair
// key is refused: the key must be the token's.
func TestTwoMessageTokenOfAnotherNode(t *testing.T) {
	f, clk, ce, se := twoMsgPair(t)
	other := twoMsgEngine(t, mustIssue(t, f.ca, "node-c"), f.bundle, clk, nil)
	syn, ch, err := ce.NewSYN(twoMsgClient, testConn)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := se.ConsumeSYN(syn, testConn)
	if err != nil || !sh.TwoMessage() {
		t.Fatal(err, sh.Fallback())
	}
	// node-b answers with node-c's token, proven under node-b's key.
	tok, err := other.localToken(other.keys.Load(), twoMsgServer, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	k, err := se.keys.Load().pairKey(sh.client, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	proof, err := synack2Proof(k, &sh.clientNonce, sh.ts, &sh.client.digest, &tok.digest, &sh.conn, testServerISN)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ch.ConsumeSYNACK(appendSYNACK2(nil, &sh.clientNonce, tok.wire, &proof), testServerISN)
	wantReason(t, err, ReasonBadProof)
}

// The relay of TestRelayRefused on the two-message path: forwarded as is,
// endpoint-mismatch; with the endpoints rewritten, the MAC no longer
// verifies, the server falls back, and the client refuses the relayed
// three-message SYN-ACK.
func TestTwoMessageRelayRefused(t *testing.T) {
	f := newFixture(t, "cluster.local")
	clk := newClock()
	apiNode := twoMsgEngine(t, f.b, f.bundle, clk, nil)
	dbNode := twoMsgEngine(t, f.a, f.bundle, clk, nil)
	clk.Advance(2 * DefaultTwoMessageWindow)
	api, db := workload("prod", "api", 1), workload("prod", "db", 1)
	apiToEvil := Endpoints{Client: netip.MustParseAddrPort("198.18.2.2:40000"), Server: netip.MustParseAddrPort("198.18.2.3:8080"), ClientISN: 111}
	evilToDB := Endpoints{Client: netip.MustParseAddrPort("198.18.2.3:50000"), Server: netip.MustParseAddrPort("198.18.1.2:5432"), ClientISN: 111}
	// api knows db's node (and evil is on db's node too: the worst case,
	// api's SYN to evil is a SYN2 for the key db's node holds).
	apiNode.learnServer(apiNode.keys.Load(), &apiToEvil, mustPeer(t, apiNode, dbNode, db, clk), mustPair(t, apiNode, dbNode, db, clk), clk.Now())

	syn, ch, err := apiNode.NewSYN(api, apiToEvil)
	if err != nil || syn[0] != typeSYN2 {
		t.Fatal(err, syn[0])
	}
	_, err = dbNode.ConsumeSYN(syn, evilToDB)
	wantReason(t, err, ReasonEndpointMismatch)

	rewritten := append([]byte(nil), syn...)
	copy(rewritten[1+NonceSize:], appendWireEndpoints(nil, &evilToDB))
	sh, err := dbNode.ConsumeSYN(rewritten, evilToDB)
	if err != nil {
		t.Fatal(err)
	}
	if sh.TwoMessage() {
		t.Fatal("relayed SYN2 with rewritten endpoints accepted in two messages")
	}
	synack, err := sh.NewSYNACK(db, 222)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ch.ConsumeSYNACK(synack, 222)
	wantReason(t, err, ReasonBadProof)
}

func mustPeer(t *testing.T, local, peer *Engine, id any, clk *clock) *peerToken {
	t.Helper()
	tok, err := peer.localToken(peer.keys.Load(), twoMsgServer, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	wt, err := parseToken(tok.wire)
	if err != nil {
		t.Fatal(err)
	}
	p, err := local.verifyPeer(wt, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustPair(t *testing.T, local, peer *Engine, id any, clk *clock) *pairKey {
	t.Helper()
	k, err := local.keys.Load().pairKey(mustPeer(t, local, peer, id, clk), clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// FuzzConsumeSYNACK2 fuzzes the SYN-ACK a client that sent a SYN2 receives.
func FuzzConsumeSYNACK2(f *testing.F) {
	_, _, ce, se := twoMsgPair(f)
	syn, ch, err := ce.NewSYN(twoMsgClient, testConn)
	if err != nil {
		f.Fatal(err)
	}
	sh, err := se.ConsumeSYN(syn, testConn)
	if err != nil {
		f.Fatal(err)
	}
	synack, err := sh.NewSYNACK(twoMsgServer, testServerISN)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(synack)
	f.Add(synack[:len(synack)-ProofSize])
	f.Add([]byte{typeSYNACK2})
	f.Fuzz(func(t *testing.T, payload []byte) {
		_, err := ch.ConsumeSYNACK(payload, testServerISN)
		checkRejection(t, err)
	})
}

// The sizes docs/protocol.md gives: a SYN2 is 32 bytes longer than a SYN,
// a SYN-ACK2 16 bytes shorter than a SYN-ACK.
func TestTwoMessageSizes(t *testing.T) {
	_, _, ce, se := twoMsgPair(t)
	three := newTestEngine(t, ce.keys.Load().creds, ce.verifier.Load().trust, nil)
	syn1, _, err := three.NewSYN(twoMsgClient, testConn)
	if err != nil {
		t.Fatal(err)
	}
	syn2, _, err := ce.NewSYN(twoMsgClient, testConn)
	if err != nil {
		t.Fatal(err)
	}
	if len(syn2) != len(syn1)+32 {
		t.Errorf("SYN2 %d bytes, SYN %d: want 32 more", len(syn2), len(syn1))
	}
	sh, err := se.ConsumeSYN(syn2, testConn)
	if err != nil {
		t.Fatal(err)
	}
	sa2, err := sh.NewSYNACK(twoMsgServer, testServerISN)
	if err != nil {
		t.Fatal(err)
	}
	sh1, err := se.ConsumeSYN(syn1, testConn)
	if err != nil {
		t.Fatal(err)
	}
	sa1, err := sh1.NewSYNACK(twoMsgServer, testServerISN)
	if err != nil {
		t.Fatal(err)
	}
	if len(sa2) != len(sa1)-16 {
		t.Errorf("SYN-ACK2 %d bytes, SYN-ACK %d: want 16 fewer", len(sa2), len(sa1))
	}
}
