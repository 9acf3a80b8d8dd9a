package enforcer

import (
	"bytes"
	"encoding/binary"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket/layers"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/policy"
)

// Tests of what bounds a handshake (issue 11): no data before the proof,
// checksums checked before use, and what a flood of SYNs may cost.

// withToken returns orig (a SYN or SYN-ACK, perhaps with data) carrying
// the token the enforcer put in carrier, as a forger copying a captured
// token into a packet of its own would send it.
func withToken(t *testing.T, orig, carrier []byte) []byte {
	t.Helper()
	var c, o packet
	if err := parsePacket(carrier, &c); err != nil || c.token() == nil {
		t.Fatalf("carrier has no token: %v", err)
	}
	if err := parsePacket(orig, &o); err != nil {
		t.Fatal(err)
	}
	out, err := o.insertToken(make([]byte, 0x10000), c.token(), 0xffff)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// hasFastOpen reports whether the TCP options of pkt hold a Fast Open option.
func hasFastOpen(t *testing.T, pkt []byte) bool {
	t.Helper()
	var p packet
	if err := parsePacket(pkt, &p); err != nil {
		t.Fatal(err)
	}
	opts := p.options()
	for i := 0; i < len(opts) && opts[i] != 0; {
		if opts[i] == 1 {
			i++
			continue
		}
		if isFastOpen(opts[i : i+int(opts[i+1])]) {
			return true
		}
		i += int(opts[i+1])
	}
	return false
}

func payloadOf(t *testing.T, pkt []byte) []byte {
	t.Helper()
	var p packet
	if err := parsePacket(pkt, &p); err != nil {
		t.Fatal(err)
	}
	return p.payload()
}

// Data behind a token (TCP Fast Open, or a forger's) never reaches the
// peer's kernel: the SYN or SYN-ACK passes without it and without a Fast
// Open option, so no socket gets data, or exists, before the proof.
func TestNoDataBeforeProof(t *testing.T) {
	data := []byte("GET /secret HTTP/1.1\r\n")
	cookie := layers.TCPOption{OptionType: 34, OptionLength: 10, OptionData: []byte{1, 2, 3, 4, 5, 6, 7, 8}}
	expCookie := layers.TCPOption{OptionType: 254, OptionLength: 12,
		OptionData: append(binary.BigEndian.AppendUint16(nil, exidFastOpen), 1, 2, 3, 4, 5, 6, 7, 8)}
	tfo := func(opt layers.TCPOption) []layers.TCPOption {
		return []layers.TCPOption{linuxSYNOptions[0], linuxSYNOptions[1], opt}
	}
	for _, tc := range []struct {
		name string
		opts []layers.TCPOption
	}{
		{"data", linuxSYNOptions},
		{"data and a Fast Open cookie", tfo(cookie)},
		{"data and an experimental Fast Open cookie", tfo(expCookie)},
	} {
		t.Run("SYN with "+tc.name, func(t *testing.T) {
			p := newPair(t, 0)
			honest := pass(p.cli, seg(t, true, 7, true, false, nil, nil), true)
			forged := withToken(t, seg(t, true, 7, true, false, tc.opts, data), honest.packet)
			w := pass(p.srv, forged, false)
			if !w.accept {
				t.Fatalf("the SYN was refused: %s", p.flows.String())
			}
			out := w.or(forged)
			if got := payloadOf(t, out); len(got) != 0 {
				t.Errorf("the server's kernel gets %q in the SYN", got)
			}
			if hasFastOpen(t, out) {
				t.Error("the server's kernel gets a Fast Open option")
			}
		})
	}
	t.Run("SYN-ACK with data", func(t *testing.T) {
		p := newPair(t, 0)
		v := pass(p.cli, seg(t, true, 8, true, false, linuxSYNOptions, nil), true)
		pass(p.srv, v.packet, false)
		honest := pass(p.srv, seg(t, false, 8, true, true, linuxSYNOptions, nil), true)
		forged := withToken(t, seg(t, false, 8, true, true, tfo(cookie), data), honest.packet)
		w := pass(p.cli, forged, false)
		if !w.accept {
			t.Fatalf("the SYN-ACK was refused: %s", p.flows.String())
		}
		if got := payloadOf(t, w.or(forged)); len(got) != 0 {
			t.Errorf("the client's kernel gets %q in the SYN-ACK", got)
		}
		if hasFastOpen(t, w.or(forged)) {
			t.Error("the client's kernel gets a Fast Open option")
		}
	})
	t.Run("SYN without token keeps its data", func(t *testing.T) {
		// A peer without enforcer is decided by address at once (no proof
		// will follow), as plain TCP: nothing to strip.
		p := newPair(t, 0)
		syn := segBetween(t, []byte{198, 18, 0, 9}, []byte{198, 18, 0, 2}, 9, 80, true, false)
		if w := pass(p.srv, syn, false); !w.accept || !bytes.Equal(w.or(syn), syn) {
			t.Fatalf("tokenless SYN: %+v", w)
		}
	})
}

// corruptOption changes a byte of the TCP options of pkt (the window
// scale of linuxSYNOptions, or a timestamp) and leaves the checksum as it
// was: corruption on the path, or a forger's careless packet.
func corruptOption(t *testing.T, pkt []byte) {
	t.Helper()
	var p packet
	if err := parsePacket(pkt, &p); err != nil {
		t.Fatal(err)
	}
	pkt[p.payloadOff()-1] ^= 0x04
}

// An incoming handshake packet with a wrong TCP checksum is dropped before
// its token or proof is used: rewritten, it would get a right checksum and
// the kernel would take the corrupted header.
func TestBadChecksumDropped(t *testing.T) {
	p := newPair(t, 0)
	onlyOneBulkRecord(p)
	syn := pass(p.cli, seg(t, true, 11, true, false, linuxSYNOptions, nil), true)
	bad := append([]byte(nil), syn.packet...)
	corruptOption(t, bad)
	if w := pass(p.srv, bad, false); w.accept {
		t.Fatalf("SYN with a bad checksum accepted: %+v", w)
	}
	// The same SYN intact is accepted: the drop was the checksum's.
	if w := pass(p.srv, syn.packet, false); !w.accept {
		t.Fatalf("intact SYN refused: %s", p.flows.String())
	}
	sa := pass(p.srv, seg(t, false, 11, true, true, linuxSYNOptions, nil), true)
	badSA := append([]byte(nil), sa.packet...)
	corruptOption(t, badSA)
	if w := pass(p.cli, badSA, false); w.accept {
		t.Fatalf("SYN-ACK with a bad checksum accepted: %+v", w)
	}
	pass(p.cli, sa.packet, false)
	ack := pass(p.cli, seg(t, true, 11, false, true, linuxACKOptions, nil), true)
	badACK := append([]byte(nil), ack.packet...)
	corruptOption(t, badACK)
	if w := pass(p.srv, badACK, false); w.accept || w.authorize {
		t.Fatalf("ACK with a bad checksum accepted: %+v", w)
	}
	if w := pass(p.srv, ack.packet, false); !authorizedAfter(w) {
		t.Fatalf("intact ACK: %+v", w)
	}
	if n := p.e.BulkDrops().BadChecksum; n != 3 {
		t.Errorf("BulkDrops().BadChecksum = %d, want 3", n)
	}
	var recorded int
	for _, r := range p.flows.records(t) {
		if strings.Contains(r.Reason, "bad TCP checksum") {
			recorded++
		}
	}
	if recorded != 1 {
		t.Errorf("%d bad-checksum records, want 1 (rate-limited)", recorded)
	}
}

func TestTCPChecksumOK(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		// An odd payload length exercises the padding of the last byte.
		pkt := buildTCP(t, v6, true, false, linuxSYNOptions, []byte("odd"))
		var p packet
		if err := parsePacket(pkt, &p); err != nil {
			t.Fatal(err)
		}
		if !p.tcpChecksumOK() {
			t.Fatalf("v6=%v: gopacket's checksum found wrong", v6)
		}
		// Any single flipped bit of the addresses (the pseudo-header) or
		// of the segment is seen.
		addrs := [2]int{12, 20}
		if v6 {
			addrs = [2]int{8, 40}
		}
		for i := range pkt {
			if (i < addrs[0] || i >= addrs[1]) && i < p.tcpOff {
				continue
			}
			pkt[i] ^= 0x10
			var q packet
			if parsePacket(pkt, &q) == nil && q.tcpChecksumOK() {
				t.Errorf("v6=%v: bit flipped at byte %d not detected", v6, i)
			}
			pkt[i] ^= 0x10
		}
	}
}

