package tokens

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

// forgeSignature returns syn with one bit of its token's signature (the
// last bytes of a SYN) flipped: a valid certificate and claims under a
// signature no node made, what an attacker who captured a SYN can send.
func forgeSignature(syn []byte) []byte {
	forged := append([]byte(nil), syn...)
	forged[len(forged)-1] ^= 1
	return forged
}

// A forged token sent again is refused from memory: no second signature
// verification (its cost shows as allocations: parsing the claims and the
// ECDSA verification allocate, a cache lookup does not).
func TestForgedTokenIsRemembered(t *testing.T) {
	_, ce, se := newPair(t)
	syn, _, err := ce.NewSYN(workload("ns", "c", 10), testConn)
	if err != nil {
		t.Fatal(err)
	}
	forged := forgeSignature(syn)
	if !se.SYNNeedsVerification(forged, testConn) {
		t.Fatal("an unseen token needs no verification?")
	}
	_, err = se.ConsumeSYN(forged, testConn)
	wantReason(t, err, ReasonBadSignature)
	if se.SYNNeedsVerification(forged, testConn) {
		t.Error("a token already found forged still needs a verification")
	}
	allocs := testing.AllocsPerRun(20, func() {
		_, err = se.ConsumeSYN(withNewNonce(forged), testConn)
	})
	wantReason(t, err, ReasonBadSignature)
	// withNewNonce allocates the copy; a verification allocates dozens.
	if allocs > 5 {
		t.Errorf("refusing a known forged token allocates %.0f times: it is verified again", allocs)
	}

	// Refused before any signature: a SYN relayed to another server.
	relayed := testConn
	relayed.Server = netip.AddrPortFrom(relayed.Server.Addr(), relayed.Server.Port()+1)
	fresh, _, err := ce.NewSYN(workload("ns", "fresh", 1), testConn)
	if err != nil {
		t.Fatal(err)
	}
	if !se.SYNNeedsVerification(fresh, testConn) || se.SYNNeedsVerification(fresh, relayed) {
		t.Error("a new token needs a verification where it was sent, and none relayed elsewhere")
	}

	// The genuine token is not affected by its forgery being remembered.
	if _, err := se.ConsumeSYN(syn, testConn); err != nil {
		t.Fatal(err)
	}
	if se.SYNNeedsVerification(withNewNonce(syn), testConn) {
		t.Error("a verified token needs another verification")
	}
}

// A token not yet valid is not remembered as bad: time cures it. An
// expired one is: a replayed old token then costs a datapath's
// verification budget once, not once per SYN.
func TestTimeRejectionsRemembered(t *testing.T) {
	f := newFixture(t, "cluster.local")
	clk := newClock()
	ce := newTestEngine(t, f.a, f.bundle, clk)
	se := newTestEngine(t, f.b, f.bundle, clk)
	syn, _, err := ce.NewSYN(workload("ns", "c", 1), testConn)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(-DefaultTokenLifetime) // the server's clock is far behind
	_, err = se.ConsumeSYN(syn, testConn)
	wantReason(t, err, ReasonNotYetValid)
	clk.Advance(DefaultTokenLifetime)
	if _, err := se.ConsumeSYN(withNewNonce(syn), testConn); err != nil {
		t.Fatalf("a token refused as not yet valid stays refused once valid: %v", err)
	}

	old, _, err := ce.NewSYN(workload("ns", "old", 1), testConn)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(DefaultTokenLifetime + time.Hour/2) // past exp + skew, within the certificates
	if se.SYNNeedsVerification(old, testConn) {     // se knows node-a's certificate
		t.Error("an expired token under a known certificate counts as a verification")
	}
	late := newTestEngine(t, f.b, f.bundle, clk) // has never seen the token
	_, err = late.ConsumeSYN(old, testConn)
	wantReason(t, err, ReasonExpired)
	if late.SYNNeedsVerification(withNewNonce(old), testConn) {
		t.Error("an expired token, refused once, still needs a verification")
	}
}

