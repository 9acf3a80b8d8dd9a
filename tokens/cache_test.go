package tokens

import (
	"encoding/binary"
	"testing"
	"time"
)

func TestByteCacheBounded(t *testing.T) {
	now := time.Now()
	c := newByteCache[int](64)
	key := func(i int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(i)) }
	for i := 0; i < 1000; i++ {
		c.put(key(i), i, now.Add(time.Minute), now)
		if c.len() > 64 {
			t.Fatalf("cache holds %d entries, max 64", c.len())
		}
	}
	if v, ok := c.get(key(999), now); !ok || v != 999 {
		t.Fatal("the latest entry is missing")
	}
	if _, ok := c.get(key(999), now.Add(2*time.Minute)); ok {
		t.Fatal("an expired entry was returned")
	}
	c.put(key(5000), 1, time.Time{}, now)
	if _, ok := c.get(key(5000), now.Add(1000*time.Hour)); !ok {
		t.Fatal("an entry without expiry expired")
	}
}

func TestReplayCache(t *testing.T) {
	now := time.Now()
	r := newReplayCache(100, 10*time.Second, time.Now())
	n1, n2 := newNonce(), newNonce()
	exp := now.Add(time.Minute)
	if r.check(n1, exp, now) {
		t.Fatal("a new nonce reported as replayed")
	}
	if !r.check(n1, exp, now.Add(30*time.Second)) {
		t.Fatal("a nonce seen within its token's lifetime was accepted")
	}
	if r.check(n2, exp, now) {
		t.Fatal("a second new nonce reported as replayed")
	}
	// Once the token expired the nonce is forgotten (the token itself is rejected).
	if r.check(n1, exp.Add(time.Minute), exp.Add(11*time.Second)) {
		t.Fatal("a nonce was remembered past its token's expiry")
	}
	// Bounded: a flood of nonces never holds more than max.
	for i := 0; i < 10000; i++ {
		r.check(newNonce(), now.Add(time.Duration(i%300)*time.Second), now)
		if r.len() > 100 {
			t.Fatalf("replay cache holds %d nonces, max 100", r.len())
		}
	}
	// The nonces kept are the latest-expiring ones: a fresh nonce is still caught.
	n3 := newNonce()
	r.check(n3, now.Add(10*time.Minute), now)
	if !r.check(n3, now.Add(10*time.Minute), now) {
		t.Fatal("a fresh nonce was forgotten")
	}
}

// The engine's replay cache stays bounded under a flood of SYNs.
func TestEngineReplayBound(t *testing.T) {
	f := newFixture(t, "cluster.local")
	ce := newTestEngine(t, f.a, f.bundle, nil)
	se, err := NewEngine(Config{Credentials: f.b, Trust: f.bundle, ReplayCacheSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	syn, _, err := ce.NewSYN(workload("ns", "c", 1), testConn)
	if err != nil {
		t.Fatal(err)
	}
	var last []byte
	for i := 0; i < 500; i++ {
		last = withNewNonce(syn)
		if _, err := se.ConsumeSYN(last, testConn); err != nil {
			t.Fatal(err)
		}
	}
	if n := se.replay.len(); n > 50 {
		t.Fatalf("replay cache holds %d nonces, max 50", n)
	}
	// Bounded, not disabled: the newest nonce is still remembered (an empty
	// cache would pass the bound above).
	_, err = se.ConsumeSYN(last, testConn)
	wantReason(t, err, ReasonReplayed)
}

// Far-future expiries (a token capped only by a long-lived certificate) are
// remembered, not lost to an overflow.
func TestReplayCacheFarFuture(t *testing.T) {
	now := time.Now()
	r := newReplayCache(10, time.Minute, time.Now())
	n := newNonce()
	far := time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
	if r.check(n, far, now) || !r.check(n, far, now.Add(time.Hour)) {
		t.Fatal("a nonce with a far-future expiry was not remembered")
	}
}
