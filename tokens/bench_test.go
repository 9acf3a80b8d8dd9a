package tokens

import (
	"testing"
	"time"
)

// Benchmarks of the costs the datapath pays. Run:
//
//	go test -run '^$' -bench . -benchmem ./tokens

// BenchmarkSign: signing one identity token (once per identity per half
// lifetime, or after a label change or a rotation).
func BenchmarkSign(b *testing.B) {
	f := newFixture(b, "cluster.local")
	id := workload("frontend", "web-1", 10)
	id.Cluster = "cluster.local"
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		_, payload, sig, err := signClaims(claimsFor(id, "node-a", now, now.Add(5*time.Minute)), f.a.Key)
		if err != nil {
			b.Fatal(err)
		}
		_ = encodeToken(f.a.Cert.Raw, payload, sig)
	}
}

// BenchmarkVerifyCold: verifying a token never seen (certificate parse and
// chain, claims, signature).
func BenchmarkVerifyCold(b *testing.B) {
	f := newFixture(b, "cluster.local")
	e := newTestEngine(b, f.a, f.bundle, nil)
	syn, _, err := e.NewSYN(workload("frontend", "web-1", 10), testConn)
	if err != nil {
		b.Fatal(err)
	}
	m, err := parseSYN(syn)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.bundle.verifyToken(m.token.cert, m.token.payload, m.token.sig, now, time.Second); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyCached: ConsumeSYN of a known token with a fresh nonce
// (cache lookup, validity, replay check).
func BenchmarkVerifyCached(b *testing.B) {
	f := newFixture(b, "cluster.local")
	ce := newTestEngine(b, f.a, f.bundle, nil)
	se := newTestEngine(b, f.b, f.bundle, nil)
	syn, _, err := ce.NewSYN(workload("frontend", "web-1", 10), testConn)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := se.ConsumeSYN(syn, testConn); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		n := newNonce()
		copy(syn[1:], n[:]) // what a new SYN from the same workload looks like
		if _, err := se.ConsumeSYN(syn, testConn); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandshake runs both sides of the three-message handshake and
// reports, besides the total, the time spent in each side's calls.
func BenchmarkHandshake(b *testing.B) {
	b.Run("known-peer", func(b *testing.B) { benchHandshake(b, 0) })
	b.Run("new-workload-known-node", func(b *testing.B) { benchHandshake(b, forgetTokens) })
	b.Run("new-peer", func(b *testing.B) { benchHandshake(b, forgetTokens|forgetNodes) })
}

const (
	forgetTokens = 1 << iota // verify each peer token again
	forgetNodes              // verify each node certificate and run the ECDH again
)

func benchHandshake(b *testing.B, forget int) {
	f := newFixture(b, "cluster.local")
	ce := newTestEngine(b, f.a, f.bundle, nil)
	se := newTestEngine(b, f.b, f.bundle, nil)
	client, server := workload("frontend", "web-1", 10), workload("backend", "api-1", 10)
	handshake(b, ce, se, client, server) // warm the local token caches
	var clientTime, serverTime, forgetCPU time.Duration
	b.ReportAllocs()
	cpu0 := processCPU()
	for b.Loop() {
		if forget != 0 {
			b.StopTimer()
			f0 := processCPU()
			for _, e := range []*Engine{ce, se} {
				vf := e.verifier.Load()
				vf.peers = newByteCache[*peerToken](e.cacheMax)
				if forget&forgetNodes != 0 {
					vf.certs = newByteCache[*verifiedCert](e.cacheMax)
					e.keys.Load().secrets = newByteCache[*pairKey](e.cacheMax)
				}
			}
			forgetCPU += processCPU() - f0
			b.StartTimer()
		}
		t0 := time.Now()
		syn, ch, err := ce.NewSYN(client, testConn)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		sh, err := se.ConsumeSYN(syn, testConn)
		if err != nil {
			b.Fatal(err)
		}
		synack, err := sh.NewSYNACK(server, testServerISN)
		if err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if _, err := ch.ConsumeSYNACK(synack, testServerISN); err != nil {
			b.Fatal(err)
		}
		ack, err := ch.NewACK()
		if err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		if err := sh.ConsumeACK(ack); err != nil {
			b.Fatal(err)
		}
		t4 := time.Now()
		clientTime += t1.Sub(t0) + t3.Sub(t2)
		serverTime += t2.Sub(t1) + t4.Sub(t3)
	}
	// CPU time of both sides together, without the cache resets: on a
	// loaded machine this is the figure to read.
	b.ReportMetric(float64((processCPU()-cpu0-forgetCPU).Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(clientTime.Nanoseconds())/float64(b.N), "client-ns/op")
	b.ReportMetric(float64(serverTime.Nanoseconds())/float64(b.N), "server-ns/op")
}

// BenchmarkProofs: the per-connection symmetric crypto of one side (key
// expansion and both proofs).
func BenchmarkProofs(b *testing.B) {
	f := newFixture(b, "cluster.local")
	ka, _ := f.a.Key.ECDH()
	kb, _ := f.b.Key.ECDH()
	prk, err := newPairKey(ka, kb.PublicKey())
	if err != nil {
		b.Fatal(err)
	}
	nc, ns := newNonce(), newNonce()
	var hc, hs [32]byte
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := handshakeProofs(prk, &nc, &ns, &hc, &hs, &testConn, testServerISN); err != nil {
			b.Fatal(err)
		}
	}
}

// verifyToken verifies a whole token without any cache, as a SYN from a
// never-seen peer is.
func (b *TrustBundle) verifyToken(certDER, payload, sig []byte, now time.Time, skew time.Duration) (*verifiedToken, error) {
	vc, err := b.verifyCert(certDER, now, skew)
	if err != nil {
		return nil, err
	}
	return verifyClaims(vc, payload, sig, now, skew, 2*DefaultTokenLifetime)
}