// switchDecider allows ingress from every identity once allow is set.
type switchDecider struct{ allow atomic.Bool }

func (d *switchDecider) Decide(local *identity.Identity, peer policy.Peer, dir policy.Direction, port uint16, proto string) policy.Decision {
	return policy.Decision{Allowed: d.allow.Load(), Reason: "switch"}
}

// A SYN that policy refuses leaves its nonce unrecorded: denied
// identities cannot churn the replay cache. The check itself still comes
// first: once a copy was accepted, the same SYN is a replay.
func TestDeniedSYNDoesNotRecordNonce(t *testing.T) {
	p := newPair(t, 0)
	d := &switchDecider{}
	p.e.cfg.Policy = d
	syn := pass(p.cli, seg(t, true, 12, true, false, linuxSYNOptions, nil), true)
	if w := pass(p.srv, syn.packet, false); w.accept {
		t.Fatal("SYN accepted while policy denies")
	}
	d.allow.Store(true)
	if w := pass(p.srv, syn.packet, false); !w.accept {
		t.Fatalf("the same SYN, now allowed, is refused: %s", p.flows.String())
	}
	if w := pass(p.srv, syn.packet, false); w.accept {
		t.Fatal("a SYN accepted before is accepted again (replay)")
	}
	if rs := p.flows.records(t); len(rs) == 0 || rs[len(rs)-1].TokenError != "replayed-nonce" {
		t.Errorf("last record: %+v, want replayed-nonce", rs[len(rs)-1])
	}
}

