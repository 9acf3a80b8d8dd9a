package enforcer

import (
	"fmt"
	"time"

	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

// egress handles a packet the workload sends: its SYN (client), its
// SYN-ACK (server), or — while the connection is Pending — the client's
// ACK that carries the proof or the server's first bytes.
func (q *queue) egress(p *packet) verdict {
	key := connKey{local: p.srcPort(), remote: p.dstPort()}
	switch {
	case p.flags&flagSYN != 0 && p.flags&flagACK == 0:
		return q.egressSYN(p, key)
	case p.flags&flagSYN != 0:
		return q.egressSYNACK(p, key)
	default:
		return q.egressACK(p, key)
	}
}

// egressSYN starts a client handshake: a fresh nonce and the workload's
// pre-signed token ride in the SYN. Every transmission of the SYN gets a
// fresh handshake (a server rejects a nonce it has seen); the ones before
// are kept, since the SYN-ACK may answer any of them.
func (q *queue) egressSYN(p *packet, key connKey) verdict {
	if !q.e.expectsEnforcer(p.dst) && !q.e.serviceFrontend(p.dstPort()) {
		return q.egressPlainSYN(p, key) // external.go
	}
	local := q.wl.id.Load()
	// The proofs will bind this connection as the workload opens it: a
	// SYN-ACK proving another one (a relay's) is refused in ingressSYNACK.
	opened := tokens.Endpoints{Client: p.srcPort(), Server: p.dstPort(), ClientISN: p.seq}
	payload, ch, err := q.e.cfg.Tokens.NewSYN(local, opened)
	if err != nil {
		q.record(p, outcome{outgoing: true, dir: policy.Egress, stage: stageSYN, local: local,
			reason: "denied: cannot sign the SYN token: " + err.Error(), tokenErr: err})
		return drop
	}
	dropData(p)
	out, err := p.insertToken(q.buf, payload, q.e.cfg.MaxPacket)
	if err != nil {
		q.record(p, outcome{outgoing: true, dir: policy.Egress, stage: stageSYN, local: local,
			reason: fmt.Sprintf("denied: token (%d bytes) does not fit the SYN: %v", len(payload), err)})
		return drop
	}
	c := &conn{expires: time.Now().Add(q.e.cfg.HandshakeTimeout), clients: []*tokens.ClientHandshake{ch}}
	if old := q.wl.conns.get(key); old != nil && old.synack == nil && len(old.clients) > 0 && len(old.clients) < maxSYNRetries {
		// A retransmission: the SYN-ACK may answer any of the SYNs sent.
		c.clients = append(append(c.clients[:0:0], old.clients...), ch)
	}
	if !q.wl.conns.put(key, c) {
		q.record(p, outcome{outgoing: true, dir: policy.Egress, stage: stageSYN, local: local,
			reason: "denied: too many handshakes in progress"})
		return drop
	}
	return verdict{accept: true, packet: out}
}

// egressSYNACK answers a verified SYN: the server token, nonce and proof
// ride in the SYN-ACK. A retransmitted SYN-ACK carries the same bytes.
func (q *queue) egressSYNACK(p *packet, key connKey) verdict {
	c := q.wl.conns.get(key)
	if c == nil || (c.server == nil && !c.noToken) {
		// No SYN of this connection was allowed (or its state expired).
		return drop
	}
	if c.noToken {
		// The client runs no enforcer: it would not understand a token.
		return verdict{accept: true, mark: q.e.cfg.Layout.Authorized}
	}
	local := q.wl.id.Load()
	payload, err := c.server.NewSYNACK(local, p.seq)
	if err != nil {
		q.record(p, outcome{outgoing: true, dir: policy.Ingress, stage: stageSYNACK, local: local, peer: c.peer,
			reason: "denied: cannot build the SYN-ACK token: " + err.Error(), tokenErr: err})
		return drop
	}
	dropData(p)
	out, err := p.insertToken(q.buf, payload, q.e.cfg.MaxPacket)
	if err != nil {
		q.record(p, outcome{outgoing: true, dir: policy.Ingress, stage: stageSYNACK, local: local, peer: c.peer,
			reason: fmt.Sprintf("denied: token (%d bytes) does not fit the SYN-ACK: %v", len(payload), err)})
		return drop
	}
	mark := q.e.cfg.Layout.Pending
	if c.server.TwoMessage() {
		// Authorized since the SYN: a Pending mark here would be saved
		// over it and queue the client's ACK for a proof it never sends.
		mark = q.e.cfg.Layout.Authorized
	}
	return verdict{accept: true, packet: out, mark: mark}
}

// egressACK attaches the client proof to the handshake-completing ACK and
// marks the connection Authorized on the client, so its data never visits
// the queue. The proof rides in a TCP option, so it never enters the byte
// stream. A packet with no room for it goes without, and the connection
// stays Pending so the next one carries it. If the ACK is lost, the server
// retransmits its SYN-ACK, ingressSYNACK sets the connection back to
// Pending, and the kernel's answering ACK carries the proof again.
func (q *queue) egressACK(p *packet, key connKey) verdict {
	c := q.wl.conns.get(key)
	if c != nil && c.server != nil {
		// The server's first bytes, sent before the connection was marked
		// Authorized (right after the verdict on the client's ACK). The
		// server has its socket only once that ACK was accepted.
		if !c.authorized {
			return drop
		}
		return verdict{accept: true, mark: q.e.cfg.Layout.Authorized}
	}
	if c == nil || c.proof == nil {
		// The client already decided (policy allowed the SYN-ACK); without
		// state there is no proof to add and the server will judge.
		return verdict{accept: true}
	}
	out, err := p.insertProof(q.buf, c.proof, q.e.cfg.MaxPacket)
	if err != nil {
		return verdict{accept: true}
	}
	return verdict{accept: true, packet: out, mark: q.e.cfg.Layout.Authorized}
}

// dropData removes data a SYN or SYN-ACK carries (TCP Fast Open): with the
// token it could not fit the path, and the peer kernel must not take data
// before the handshake is authorized. The SYN-ACK then does not acknowledge
// it and the sender's kernel sends it again after the handshake, as it does
// when a server declines Fast Open data.
func dropData(p *packet) {
	p.b = p.b[:p.payloadOff()]
}
