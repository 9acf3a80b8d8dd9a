package policy

import (
	"fmt"

	"github.com/bireme/bireme/identity"
)

// SelectingPolicy is a policy that selects a workload in one direction,
// with its rules for that direction in words: what a compliance report
// shows as "who may reach this workload, on which ports".
type SelectingPolicy struct {
	Policy string     `json:"policy"` // "namespace/name"
	Rules  []RuleView `json:"rules"`  // empty: the policy allows nothing in this direction
}

// RuleView is one rule in words. The rule allows a connection when the
// peer matches one of Peers and the port one of Ports.
type RuleView struct {
	Index int      `json:"index"`
	Peers []string `json:"peers"` // e.g. "service account web in namespace shop"; ["any peer"] when the rule names none
	Ports []string `json:"ports"` // e.g. "TCP 5432 (db)"; ["every port"] when the rule names none
}

// Selecting returns the policies that select local for dir (in name
// order), as Decide would apply them, with their rules described. For
// ingress, a named port is resolved on local, the destination; for egress
// it depends on the peer and stays a name. A nil or empty result means no
// policy isolates local in that direction.
func (e *Engine) Selecting(local *identity.Identity, dir Direction) []SelectingPolicy {
	sel := e.selectionFor(local)
	s := sel.ingress
	if dir == Egress {
		s = sel.egress
	}
	out := make([]SelectingPolicy, 0, len(s.policies))
	for _, cp := range s.policies {
		rules := cp.ingressRules
		if dir == Egress {
			rules = cp.egressRules
		}
		sp := SelectingPolicy{Policy: cp.name, Rules: []RuleView{}}
		for i := range rules {
			sp.Rules = append(sp.Rules, viewRule(i, &rules[i], local, dir, e.opts.IPBlockIdentityOnly))
		}
		out = append(out, sp)
	}
	return out
}

// viewRule describes one compiled rule.
func viewRule(index int, r *compiledRule, local *identity.Identity, dir Direction, identityOnly bool) RuleView {
	v := RuleView{Index: index}
	if r.allPeers {
		v.Peers = []string{anyPeerDescription}
	}
	for i := range r.peers {
		d := r.peers[i].description
		if r.peers[i].block != nil && identityOnly {
			// A product rule a reader of the policy would not expect.
			d += " (peers without identity only)"
		}
		v.Peers = append(v.Peers, d)
	}
	if r.allPorts {
		v.Ports = []string{"every port"}
	}
	for i := range r.ports {
		p := &r.ports[i]
		d := p.describe()
		if p.name != "" && dir == Ingress {
			if n, ok := local.NamedPort(p.name, p.protocol.String()); ok {
				d = fmt.Sprintf("%s %d (%s)", p.protocol, n, p.name)
			} else {
				d += " (not defined by " + local.Ref() + ": matches nothing)"
			}
		}
		v.Ports = append(v.Ports, d)
	}
	return v
}