// synAs returns a SYN from client port sport sent by p.cli as pod: each
// pod has its own token, new to the server.
func synAs(t *testing.T, p *pair, pod string, sport uint16) []byte {
	t.Helper()
	p.cli.wl.id.Store(&identity.Identity{Namespace: "t", Pod: pod, Labels: map[string]string{"app": "client"}})
	v := pass(p.cli, seg(t, true, sport, true, false, linuxSYNOptions, nil), true)
	if v.packet == nil {
		t.Fatal("client SYN refused")
	}
	return v.packet
}

// forgeTokenSignature flips a bit of the token signature in syn (a packet
// with a token), fixing the checksum as a forger would.
func forgeTokenSignature(t *testing.T, syn []byte) []byte {
	t.Helper()
	out := append([]byte(nil), syn...)
	var p packet
	if err := parsePacket(out, &p); err != nil {
		t.Fatal(err)
	}
	out[p.payloadOff()+p.tokenLen-1] ^= 1
	setTCPChecksum(out, p.v6, p.tcpOff)
	return out
}

// No refill happens within a test: the budgets below are their bursts.
const noRefill = 1e-9

// onlyOneBulkRecord limits p's records of each kind of bulk drop to one,
// so a test sees the limit without depending on time.
func onlyOneBulkRecord(p *pair) {
	p.e.bulk.rate, p.e.bulk.burst = noRefill, 1
}

