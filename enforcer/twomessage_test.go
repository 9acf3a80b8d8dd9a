package enforcer

import (
	"bytes"
	"context"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/tokens"
)

// newTwoMessageEngines returns a tokens engine with the two-message
// handshake on, and restart, which makes another engine with the same
// node credentials (the node's enforcer restarted: an empty strike
// register). Their clocks start past the start-up window (a fresh engine
// completes nothing in two messages until its window has passed, see
// tokens.Config.TwoMessageWindow); restart's engine is fresh on that clock.
func newTwoMessageEngines(t testing.TB, ca, node string) (eng *tokens.Engine, restart func() *tokens.Engine) {
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
	var offset atomic.Int64
	restart = func() *tokens.Engine {
		eng, err := tokens.NewEngine(tokens.Config{Credentials: creds, Trust: trust, TwoMessage: true,
			Now: func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }})
		if err != nil {
			t.Fatal(err)
		}
		return eng
	}
	eng = restart()
	offset.Store(int64(2 * tokens.DefaultTwoMessageWindow))
	return eng, restart
}

// tokenType is the type byte of the token a handshake packet carries (0 if
// none).
func tokenType(t *testing.T, b []byte) byte {
	t.Helper()
	var p packet
	if err := parsePacket(b, &p); err != nil {
		t.Fatal(err)
	}
	if tok := p.token(); len(tok) > 0 {
		return tok[0]
	}
	return 0
}

// The enforcer's marks on the two-message path: the server authorizes at
// the SYN (and keeps Authorized on its SYN-ACK), the client at the
// SYN-ACK, so neither ACK is queued; the kernels never see a token.
func TestTwoMessageStates(t *testing.T) {
	auth := marks.DefaultAuthorized
	syn := func(sport uint16) []byte { return seg(t, true, sport, true, false, linuxSYNOptions, nil) }
	synack := func(sport uint16) []byte { return seg(t, false, sport, true, true, linuxSYNOptions, nil) }
	eng, restart := newTwoMessageEngines(t, "unit", "n1")
	p := newPairWith(t, Config{Tokens: eng}, true)

	// First contact: three messages, and the client learns the server.
	ackv := p.proofACK(t, 1)
	if w := pass(p.srv, ackv.packet, false); !authorizedAfter(w) {
		t.Fatalf("first contact ACK: %+v", w)
	}

	v := pass(p.cli, syn(2), true)
	if !v.accept || tokenType(t, v.packet) != 0x24 {
		t.Fatalf("SYN to a known server: %+v, token type 0x%02x", v, tokenType(t, v.or(syn(2))))
	}
	replay := append([]byte(nil), v.packet...)
	w := pass(p.srv, v.packet, false)
	if !w.accept || w.mark != auth || !bytes.Equal(w.or(v.packet), syn(2)) {
		t.Fatalf("server SYN2: %+v, want accepted stripped, Authorized", w)
	}
	v = pass(p.srv, synack(2), true)
	if !v.accept || v.mark != auth || tokenType(t, v.packet) != 0x25 {
		t.Fatalf("server SYN-ACK2: %+v, want Authorized (a Pending mark would be saved over the SYN's)", v)
	}
	sa := append([]byte(nil), v.packet...)
	w = pass(p.cli, v.packet, false)
	if !w.accept || w.mark != auth || !bytes.Equal(w.or(v.packet), synack(2)) {
		t.Fatalf("client SYN-ACK2: %+v, want accepted stripped, Authorized", w)
	}
	// A retransmitted SYN-ACK keeps the connection Authorized.
	if w = pass(p.cli, sa, false); !w.accept || w.mark != auth || !bytes.Equal(w.or(sa), synack(2)) {
		t.Fatalf("retransmitted SYN-ACK2: %+v", w)
	}
	// The replayed SYN2 (same tuple, within the window) is refused.
	if w = pass(p.srv, replay, false); w.accept {
		t.Fatalf("replayed SYN2 accepted: %+v", w)
	}
	p.flows.records(t) // flushed
	if !strings.Contains(p.flows.String(), string(tokens.ReasonReplayed)) {
		t.Errorf("no replayed-nonce record: %s", p.flows.String())
	}
	// Nothing of the two-message handshake is left waiting for a proof.
	if n := len(p.srv.wl.conns.expireAll()); n != 0 {
		t.Errorf("%d server handshakes reported unfinished", n)
	}

	// The server's enforcer restarts (a new engine: its strike register
	// is empty). The replayed SYN2 predates the restart: it is not
	// authorized at the SYN, and its handshake waits for a client proof
	// the replayer cannot make.
	after := newPairWith(t, Config{Tokens: restart()}, true)
	w = pass(after.srv, replay, false)
	if w.accept && w.mark == auth {
		t.Fatalf("replayed pre-restart SYN2 authorized at the SYN: %+v", w)
	}
	if w = pass(after.srv, seg(t, true, 2, false, true, linuxACKOptions, nil), false); w.accept {
		t.Fatalf("ACK without proof after the replayed SYN2 accepted: %+v", w)
	}
}

