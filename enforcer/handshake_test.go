package enforcer

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

// labelDecider allows ingress from peers labelled app=client, egress to
// peers labelled app=web, and any peer without identity at 198.18.0.9 (the
// shape of an ipBlock rule). It
// exists only to drive the state machine without the policy package's
// fixtures; the namespace tests use the real policy engine.
type labelDecider struct{}

func (labelDecider) Decide(local *identity.Identity, peer policy.Peer, dir policy.Direction, port uint16, proto string) policy.Decision {
	if peer.Identity == nil {
		ok := peer.Addr == netip.MustParseAddr("198.18.0.9")
		return policy.Decision{Allowed: ok, Reason: "ipBlock"}
	}
	want := "client"
	if dir == policy.Egress {
		want = "web"
	}
	ok := peer.Identity.Labels["app"] == want
	return policy.Decision{Allowed: ok, Policy: "t/p", Reason: "label"}
}

// pair is a client and a server workload served by one Enforcer, fed
// synthetic packets: no kernel involved.
type pair struct {
	e        *Enforcer
	cli, srv *queue
	flows    *syncBuffer
}

// newTokenEngine is a tokens engine for node, signed by a fresh CA named
// ca that it alone trusts.
func newTokenEngine(t testing.TB, ca, node string) *tokens.Engine {
	t.Helper()
	authority, err := tokens.NewCA(ca, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := authority.IssueNode(node, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := tokens.NewTrustBundle(authority.Cert)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := tokens.NewEngine(tokens.Config{Credentials: creds, Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

func newPair(t *testing.T, maxHandshakes int) *pair {
	return newPairWith(t, Config{MaxHandshakes: maxHandshakes}, true)
}

// newPairWith is newPair with cfg's optional fields; withFlows says
// whether flow records are written (to pair.flows).
func newPairWith(t *testing.T, cfg Config, withFlows bool) *pair {
	cfg.Node, cfg.Policy = "n1", labelDecider{}
	if cfg.Tokens == nil {
		cfg.Tokens = newTokenEngine(t, "unit", "n1")
	}
	if cfg.Placement == nil {
		cfg.Placement = everyPodOn("n1") // the pair's one engine signs as n1 for every pod
	}
	flows := &syncBuffer{}
	if withFlows {
		cfg.Flows = flowlog.NewWriter(flows)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	flows.flush = e.flows.flush
	mk := func(pod, app string) *queue {
		wl := &workload{netns: pod, conns: newConnTable(e.cfg.MaxHandshakes, e.handshakes)}
		wl.id.Store(&identity.Identity{Namespace: "t", Pod: pod, Labels: map[string]string{"app": app}})
		return &queue{e: e, wl: wl, buf: make([]byte, 0x10000+tokenOptSpace)}
	}
	return &pair{e: e, cli: mk("cli", "client"), srv: mk("srv", "web"), flows: flows}
}

// seg builds a TCP segment between 198.18.0.1:sport (client) and
// 198.18.0.2:80 (server); toServer chooses the direction.
func seg(t testing.TB, toServer bool, sport uint16, syn, ack bool, opts []layers.TCPOption, payload []byte) []byte {
	t.Helper()
	c, s := net.IPv4(198, 18, 0, 1), net.IPv4(198, 18, 0, 2)
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: 80, Seq: 100, Ack: 200, SYN: syn, ACK: ack, Window: 1000, Options: opts}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: c, DstIP: s}
	if !toServer {
		tcp.SrcPort, tcp.DstPort = 80, layers.TCPPort(sport)
		ip.SrcIP, ip.DstIP = s, c
	}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// segBetween builds a segment from src:sport to dst:dport with Linux's
// SYN options.
func segBetween(t testing.TB, src, dst net.IP, sport, dport uint16, syn, ack bool) []byte {
	t.Helper()
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 1, Ack: 2, SYN: syn, ACK: ack, Window: 1000, Options: linuxSYNOptions}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src, DstIP: dst}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pass runs b through q and returns the verdict, with the packet copied
// out of q's scratch buffer.
func pass(q *queue, b []byte, outgoing bool) verdict {
	v := q.process(b, outgoing)
	if v.packet != nil {
		v.packet = append([]byte(nil), v.packet...)
	}
	return v
}

func (v verdict) or(orig []byte) []byte {
	if v.packet != nil {
		return v.packet
	}
	return orig
}

func TestHandshakeStates(t *testing.T) {
	auth, pending := marks.DefaultAuthorized, marks.DefaultPending
	syn := func(sport uint16) []byte { return seg(t, true, sport, true, false, linuxSYNOptions, nil) }
	synack := func(sport uint16) []byte { return seg(t, false, sport, true, true, linuxSYNOptions, nil) }
	ackPkt := func(sport uint16) []byte { return seg(t, true, sport, false, true, linuxACKOptions, nil) }

	t.Run("full handshake, kernels never see a token", func(t *testing.T) {
		p := newPair(t, 0)
		v := pass(p.cli, syn(1), true)
		if !v.accept || v.packet == nil {
			t.Fatalf("client SYN: %+v", v)
		}
		w := pass(p.srv, v.packet, false)
		if !w.accept || !bytes.Equal(w.or(v.packet), syn(1)) {
			t.Fatalf("server did not get the original SYN back: %+v", w)
		}
		v = pass(p.srv, synack(1), true)
		if !v.accept || v.mark != pending || v.packet == nil {
			t.Fatalf("server SYN-ACK: %+v", v)
		}
		w = pass(p.cli, v.packet, false)
		if !w.accept || w.mark != pending || !bytes.Equal(w.or(v.packet), synack(1)) {
			t.Fatalf("client SYN-ACK: %+v", w)
		}
		v = pass(p.cli, ackPkt(1), true)
		if !v.accept || v.packet == nil || v.mark != auth {
			t.Fatalf("client ACK: %+v", v)
		}
		w = pass(p.srv, v.packet, false)
		if !w.accept || !authorizedAfter(w) || !bytes.Equal(w.or(v.packet), ackPkt(1)) {
			t.Fatalf("server ACK: %+v", w)
		}
		// A data packet queued behind the ACK passes, stripped.
		d := seg(t, true, 1, false, true, linuxACKOptions, []byte("data"))
		v = pass(p.cli, d, true)
		w = pass(p.srv, v.or(d), false)
		if !w.accept || !bytes.Equal(w.or(v.or(d)), d) {
			t.Errorf("data after ACK: %+v", w)
		}
	})

	t.Run("data that overtakes the proof ACK waits for it", func(t *testing.T) {
		p := newPair(t, 0)
		ackv := p.proofACK(t, 5)
		// The server's own bytes cannot leave before the proof.
		out := seg(t, false, 5, false, true, linuxACKOptions, []byte("hello"))
		if w := pass(p.srv, out, true); w.accept {
			t.Fatalf("server data before the proof: %+v, want drop", w)
		}
		// The client's first data, already Authorized on the client,
		// reaches the server before the ACK with the proof.
		d := seg(t, true, 5, false, true, linuxACKOptions, []byte("data"))
		w := pass(p.srv, d, false)
		if w.accept || !w.hold || w.key.remote.Port() != 5 {
			t.Fatalf("early data: %+v, want held for the handshake", w)
		}
		if w = pass(p.srv, ackv.packet, false); !w.accept || !authorizedAfter(w) || w.key.remote.Port() != 5 {
			t.Fatalf("proof ACK after the data: %+v", w)
		}
		if w = pass(p.srv, out, true); !w.accept || w.mark != auth {
			t.Fatalf("server data after the proof: %+v, want accept, Authorized", w)
		}
	})

	t.Run("held data is dropped with a rejected proof", func(t *testing.T) {
		p := newPair(t, 0)
		ackv := p.proofACK(t, 6)
		if w := pass(p.srv, seg(t, true, 6, false, true, linuxACKOptions, []byte("data")), false); !w.hold {
			t.Fatalf("early data: %+v, want held", w)
		}
		tamperProof(t, ackv.packet)
		if w := pass(p.srv, ackv.packet, false); w.accept || !w.dropHeld || w.key.remote.Port() != 6 {
			t.Fatalf("forged proof: %+v, want drop with the held packets", w)
		}
	})

	t.Run("SYN retransmission: SYN-ACK to the first SYN still completes", func(t *testing.T) {
		p := newPair(t, 0)
		first := pass(p.cli, syn(2), true)
		second := pass(p.cli, syn(2), true)
		if bytes.Equal(first.packet, second.packet) {
			t.Fatal("retransmitted SYN reused the nonce")
		}
		if w := pass(p.srv, first.packet, false); !w.accept {
			t.Fatal("server refused first SYN")
		}
		sa := pass(p.srv, synack(2), true)
		if w := pass(p.cli, sa.packet, false); !w.accept {
			t.Fatalf("client refused SYN-ACK answering its first SYN: %s", p.flows.String())
		}
		// The second SYN reaching the server later is a new handshake
		// that replaces the first; its SYN-ACK also verifies at the client
		// (the retransmission of the SYN-ACK path).
		if w := pass(p.srv, second.packet, false); !w.accept {
			t.Fatal("server refused second SYN")
		}
	})

	t.Run("lost ACK: retransmitted SYN-ACK, ACK again", func(t *testing.T) {
		p := newPair(t, 0)
		v := pass(p.cli, syn(3), true)
		pass(p.srv, v.packet, false)
		sa := pass(p.srv, synack(3), true)
		pass(p.cli, sa.packet, false)
		pass(p.cli, ackPkt(3), true) // lost
		// Server data without proof is not accepted.
		if w := pass(p.srv, seg(t, true, 3, false, true, linuxACKOptions, []byte("x")), false); w.accept {
			t.Error("server accepted a packet without proof before the handshake completed")
		}
		sa2 := pass(p.srv, synack(3), true)
		if !bytes.Equal(sa2.packet, sa.packet) {
			t.Error("retransmitted SYN-ACK carries different bytes")
		}
		if w := pass(p.cli, sa2.packet, false); !w.accept || w.mark != pending || !bytes.Equal(w.or(sa2.packet), synack(3)) {
			t.Fatalf("client must accept the retransmitted SYN-ACK and go back to Pending: %+v", w)
		}
		v = pass(p.cli, ackPkt(3), true)
		if w := pass(p.srv, v.packet, false); !w.accept || !authorizedAfter(w) {
			t.Fatalf("second ACK: %+v", w)
		}
	})

	t.Run("tampered proof is refused with a typed reason", func(t *testing.T) {
		p := newPair(t, 0)
		v := p.proofACK(t, 4)
		tamperProof(t, v.packet)
		if w := pass(p.srv, v.packet, false); w.accept {
			t.Fatal("tampered proof accepted")
		}
		r := findRecord(p.flows.records(t), "ingress", "ack", "deny")
		if r == nil || r.TokenError != string(tokens.ReasonBadProof) {
			t.Errorf("record: %+v", r)
		}
	})

	t.Run("tampered or missing SYN token", func(t *testing.T) {
		p := newPair(t, 0)
		v := pass(p.cli, syn(5), true)
		var q packet
		if err := parsePacket(v.packet, &q); err != nil {
			t.Fatal(err)
		}
		tok := q.token()
		tok[len(tok)/2] ^= 0x20
		setTCPChecksum(v.packet, false, q.tcpOff)
		if w := pass(p.srv, v.packet, false); w.accept {
			t.Fatal("tampered token accepted")
		}
		if r := findRecord(p.flows.records(t), "ingress", "syn", "deny"); r == nil || r.TokenError == "" {
			t.Errorf("record: %+v", r)
		}
		// No token at all, from an address no ipBlock allows.
		if w := pass(p.srv, syn(6), false); w.accept {
			t.Error("SYN without token from 198.18.0.1 accepted")
		}
	})

	t.Run("replayed SYN is refused", func(t *testing.T) {
		p := newPair(t, 0)
		v := pass(p.cli, syn(20), true)
		if w := pass(p.srv, v.packet, false); !w.accept {
			t.Fatal("first SYN refused")
		}
		if w := pass(p.srv, v.packet, false); w.accept {
			t.Fatal("replayed SYN accepted")
		}
		if r := findRecord(p.flows.records(t), "ingress", "syn", "deny"); r == nil || r.TokenError != string(tokens.ReasonReplayed) {
			t.Errorf("record: %+v", r)
		}
	})

	t.Run("token from a CA the server does not trust", func(t *testing.T) {
		p := newPair(t, 0)
		rogue := newPair(t, 0) // its own CA
		v := pass(rogue.cli, syn(21), true)
		if w := pass(p.srv, v.packet, false); w.accept {
			t.Fatal("token of an untrusted CA accepted")
		}
		if r := findRecord(p.flows.records(t), "ingress", "syn", "deny"); r == nil || r.TokenError != string(tokens.ReasonUnknownCA) {
			t.Errorf("record: %+v", r)
		}
	})

	t.Run("token that would exceed the path MTU fails the connection with a record", func(t *testing.T) {
		p := newPair(t, 0)
		p.e.cfg.MaxPacket = 300
		if v := pass(p.cli, syn(22), true); v.accept {
			t.Fatal("oversized SYN sent")
		}
		r := findRecord(p.flows.records(t), "egress", "syn", "deny")
		if r == nil || !strings.Contains(r.Reason, "does not fit") {
			t.Errorf("record: %+v", r)
		}
	})

	t.Run("Fast Open data in a SYN is left for the kernel to resend", func(t *testing.T) {
		p := newPair(t, 0)
		tfo := seg(t, true, 23, true, false, linuxSYNOptions, []byte("GET / HTTP/1.1\r\n"))
		v := pass(p.cli, tfo, true)
		if !v.accept {
			t.Fatal("TFO SYN refused")
		}
		w := pass(p.srv, v.packet, false)
		if !w.accept || !bytes.Equal(w.or(v.packet), syn(23)) {
			t.Errorf("server kernel should get the SYN without its data: %+v", w)
		}
	})

	t.Run("server without enforcer: egress allowed only by ipBlock", func(t *testing.T) {
		p := newPair(t, 0)
		for _, tc := range []struct {
			server string
			allow  bool
		}{{"198.18.0.9", true}, {"198.18.0.2", false}} {
			srv := net.ParseIP(tc.server)
			c := net.IPv4(198, 18, 0, 1)
			out := segBetween(t, c, srv, 30, 80, true, false)
			if v := pass(p.cli, out, true); !v.accept {
				t.Fatal("SYN refused")
			}
			w := pass(p.cli, segBetween(t, srv, c, 80, 30, true, true), false) // no token
			if w.accept != tc.allow || (tc.allow && w.mark != auth) {
				t.Errorf("tokenless SYN-ACK from %s: %+v, want allow=%v and Authorized", tc.server, w, tc.allow)
			}
		}
	})

	t.Run("unsolicited SYN-ACK and ACK are dropped", func(t *testing.T) {
		p := newPair(t, 0)
		if w := pass(p.cli, synack(7), false); w.accept {
			t.Error("client accepted a SYN-ACK it never asked for")
		}
		if w := pass(p.srv, ackPkt(7), false); w.accept {
			t.Error("server accepted an ACK with no handshake")
		}
		if v := pass(p.srv, synack(7), true); v.accept {
			t.Error("server sent a SYN-ACK for a SYN it never allowed")
		}
	})

	t.Run("half-open handshakes expire and the table is bounded", func(t *testing.T) {
		p := newPair(t, 2)
		for _, port := range []uint16{10, 11} {
			if v := pass(p.cli, syn(port), true); !v.accept {
				t.Fatal("SYN refused")
			}
		}
		if v := pass(p.cli, syn(12), true); v.accept {
			t.Error("SYN beyond MaxHandshakes accepted")
		}
		p.cli.wl.conns.expire(time.Now().Add(p.e.cfg.HandshakeTimeout + time.Second))
		if n := p.cli.wl.conns.len(); n != 0 {
			t.Errorf("%d handshakes left after expiry", n)
		}
		if v := pass(p.cli, syn(12), true); !v.accept {
			t.Error("SYN refused after expiry freed room")
		}
	})

	t.Run("garbage never panics and is dropped", func(t *testing.T) {
		p := newPair(t, 0)
		for _, b := range [][]byte{nil, {0x45}, bytes.Repeat([]byte{0x60}, 60), syn(1)[:30]} {
			for _, out := range []bool{true, false} {
				if v := pass(p.srv, b, out); v.accept {
					t.Errorf("accepted garbage %x", b)
				}
			}
		}
	})
}

// BenchmarkHandshakeProcess is the enforcer's own work for one connection
// with a known peer, both sides: the six handshake packets through
// process (parse, tokens, policy, flow records, rewrite), without the
// kernel and the queue round trips.
func BenchmarkHandshakeProcess(b *testing.B) {
	t := &testing.T{}
	p := newPair(t, 0)
	p.e.cfg.Flows = flowlog.NewWriter(io.Discard)
	p.e.flows = newFlowQueue(b.Context(), p.e.cfg.Flows, p.e.log)
	syn := seg(b, true, 1, true, false, linuxSYNOptions, nil)
	synack := seg(b, false, 1, true, true, linuxSYNOptions, nil)
	ack := seg(b, true, 1, false, true, linuxACKOptions, nil)
	b.ReportAllocs()
	for b.Loop() {
		v := p.cli.process(syn, true)
		p.srv.process(v.packet, false)
		v = p.srv.process(synack, true)
		p.cli.process(v.packet, false)
		v = p.cli.process(ack, true)
		if w := p.srv.process(v.packet, false); !authorizedAfter(w) {
			b.Fatal("handshake did not complete")
		}
	}
}

// FuzzProcess sends arbitrary bytes, as either direction, to both sides
// of a pair in the middle of a handshake (client SYN sent and accepted by
// the server): no input may panic, and no single packet may authorize a
// connection (the only tokenless peer policy allows is 198.18.0.9, which
// has no handshake in progress).
func FuzzProcess(f *testing.F) {
	t := &testing.T{}
	p := newPair(t, 0)
	p.e.cfg.Flows = flowlog.NewWriter(io.Discard) // records of millions of inputs
	synBytes := seg(f, true, 1, true, false, linuxSYNOptions, nil)
	v := p.cli.process(synBytes, true)
	f.Add(append([]byte(nil), v.packet...), false)
	f.Add(seg(f, false, 1, true, true, linuxSYNOptions, nil), true)
	f.Add(seg(f, true, 1, false, true, linuxACKOptions, []byte("x")), false)
	f.Fuzz(func(t *testing.T, b []byte, outgoing bool) {
		node := &nodeHandshakes{limit: 32}
		p.cli.wl.conns = newConnTable(16, node)
		p.srv.wl.conns = newConnTable(16, node)
		v := p.cli.process(synBytes, true)
		p.srv.process(v.packet, false)
		for _, q := range []*queue{p.cli, p.srv} {
			if v := q.process(b, outgoing); v.mark == marks.DefaultAuthorized || v.authorize {
				t.Fatalf("one packet authorized a connection (outgoing=%v): %x", outgoing, b)
			}
		}
	})
}

func TestExpiredHalfOpenHandshakeIsRecorded(t *testing.T) {
	syn := func(sport uint16) []byte { return seg(t, true, sport, true, false, linuxSYNOptions, nil) }
	synack := func(sport uint16) []byte { return seg(t, false, sport, true, true, linuxSYNOptions, nil) }
	ackPkt := func(sport uint16) []byte { return seg(t, true, sport, false, true, linuxACKOptions, nil) }
	p := newPair(t, 0)

	// Port 20: the client's proof never arrives (an attacker replaying a
	// SYN, or a lost ACK never repaired). Port 21: a complete handshake.
	for _, sport := range []uint16{20, 21} {
		v := pass(p.cli, syn(sport), true)
		if w := pass(p.srv, v.packet, false); !w.accept {
			t.Fatalf("port %d: server refused the SYN", sport)
		}
		sa := pass(p.srv, synack(sport), true)
		pass(p.cli, sa.packet, false)
		if sport == 21 {
			a := pass(p.cli, ackPkt(sport), true)
			if w := pass(p.srv, a.packet, false); !w.accept {
				t.Fatal("server refused a valid ACK")
			}
		}
	}
	later := time.Now().Add(p.e.cfg.HandshakeTimeout + time.Second)
	p.e.expire(p.srv.wl, later)
	p.e.expire(p.cli.wl, later)
	if n := p.srv.wl.conns.len() + p.cli.wl.conns.len(); n != 0 {
		t.Fatalf("%d handshakes left after expiry", n)
	}

	var expired []flowlog.Record
	for _, r := range p.flows.records(t) {
		if strings.Contains(r.Reason, "handshake not completed") {
			expired = append(expired, r)
		}
	}
	if len(expired) != 1 {
		t.Fatalf("got %d expiry records, want 1 (only the half-open server side): %+v", len(expired), expired)
	}
	r := expired[0]
	if r.Verdict != flowlog.Deny || r.Direction != "ingress" || r.Stage != stageACK ||
		r.PeerAddr != "198.18.0.1:20" || r.Local == nil || r.Local.Pod != "srv" || r.Peer == nil || r.Peer.Pod != "cli" {
		t.Errorf("expiry record = %+v", r)
	}
}

// authorizedAfter reports whether v is the server's acceptance of a valid
// client proof: the ACK passes still Pending and the connection is marked
// Authorized in conntrack only after the verdict (see ingressACK).
func authorizedAfter(v verdict) bool {
	return v.accept && v.mark == marks.DefaultPending && v.authorize
}

// proofACK runs a handshake from client port sport up to the client's
// ACK: SYN out and in, SYN-ACK out and in, ACK out. It returns the ACK's
// verdict, whose packet carries the proof the server has not yet seen.
func (p *pair) proofACK(t *testing.T, sport uint16) verdict {
	t.Helper()
	v := pass(p.cli, seg(t, true, sport, true, false, linuxSYNOptions, nil), true)
	pass(p.srv, v.packet, false)
	v = pass(p.srv, seg(t, false, sport, true, true, linuxSYNOptions, nil), true)
	pass(p.cli, v.packet, false)
	return pass(p.cli, seg(t, true, sport, false, true, linuxACKOptions, nil), true)
}

// tamperProof flips a bit of the proof in ack (a packet with the proof
// option) and fixes the TCP checksum, as an attacker on the path would.
func tamperProof(t *testing.T, ack []byte) {
	t.Helper()
	var q packet
	if err := parsePacket(ack, &q); err != nil {
		t.Fatal(err)
	}
	ack[q.proofOpt+6] ^= 1
	setTCPChecksum(ack, false, q.tcpOff)
}

func TestConnTableHeldPackets(t *testing.T) {
	key := func(port uint16) connKey {
		return connKey{local: netip.MustParseAddrPort("198.18.0.2:80"), remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), port)}
	}
	tab := newConnTable(maxHeld, &nodeHandshakes{limit: maxHeld})
	if tab.hold(key(1), heldPacket{id: 1}) {
		t.Fatal("held a packet of a connection with no handshake")
	}
	now := time.Now()
	for port := uint16(1); port <= maxHeld/maxHeldPerConn+1; port++ {
		tab.put(key(port), &conn{expires: now.Add(time.Minute), server: &tokens.ServerHandshake{}})
	}
	for i := uint32(0); i < maxHeldPerConn; i++ {
		if !tab.hold(key(1), heldPacket{id: i}) {
			t.Fatalf("packet %d of %d refused", i, maxHeldPerConn)
		}
	}
	if tab.hold(key(1), heldPacket{id: 99}) {
		t.Fatal("held more than maxHeldPerConn packets for one connection")
	}
	// A retransmitted SYN replaces the handshake: its packets stay held.
	tab.put(key(1), &conn{expires: now.Add(time.Minute), server: &tokens.ServerHandshake{}})
	got := tab.takeHeld(key(1))
	if len(got) != maxHeldPerConn || got[0].id != 0 || got[len(got)-1].id != maxHeldPerConn-1 {
		t.Fatalf("takeHeld = %+v, want ids 0..%d in order", got, maxHeldPerConn-1)
	}
	if len(tab.takeHeld(key(1))) != 0 {
		t.Fatal("takeHeld returned the packets twice")
	}
	// The workload-wide bound.
	n := 0
	for port := uint16(2); port <= maxHeld/maxHeldPerConn+1; port++ {
		for i := 0; i < maxHeldPerConn; i++ {
			if tab.hold(key(port), heldPacket{id: uint32(i)}) {
				n++
			}
		}
	}
	if n != maxHeld {
		t.Fatalf("held %d packets in all, want the bound %d", n, maxHeld)
	}
	// Expiry hands every held packet back to be dropped and frees the bound.
	_, dropped := tab.expire(now.Add(time.Hour))
	if len(dropped) != maxHeld || tab.held != 0 {
		t.Fatalf("expire returned %d held packets (count left %d), want %d (0)", len(dropped), tab.held, maxHeld)
	}
}
