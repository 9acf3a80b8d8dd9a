package enforcer

import (
	"net/netip"
	"time"

	"github.com/bireme/bireme/policy"
)

// expectsEnforcer says whether a peer at addr is expected to run an
// enforcer, i.e. lies in Config.IdentityNetworks (all addresses when that
// is nil). Only such peers are sent the workload's token: it names the
// workload and all its labels, which must not leave for external hosts.
func (e *Enforcer) expectsEnforcer(addr netip.Addr) bool {
	if e.cfg.IdentityNetworks == nil {
		return true
	}
	addr = addr.Unmap()
	for _, n := range e.cfg.IdentityNetworks {
		if n.Contains(addr) {
			return true
		}
	}
	return false
}

// egressPlainSYN handles a SYN to a destination outside the identity
// networks: nothing there can prove an identity, so the client's egress
// policy is decided now, on the destination address alone (only ipBlock
// and peer-less rules can allow it), and the SYN leaves unchanged, with no
// token. Deciding here rather than at the SYN-ACK means a denied
// destination never even sees the SYN.
func (q *queue) egressPlainSYN(p *packet, key connKey) verdict {
	local := q.wl.id.Load()
	d := q.e.cfg.Policy.Decide(local, policy.Peer{Addr: p.dst}, policy.Egress, p.dport, "TCP")
	q.record(p, outcome{outgoing: true, dir: policy.Egress, stage: stageSYN, local: local,
		allowed: d.Allowed, policy: d.Policy, selectedBy: d.SelectedBy,
		tier: d.Tier, byAddr: d.MatchedByAddress, wouldDeny: d.WouldDeny,
		reason: d.Reason + " (destination outside the identity networks: plain SYN, no token, decided by address)"})
	if !d.Allowed {
		return drop
	}
	if !q.wl.conns.put(key, &conn{expires: time.Now().Add(q.e.cfg.HandshakeTimeout), plain: true}) {
		q.record(p, outcome{outgoing: true, dir: policy.Egress, stage: stageSYN, local: local,
			reason: "denied: too many handshakes in progress"})
		return drop
	}
	return verdict{accept: true}
}

// ingressPlainSYNACK completes a connection egressPlainSYN allowed: the
// SYN-ACK must carry no token (we sent none, so one can only be a
// confusion or an attempt to pass for a peer we did not dial), and the
// connection is then Authorized.
func (q *queue) ingressPlainSYNACK(p *packet) verdict {
	if p.token() != nil || p.proof() != nil {
		q.record(p, outcome{dir: policy.Egress, stage: stageSYNACK, local: q.wl.id.Load(),
			reason: "denied: a host outside the identity networks answered with a token; none was sent"})
		return drop
	}
	return verdict{accept: true, mark: q.e.cfg.Layout.Authorized}
}