// expireAll expires every handshake of t and returns the unfinished ones.
func (t *connTable) expireAll() []expiredHandshake {
	u, _ := t.expire(time.Now().Add(24 * time.Hour))
	return u
}

// queuedPending sums the packet counters of the rules that queue packets
// of Pending connections (the handshake-completing ACK and what follows
// it) in ns's BIREME-INPUT and BIREME-OUTPUT chains, IPv4.
func queuedPending(t *testing.T, ns *netns.NS) (pending, syn int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, chain := range []string{"BIREME-INPUT", "BIREME-OUTPUT"} {
		out, err := ns.Output(ctx, "iptables", "-w", "-t", "mangle", "-L", chain, "-v", "-x", "-n")
		if err != nil {
			t.Fatalf("iptables -L %s: %v: %s", chain, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 3 || f[2] != "NFQUEUE" {
				continue
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				t.Fatalf("counter in %q: %v", line, err)
			}
			switch {
			case strings.Contains(line, "connmark match"):
				pending += n
			case strings.Contains(line, "flags:0x02/0x02"):
				syn += n
			default:
				t.Fatalf("unexpected NFQUEUE rule: %q", line)
			}
		}
	}
	return pending, syn
}

// Known peers complete in four queue trips in real namespaces: after the
// first connection, the SYN and SYN-ACK are the only packets either
// namespace queues; the ACK and everything after it stay in the kernel.
// The application never sees a token (the echo compares every byte).
func TestTwoMessageInNamespaces(t *testing.T) {
	eng, _ := newTwoMessageEngines(t, "lab", "node1")
	l := newLabWith(t, 1, eng)
	srv := serve(t, l.web, "198.18.7.1:8080")
	connect := func() {
		t.Helper()
		c, err := dialFrom(l.client, "", "198.18.7.1:8080", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echoBytes(c, 2000); err != nil {
			t.Fatal(err)
		}
	}
	connect() // first contact: three messages; the client learns the server
	cliPending, cliSYN := queuedPending(t, l.client)
	webPending, webSYN := queuedPending(t, l.web)
	if cliPending == 0 || webPending == 0 {
		t.Fatalf("first contact queued no Pending packet (client %d, server %d): the three-message ACK must be queued", cliPending, webPending)
	}
	const n = 20
	for range n {
		connect()
	}
	cp, cs := queuedPending(t, l.client)
	wp, ws := queuedPending(t, l.web)
	if cp != cliPending || wp != webPending {
		t.Errorf("known peer: %d client and %d server packets queued as Pending over %d connections, want 0", cp-cliPending, wp-webPending, n)
	}
	if cs-cliSYN < 2*n || ws-webSYN < 2*n {
		t.Errorf("SYN and SYN-ACK queued: client %d, server %d, want at least %d each", cs-cliSYN, ws-webSYN, 2*n)
	}
	if got := srv.accepted.Load(); got != n+1 {
		t.Errorf("server accepted %d connections, want %d", got, n+1)
	}
	t.Logf("%d known-peer connections: queued SYN-class packets client %d, server %d; Pending 0", n, cs-cliSYN, ws-webSYN)
}

// BenchmarkTwoMessageProcess is the enforcer's own work for one
// connection with a known peer on the two-message path, both sides: the
// four queued packets through process (parse, tokens, policy, flow
// records, rewrite), without the kernel and the queue round trips.
func BenchmarkTwoMessageProcess(b *testing.B) {
	t := &testing.T{}
	eng, _ := newTwoMessageEngines(b, "unit", "n1")
	p := newPairWith(t, Config{Tokens: eng}, false)
	p.e.cfg.Flows = flowlog.NewWriter(io.Discard)
	p.e.flows = newFlowQueue(b.Context(), p.e.cfg.Flows, p.e.log)
	if w := pass(p.srv, p.proofACK(t, 1).packet, false); !authorizedAfter(w) {
		b.Fatal("first contact did not complete")
	}
	const ports = 256
	var syns, synacks [ports][]byte
	for i := range ports {
		syns[i] = seg(b, true, uint16(100+i), true, false, linuxSYNOptions, nil)
		synacks[i] = seg(b, false, uint16(100+i), true, true, linuxSYNOptions, nil)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		v := p.cli.process(syns[i], true)
		p.srv.process(v.packet, false)
		v = p.srv.process(synacks[i], true)
		if w := p.cli.process(v.packet, false); w.mark != marks.DefaultAuthorized {
			b.Fatalf("two-message handshake did not complete: %+v", w)
		}
		i = (i + 1) % ports
	}
}

// Flow records say which handshake a decision was made in, on both ends:
// three messages at first contact, two for a known server, and for a
// two-message SYN the server could not take (here: its enforcer
// restarted) the server's typed reason and the client's
// "declined-by-server".
func TestTwoMessageFlowRecords(t *testing.T) {
	eng, restart := newTwoMessageEngines(t, "unit", "n1")
	p := newPairWith(t, Config{Tokens: eng}, true)
	if w := pass(p.srv, p.proofACK(t, 1).packet, false); !authorizedAfter(w) { // first contact
		t.Fatalf("first contact ACK: %+v", w)
	}
	v := pass(p.cli, seg(t, true, 2, true, false, linuxSYNOptions, nil), true) // a SYN2
	if w := pass(p.srv, v.packet, false); !w.accept || w.mark != marks.DefaultAuthorized {
		t.Fatalf("server SYN2: %+v", w)
	}
	v = pass(p.srv, seg(t, false, 2, true, true, linuxSYNOptions, nil), true)
	if w := pass(p.cli, v.packet, false); !w.accept {
		t.Fatalf("client SYN-ACK2: %+v", w)
	}

	// Port 3: a SYN2 to the restarted server, which answers in three
	// messages; the client completes them.
	after := newPairWith(t, Config{Tokens: restart()}, true)
	v = pass(p.cli, seg(t, true, 3, true, false, linuxSYNOptions, nil), true)
	if tokenType(t, v.packet) != 0x24 {
		t.Fatalf("SYN to a known server: token type 0x%02x", tokenType(t, v.packet))
	}
	if w := pass(after.srv, v.packet, false); !w.accept || w.mark == marks.DefaultAuthorized {
		t.Fatalf("restarted server took the SYN2 in two messages: %+v", w)
	}
	v = pass(after.srv, seg(t, false, 3, true, true, linuxSYNOptions, nil), true)
	if w := pass(p.cli, v.packet, false); !w.accept {
		t.Fatalf("client three-message SYN-ACK: %+v", w)
	}
	ack := pass(p.cli, seg(t, true, 3, false, true, linuxACKOptions, nil), true)
	if w := pass(after.srv, ack.packet, false); !authorizedAfter(w) {
		t.Fatalf("restarted server, client ACK: %+v", w)
	}

	// record finds the allow record of the connection from client port
	// sport in dir.
	record := func(rs []flowlog.Record, dir string, sport uint16) *flowlog.Record {
		client := "198.18.0.1:" + strconv.Itoa(int(sport))
		for i := range rs {
			r := &rs[i]
			if r.Direction == dir && r.Verdict == flowlog.Allow &&
				((dir == "egress" && r.LocalAddr == client) || (dir == "ingress" && r.PeerAddr == client)) {
				return r
			}
		}
		t.Fatalf("no %s allow record of client port %d", dir, sport)
		return nil
	}
	rs, ars := p.flows.records(t), after.flows.records(t)
	for _, tc := range []struct {
		name                string
		r                   *flowlog.Record
		handshake, fallback string
	}{
		{"first contact, server", record(rs, "ingress", 1), flowlog.ThreeMessage, ""},
		{"first contact, client", record(rs, "egress", 1), flowlog.ThreeMessage, ""},
		{"known server, server", record(rs, "ingress", 2), flowlog.TwoMessage, ""},
		{"known server, client", record(rs, "egress", 2), flowlog.TwoMessage, ""},
		{"restarted server, server", record(ars, "ingress", 3), flowlog.ThreeMessage, string(tokens.FallbackRestart)},
		{"restarted server, client", record(rs, "egress", 3), flowlog.ThreeMessage, string(tokens.FallbackDeclined)},
	} {
		if tc.r.Handshake != tc.handshake || tc.r.Fallback != tc.fallback {
			t.Errorf("%s: stage %s handshake %q fallback %q, want %q %q", tc.name, tc.r.Stage, tc.r.Handshake, tc.r.Fallback, tc.handshake, tc.fallback)
		}
	}
	// A token rejection names no handshake: none verified.
	for _, r := range rs {
		if r.TokenError != "" && r.Handshake != "" {
			t.Errorf("token rejection record with handshake %q: %+v", r.Handshake, r)
		}
	}
}