// VerifySYN checks the nonce but records it only on RecordNonce: a SYN the
// datapath then refuses (policy) leaves nothing in the replay cache, and
// is still refused as a replay once an accepted copy was recorded.
func TestNonceRecordedOnlyWhenAccepted(t *testing.T) {
	_, ce, se := newPair(t)
	syn, _, err := ce.NewSYN(workload("ns", "c", 1), testConn)
	if err != nil {
		t.Fatal(err)
	}
	denied, err := se.VerifySYN(syn, testConn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := denied.NewSYNACK(workload("ns", "s", 1), 1); err == nil {
		t.Fatal("NewSYNACK answered a SYN whose nonce was never recorded")
	}
	if n := se.replay.len(); n != 0 {
		t.Fatalf("VerifySYN recorded %d nonces", n)
	}
	accepted, err := se.VerifySYN(syn, testConn) // the same SYN, later allowed
	if err != nil {
		t.Fatalf("a SYN seen but never accepted is refused: %v", err)
	}
	if err := accepted.RecordNonce(); err != nil {
		t.Fatal(err)
	}
	if err := accepted.RecordNonce(); err != nil {
		t.Fatalf("RecordNonce again on the same handshake: %v", err)
	}
	if _, err := accepted.NewSYNACK(workload("ns", "s", 1), 1); err != nil {
		t.Fatal(err)
	}
	_, err = se.VerifySYN(syn, testConn)
	wantReason(t, err, ReasonReplayed)
	// A copy verified before the nonce was recorded (two copies of one
	// SYN handled at once) cannot be accepted too.
	wantReason(t, denied.RecordNonce(), ReasonReplayed)
}

// VerifySYNWithin asks its budget exactly when SYNNeedsVerification says
// a SYN needs a signature verification, and verifies nothing if refused.
func TestVerifySYNWithin(t *testing.T) {
	_, ce, se := newPair(t)
	syn, _, err := ce.NewSYN(workload("ns", "c", 10), testConn)
	if err != nil {
		t.Fatal(err)
	}
	asked := 0
	within := func(payload []byte, conn Endpoints, ok bool) (*ServerHandshake, bool, error) {
		t.Helper()
		want := se.SYNNeedsVerification(payload, conn)
		asked = 0
		sh, costly, err := se.VerifySYNWithin(payload, conn, func() bool { asked++; return ok })
		wantAsks := 0
		if want {
			wantAsks = 1
		}
		if costly != want || asked != wantAsks {
			t.Errorf("costly %v after %d asks, SYNNeedsVerification said %v", costly, asked, want)
		}
		return sh, costly, err
	}

	// Refused: nothing verified, nothing remembered.
	if _, costly, err := within(syn, testConn, false); !costly || !errors.Is(err, ErrNotAfforded) {
		t.Fatalf("unaffordable new token: costly %v, %v; want ErrNotAfforded", costly, err)
	}
	if !se.SYNNeedsVerification(syn, testConn) {
		t.Error("a token refused for the budget was remembered")
	}
	sh, costly, err := within(syn, testConn, true)
	if err != nil || !costly {
		t.Fatalf("affordable new token: costly %v, %v", costly, err)
	}
	if err := sh.RecordNonce(); err != nil {
		t.Fatal(err)
	}
	if _, costly, err := within(withNewNonce(syn), testConn, false); err != nil || costly {
		t.Errorf("verified token: costly %v, %v; want no verification asked", costly, err)
	}

	forged := forgeSignature(syn)
	_, _, err = within(forged, testConn, true)
	wantReason(t, err, ReasonBadSignature)
	_, costly, err = within(withNewNonce(forged), testConn, false)
	wantReason(t, err, ReasonBadSignature)
	if costly {
		t.Error("a token already found forged asked for a verification")
	}

	relayed := testConn
	relayed.Server = netip.AddrPortFrom(relayed.Server.Addr(), relayed.Server.Port()+1)
	_, costly, err = within(withNewNonce(syn), relayed, false)
	wantReason(t, err, ReasonEndpointMismatch)
	if costly {
		t.Error("a relayed SYN asked for a verification")
	}
}
