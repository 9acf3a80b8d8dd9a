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

// outcome is what the enforcer decided on one handshake packet, in the
// words of its flow record. The zero verdict is deny: most outcomes
// recorded outside decide are refusals.
type outcome struct {
	outgoing bool // the packet leaves the workload (decides which address is local)
	dir      policy.Direction
	stage    string
	local    *identity.Identity
	peer     *identity.Identity // nil when the peer proved no identity
	allowed  bool
	policy   string // the NetworkPolicy that decided, if one did
	// selectedBy: the policies selecting local in dir, when policy decided
	selectedBy []string
	// tier, byAddr, wouldDeny: the decision's tier, whether its rule
	// matched the peer by address, and the audit-mode denial.
	tier      string
	byAddr    bool
	wouldDeny *policy.WouldDeny
	reason    string
	tokenErr  error // the token rejection, if that was the cause
	// handshake, fallback: the Bireme handshake the decision was made in
	// (flowlog.TwoMessage or ThreeMessage, "" when none verified) and why
	// a two-message SYN went the three-message way.
	handshake, fallback string
}

// record reports o about the connection of packet p: to Config.OnDecision
// and to the flow log. It builds nothing when neither wants the record.
func (q *queue) record(p *packet, o outcome) {
	if !q.e.wantsRecords() {
		return
	}
	localAP, peerAP := p.srcPort(), p.dstPort()
	if !o.outgoing {
		localAP, peerAP = peerAP, localAP
	}
	r := &flowlog.Record{
		Time:       time.Now().UTC(),
		Node:       q.e.cfg.Node,
		Direction:  o.dir.String(),
		Stage:      o.stage,
		Protocol:   "TCP",
		LocalAddr:  localAP.String(),
		PeerAddr:   peerAP.String(),
		Local:      o.local,
		Peer:       o.peer,
		Verdict:    flowlog.Deny,
		Policy:     o.policy,
		SelectedBy: o.selectedBy,
		Reason:     o.reason,
	}
	if o.allowed {
		r.Verdict = flowlog.Allow
	}
	r.Tier, r.MatchedByAddress, r.WouldDeny = recordTier(o.tier), o.byAddr, wouldDenyRecord(o.wouldDeny)
	r.Handshake, r.Fallback = o.handshake, o.fallback
	if o.tokenErr != nil {
		// Only here: ReasonOf's errors.As target is a heap allocation,
		// and most records (every policy decision) have no token error.
		r.TokenError = string(tokens.ReasonOf(o.tokenErr))
	}
	q.e.report(r)
}

// wantsRecords says whether anyone consumes decision records.
func (e *Enforcer) wantsRecords() bool {
	return e.cfg.Flows != nil || e.cfg.OnDecision != nil
}

// report hands r to Config.OnDecision (on the packet path) and queues it
// for the flow log (written off the packet path).
func (e *Enforcer) report(r *flowlog.Record) {
	if e.cfg.OnDecision != nil {
		e.cfg.OnDecision(r)
	}
	e.flows.send(r)
}

// decide asks policy and records the decision.
func (q *queue) decide(p *packet, outgoing bool, dir policy.Direction, stage string,
	local *identity.Identity, peer policy.Peer, port uint16) bool {
	o := q.policyOutcome(outgoing, dir, stage, local, peer, port)
	q.record(p, o)
	return o.allowed
}

// policyOutcome asks policy, for a caller that completes the outcome
// before recording it.
func (q *queue) policyOutcome(outgoing bool, dir policy.Direction, stage string,
	local *identity.Identity, peer policy.Peer, port uint16) outcome {
	d := q.e.cfg.Policy.Decide(local, peer, dir, port, "TCP")
	return outcome{outgoing: outgoing, dir: dir, stage: stage, local: local, peer: peer.Identity,
		allowed: d.Allowed, policy: d.Policy, selectedBy: d.SelectedBy, reason: d.Reason,
		tier: d.Tier, byAddr: d.MatchedByAddress, wouldDeny: d.WouldDeny}
}

// serverHandshake names the handshake s takes, for its flow record.
func serverHandshake(s *tokens.ServerHandshake) (handshake, fallback string) {
	if s == nil {
		return "", ""
	}
	if s.TwoMessage() {
		return flowlog.TwoMessage, ""
	}
	return flowlog.ThreeMessage, string(s.FallbackReason())
}

// clientHandshake names the handshake c completed, for its flow record.
func clientHandshake(c *tokens.ClientHandshake) (handshake, fallback string) {
	if c.TwoMessage() {
		return flowlog.TwoMessage, ""
	}
	return flowlog.ThreeMessage, string(c.FallbackReason())
}

// wouldDenyRecord copies an audit-mode denial into its flow record form.
func wouldDenyRecord(w *policy.WouldDeny) *flowlog.WouldDeny {
	if w == nil {
		return nil
	}
	return &flowlog.WouldDeny{Tier: recordTier(w.Tier), Policy: w.Policy, Rule: w.Rule, RuleName: w.RuleName, Reason: w.Reason}
}

// recordTier spells a policy tier as flow records and metrics do:
// "admin", "networkpolicy", "baseline".
func recordTier(tier string) string {
	switch tier {
	case policy.TierAdmin:
		return "admin"
	case policy.TierNetworkPolicy:
		return "networkpolicy"
	case policy.TierBaseline:
		return "baseline"
	}
	return tier
}
