package enforcer

import (
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

// Flow record stages.
const (
	stageSYN    = "syn"
	stageSYNACK = "synack"
	stageACK    = "ack"
)

// record writes one flow record about the connection of packet p (seen
// by workload local; outgoing says whether p leaves it).
func (q *queue) record(p *packet, outgoing bool, dir policy.Direction, stage string,
	local, peer *identity.Identity, allowed bool, pol, reason string, tokenErr error) {
	if q.e.cfg.Flows == nil {
		return
	}
	localAP, peerAP := p.srcPort(), p.dstPort()
	if !outgoing {
		localAP, peerAP = peerAP, localAP
	}
	r := &flowlog.Record{
		Time:      time.Now().UTC(),
		Node:      q.e.cfg.Node,
		Direction: dir.String(),
		Stage:     stage,
		Protocol:  "TCP",
		LocalAddr: localAP.String(),
		PeerAddr:  peerAP.String(),
		Local:     local,
		Peer:      peer,
		Verdict:   flowlog.Deny,
		Policy:    pol,
		Reason:    reason,
	}
	if allowed {
		r.Verdict = flowlog.Allow
	}
	if tokenErr != nil {
		// Only here: ReasonOf's errors.As target is a heap allocation,
		// and most records (every policy decision) have no token error.
		r.TokenError = string(tokens.ReasonOf(tokenErr))
	}
	q.e.flows.send(r)
}

// decide asks policy and records the decision.
func (q *queue) decide(p *packet, outgoing bool, dir policy.Direction, stage string,
	local *identity.Identity, peer policy.Peer, port uint16) bool {
	d := q.e.cfg.Policy.Decide(local, peer, dir, port, "TCP")
	q.record(p, outgoing, dir, stage, local, peer.Identity, d.Allowed, d.Policy, d.Reason, nil)
	return d.Allowed
}
