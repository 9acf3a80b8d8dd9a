package enforcer

import (
	"bytes"
	"errors"
	"time"

	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

// ingress handles a packet arriving at the workload: a SYN (server), a
// SYN-ACK (client), or — while the connection is Pending on the server —
// the ACK that must carry the client's proof.
func (q *queue) ingress(p *packet) verdict {
	key := connKey{local: p.dstPort(), remote: p.srcPort()}
	switch {
	case p.flags&flagSYN != 0 && p.flags&flagACK == 0:
		return q.ingressSYN(p, key)
	case p.flags&flagSYN != 0:
		return q.ingressSYNACK(p, key)
	default:
		return q.ingressACK(p, key)
	}
}

// ingressSYN verifies the client's token, strips it, and decides the
// server workload's ingress policy on the client identity. A SYN with no
// token comes from a peer without an enforcer: it has no identity and
// only ipBlock rules can allow it.
func (q *queue) ingressSYN(p *packet, key connKey) verdict {
	local := q.wl.id.Load()
	peer := policy.Peer{Addr: p.src}
	c := &conn{expires: time.Now().Add(q.e.cfg.HandshakeTimeout)}
	if tok := p.token(); tok == nil {
		c.noToken = true
	} else {
		// The connection as this namespace sees it must be the one the
		// client opened (or its NAT-translated form, if declared).
		observed := tokens.Endpoints{Client: p.srcPort(), Server: p.dstPort(), ClientISN: p.seq}
		// The packet lives in the reader's reused buffer: the tokens
		// engine may keep what it parsed (certificate, cache key). Only
		// a SYN needing a signature verification is charged to the
		// budget. The nonce is checked here but recorded only once policy
		// allows (below): refused SYNs must not churn the replay cache.
		// A client that dialed a Service address this pod backs claims
		// that address: the node vouches for kube-proxy's translation.
		sh, costly, err := q.e.cfg.Tokens.VerifySYNVia(bytes.Clone(tok), observed, q.e.translation(),
			func() bool { return q.affordsVerification(p, local) })
		if errors.Is(err, tokens.ErrNotAfforded) {
			return drop // recorded by affordsVerification
		}
		if err != nil {
			q.recordTokenRejection(p, costly, func() outcome {
				return outcome{dir: policy.Ingress, stage: stageSYN, local: local,
					reason: "denied: client token rejected: " + err.Error(), tokenErr: err}
			})
			return drop
		}
		c.server = sh
		c.peer = sh.Peer()
		if err := q.e.checkPlacement(c.peer, sh.PeerNode()); err != nil {
			q.record(p, outcome{dir: policy.Ingress, stage: stageSYN, local: local, peer: c.peer,
				reason: "denied: client token rejected: " + err.Error(), tokenErr: err})
			return drop
		}
		peer.Identity = c.peer
	}
	o := q.policyOutcome(false, policy.Ingress, stageSYN, local, peer, p.dport)
	o.handshake, o.fallback = serverHandshake(c.server)
	if !o.allowed {
		q.record(p, o)
		return drop
	}
	if c.server != nil {
		if err := c.server.RecordNonce(); err != nil { // the same SYN, accepted meanwhile
			q.record(p, outcome{dir: policy.Ingress, stage: stageSYN, local: local, peer: peer.Identity,
				reason: "denied: client token rejected: " + err.Error(), tokenErr: err})
			return drop
		}
		// Recording the nonce may still turn a two-message SYN into a
		// three-message one (the strike register forgot nonces since
		// VerifySYN): the record says the path actually taken.
		o.handshake, o.fallback = serverHandshake(c.server)
	}
	q.record(p, o)
	if old := q.wl.conns.get(key); c.server != nil && old != nil && old.server != nil && !old.authorized &&
		len(old.earlier) < maxSYNRetries {
		// A retransmitted SYN arriving after the server answered an
		// earlier one: the client may complete either handshake. Each was
		// verified and allowed on its own SYN.
		c.earlier = append(append(old.earlier[:0:0], old.earlier...), old.server)
	}
	var mark uint32
	if why := c.server.Fallback(); why != "" {
		// A two-message SYN answered in three messages: first contact
		// after a restart, a rotated key, clocks apart, NAT.
		q.e.log.Debug("two-message SYN answered in three messages", "netns", q.wl.netns, "peer", c.peer.String(), "reason", why)
	}
	if c.server != nil && c.server.TwoMessage() {
		// Two-message handshake (a known client node, a fresh SYN whose
		// MAC verified, its nonce now recorded): the client is proven
		// already. Authorized at the SYN, so the client's ACK and data
		// never visit this queue; the SYN-ACK is still queued (every SYN
		// is) and gets the server's proof, and this conn answers its
		// retransmissions.
		c.authorized = true
		mark = q.e.cfg.Layout.Authorized
	}
	if !q.wl.conns.put(key, c) {
		q.record(p, outcome{dir: policy.Ingress, stage: stageSYN, local: local, peer: peer.Identity,
			reason: "denied: too many handshakes in progress"})
		return drop
	}
	if c.authorized {
		q.noteForeign(key.remote, key.local, policy.Ingress, local, c.peer)
	}
	return q.acceptStripped(p, mark)
}

// ingressSYNACK verifies the server's token and proof (bound to this
// handshake's nonce), strips them, and decides the client workload's
// egress policy on the server identity.
func (q *queue) ingressSYNACK(p *packet, key connKey) verdict {
	c := q.wl.conns.get(key)
	if c != nil && c.plain {
		return q.ingressPlainSYNACK(p) // external.go
	}
	if c == nil || len(c.clients) == 0 {
		return drop // we sent no SYN for this tuple (or gave up on it)
	}
	tok := p.token()
	if c.synack != nil {
		// A retransmission of the SYN-ACK already verified: our ACK was
		// lost. Let it through so the kernel answers with the ACK again,
		// and make the connection Pending so that ACK gets the proof.
		if tok != nil && bytes.Equal(tok, c.synack) {
			if c.answered != nil && c.answered.TwoMessage() {
				// No ACK proof to resend: the connection stays Authorized
				// (a Pending mark would queue the ACK for nothing).
				return q.acceptStripped(p, q.e.cfg.Layout.Authorized)
			}
			return q.acceptStripped(p, q.e.cfg.Layout.Pending)
		}
		// It may answer another transmission of our SYN: one that reached
		// the server after it had answered the first, so the server now
		// waits for that handshake's proof, and our ACK with the first
		// proof was lost. Verified in full below, like a first SYN-ACK;
		// anything else is dropped.
		if tok == nil {
			return drop
		}
		nonce, ok := tokens.SYNACKClientNonce(tok)
		if !ok {
			return drop
		}
		if match := c.clientFor(nonce); match == nil || match == c.answered {
			return drop
		}
	}
	local := q.wl.id.Load()
	peer := policy.Peer{Addr: p.src}
	if tok == nil {
		if !q.decide(p, false, policy.Egress, stageSYNACK, local, peer, p.sport) {
			return drop
		}
		c.noToken = true
		return q.acceptStripped(p, q.e.cfg.Layout.Authorized)
	}
	ch := c.clients[len(c.clients)-1]
	if nonce, ok := tokens.SYNACKClientNonce(tok); ok {
		if match := c.clientFor(nonce); match != nil {
			ch = match
		}
	}
	// The identity returned is bound to the connection this workload
	// dialed, so the egress decision below is about the server it dialed,
	// not whatever a relay in between presents.
	id, err := ch.ConsumeSYNACK(bytes.Clone(tok), p.seq) // see ingressSYN
	if err != nil {
		q.record(p, outcome{dir: policy.Egress, stage: stageSYNACK, local: local,
			reason: "denied: server token rejected: " + err.Error(), tokenErr: err})
		return drop
	}
	if err := q.e.checkPlacement(id, ch.PeerNode()); err != nil {
		q.record(p, outcome{dir: policy.Egress, stage: stageSYNACK, local: local, peer: id,
			reason: "denied: server token rejected: " + err.Error(), tokenErr: err})
		return drop
	}
	peer.Identity = id
	// A Service address: egress is decided on the server pod's port.
	o := q.policyOutcome(false, policy.Egress, stageSYNACK, local, peer, q.e.serverPort(p.srcPort(), id))
	o.handshake, o.fallback = clientHandshake(ch)
	q.record(p, o)
	if !o.allowed {
		return drop
	}
	if ch.TwoMessage() {
		// The server authorized at its SYN; this SYN-ACK completes the
		// handshake here. Authorized now, so the kernel's ACK and the
		// data behind it bypass both enforcers.
		c.peer = id
		c.answered = ch
		c.proof = nil
		c.synack = append([]byte(nil), tok...)
		q.noteForeign(key.local, key.remote, policy.Egress, local, id)
		return q.acceptStripped(p, q.e.cfg.Layout.Authorized)
	}
	proof, err := ch.NewACK()
	if err != nil {
		q.record(p, outcome{dir: policy.Egress, stage: stageSYNACK, local: local, peer: id,
			reason: "denied: cannot build the ACK proof: " + err.Error(), tokenErr: err})
		return drop
	}
	c.peer = id
	c.answered = ch
	c.proof = proof
	c.synack = append([]byte(nil), tok...)
	q.noteForeign(key.local, key.remote, policy.Egress, local, id)
	return q.acceptStripped(p, q.e.cfg.Layout.Pending)
}

// ingressACK checks the client's proof on the server: only then is the
// connection authorized and handed to the kernel for good. Packets queued
// behind the ACK that completed the handshake pass too.
func (q *queue) ingressACK(p *packet, key connKey) verdict {
	c := q.wl.conns.get(key)
	if c == nil || c.server == nil {
		return drop
	}
	proof := p.proof()
	if c.authorized {
		if proof == nil || bytes.Equal(proof, c.verified) {
			return q.acceptStripped(p, q.e.cfg.Layout.Authorized)
		}
		return drop
	}
	if proof == nil {
		// Data that overtook the ACK carrying the proof, or an ACK with no
		// room for it: it waits for the proof (conn.held).
		return verdict{hold: true, key: key}
	}
	peer := c.peer
	if err := c.server.ConsumeACK(proof); err != nil {
		// The proof may complete the handshake of an earlier SYN, whose
		// peer identity it then is.
		if peer = c.earlierAccepts(proof); peer == nil {
			q.record(p, outcome{dir: policy.Ingress, stage: stageACK, local: q.wl.id.Load(), peer: c.peer,
				reason: "denied: client proof rejected: " + err.Error(), tokenErr: err})
			return verdict{dropHeld: true, key: key}
		}
	}
	q.wl.conns.complete(c, bytes.Clone(proof), peer)
	// The ACK itself leaves the connection Pending, and the Authorized
	// mark is set only after this verdict (handle): had the ACK carried
	// it, the client's first data could bypass the queue on another CPU
	// while the kernel was still turning the ACK into a socket, meet only
	// the listener and be answered with a reset. Data arriving meanwhile
	// is queued behind the ACK and authorized above.
	v := q.acceptStripped(p, q.e.cfg.Layout.Pending)
	if v.accept {
		v.authorize, v.key = true, key
		q.noteForeign(key.remote, key.local, policy.Ingress, q.wl.id.Load(), peer)
	}
	return v
}

// acceptStripped accepts p without Bireme's token and options (copied
// unchanged when it carries none), setting mark.
func (q *queue) acceptStripped(p *packet, mark uint32) verdict {
	if p.tokenOpt == 0 && p.proofOpt == 0 {
		return verdict{accept: true, mark: mark}
	}
	out, err := p.strip(q.buf)
	if err != nil {
		return drop
	}
	return verdict{accept: true, packet: out, mark: mark}
}
