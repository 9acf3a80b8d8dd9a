package enforcer

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/bireme/bireme/flowlog"
)

// decisions collects what Config.OnDecision is given.
type decisions struct {
	mu sync.Mutex
	rs []flowlog.Record
}

func (d *decisions) add(r *flowlog.Record) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rs = append(d.rs, *r)
}

func (d *decisions) summary() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return summarize(d.rs)
}

// summarize names each record by what metrics count: stage, direction,
// verdict and token error.
func summarize(rs []flowlog.Record) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Stage+"/"+r.Direction+"/"+r.Verdict+"/"+r.TokenError)
	}
	return out
}

// runDecisions drives p through every kind of record the enforcer writes:
// a completed handshake (two allows), a tampered proof (a token deny) and
// a half-open handshake that expires (a deny written by the cleanup).
func runDecisions(t *testing.T, p *pair) {
	p.proofACK(t, 1)
	ack := p.proofACK(t, 1)
	if w := pass(p.srv, ack.packet, false); !authorizedAfter(w) {
		t.Fatalf("valid proof: %+v", w)
	}
	bad := p.proofACK(t, 2)
	tamperProof(t, bad.packet)
	if w := pass(p.srv, bad.packet, false); w.accept {
		t.Fatalf("tampered proof accepted: %+v", w)
	}
	p.proofACK(t, 3) // its proof never reaches the server
	p.e.expire(p.srv.wl, time.Now().Add(p.e.cfg.HandshakeTimeout+time.Second))
}

func TestOnDecisionGetsEveryRecord(t *testing.T) {
	want := []string{
		// Port 1, twice (the second SYN starts over): the server's SYN
		// and the client's SYN-ACK are allowed each time.
		"syn/ingress/allow/", "synack/egress/allow/",
		"syn/ingress/allow/", "synack/egress/allow/",
		// Port 2: the tampered proof.
		"syn/ingress/allow/", "synack/egress/allow/", "ack/ingress/deny/bad-proof",
		// Port 3, then the expiry of the half-open server sides of ports
		// 2 and 3 (neither saw a valid proof).
		"syn/ingress/allow/", "synack/egress/allow/", "ack/ingress/deny/", "ack/ingress/deny/",
	}

	t.Run("without a flow log", func(t *testing.T) {
		var got decisions
		p := newPairWith(t, Config{OnDecision: got.add}, false)
		runDecisions(t, p)
		if s := got.summary(); !slices.Equal(s, want) {
			t.Errorf("OnDecision got\n%q\nwant\n%q", s, want)
		}
	})

	t.Run("with a flow log, the same records", func(t *testing.T) {
		var got decisions
		p := newPairWith(t, Config{OnDecision: got.add}, true)
		runDecisions(t, p)
		flows := summarize(p.flows.records(t))
		if s := got.summary(); !slices.Equal(s, want) || !slices.Equal(flows, want) {
			t.Errorf("OnDecision got\n%q\nflow log got\n%q\nwant\n%q", s, flows, want)
		}
	})
}