// SYNs whose token is new to the node are charged to the verification
// budget; known tokens, good or forged, are not.
func TestVerifyBudget(t *testing.T) {
	t.Run("node", func(t *testing.T) {
		p := newPairWith(t, Config{VerifyBudget: VerifyBudget{NodeRate: noRefill, NodeBurst: 3, SourceRate: noRefill, SourceBurst: 100}}, true)
		onlyOneBulkRecord(p)
		accept := func(syn []byte) bool { return pass(p.srv, syn, false).accept }
		first := synAs(t, p, "c1", 1)
		if !accept(first) { // charged: 1
			t.Fatal("first SYN refused")
		}
		forged := forgeTokenSignature(t, synAs(t, p, "c2", 2))
		if accept(forged) { // charged: 2
			t.Fatal("forged SYN accepted")
		}
		if accept(forgeTokenSignature(t, synAs(t, p, "c2", 3))) { // the same forged token, new nonce: free
			t.Fatal("forged SYN accepted")
		}
		if !accept(synAs(t, p, "c1", 4)) { // c1's token again: free
			t.Fatal("known token refused")
		}
		if !accept(synAs(t, p, "c3", 5)) { // charged: 3
			t.Fatalf("third new token refused: %s", p.flows.String())
		}
		for port := uint16(6); port < 10; port++ {
			if accept(synAs(t, p, "c4", port)) {
				t.Fatal("new token accepted over the node's budget")
			}
		}
		if !accept(synAs(t, p, "c1", 10)) {
			t.Fatal("known token refused over budget")
		}
		if got := p.e.BulkDrops(); got.OverNodeBudget != 4 || got.OverSourceBudget != 0 || got.KnownBadToken != 1 {
			t.Errorf("BulkDrops = %+v, want 4 over the node budget and 1 known forged token", got)
		}
		var recorded []flowlog.Record
		for _, r := range p.flows.records(t) {
			if strings.Contains(r.Reason, "verification budget") {
				recorded = append(recorded, r)
			}
		}
		if len(recorded) != 1 || !strings.Contains(recorded[0].Reason, "of the node") || recorded[0].Verdict != flowlog.Deny {
			t.Errorf("budget records %+v, want one (rate-limited) naming the node", recorded)
		}
	})
	t.Run("source", func(t *testing.T) {
		p := newPairWith(t, Config{VerifyBudget: VerifyBudget{NodeRate: noRefill, NodeBurst: 100, SourceRate: noRefill, SourceBurst: 1}}, true)
		if w := pass(p.srv, synAs(t, p, "c1", 1), false); !w.accept {
			t.Fatal("first SYN refused")
		}
		if w := pass(p.srv, synAs(t, p, "c2", 2), false); w.accept {
			t.Fatal("second new token from one source accepted over its budget")
		}
		// A SYN the client sends from a second address.
		other := pass(p.cli, segBetween(t, []byte{198, 18, 0, 3}, []byte{198, 18, 0, 2}, 3, 80, true, false), true).packet
		if w := pass(p.srv, other, false); !w.accept {
			t.Fatalf("another source refused: %s", p.flows.String())
		}
		if got := p.e.BulkDrops(); got.OverSourceBudget != 1 || got.OverNodeBudget != 0 {
			t.Errorf("BulkDrops = %+v, want 1 over a source budget", got)
		}
	})
}

// The handshakes of all workloads together are bounded too.
func TestNodeHandshakeCap(t *testing.T) {
	p := newPairWith(t, Config{MaxHandshakes: 3, MaxNodeHandshakes: 4}, true)
	var syns [][]byte
	for port := uint16(1); port <= 3; port++ {
		syns = append(syns, pass(p.cli, seg(t, true, port, true, false, linuxSYNOptions, nil), true).packet)
	}
	if w := pass(p.srv, syns[0], false); !w.accept {
		t.Fatalf("server's first handshake refused: %s", p.flows.String())
	}
	// The server holds one handshake of its three, the node four of four.
	if w := pass(p.srv, syns[1], false); w.accept {
		t.Fatal("a handshake over the node's cap accepted")
	}
	if rs := p.flows.records(t); !strings.Contains(rs[len(rs)-1].Reason, "too many handshakes in progress") {
		t.Errorf("last record %+v, want the refusal", rs[len(rs)-1])
	}
	later := time.Now().Add(p.e.cfg.HandshakeTimeout + time.Second)
	p.e.expire(p.cli.wl, later)
	if w := pass(p.srv, syns[2], false); !w.accept {
		t.Fatalf("expired handshakes still count against the node: %s", p.flows.String())
	}
	p.srv.wl.conns.forgetAll()
	if n := p.e.handshakes.n.Load(); n != 0 {
		t.Errorf("node count %d after every table emptied, want 0", n)
	}
}
