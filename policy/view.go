package policy

import (
	"fmt"

	"github.com/bireme/bireme/identity"
)

// SelectingPolicy is a policy that selects a workload in one direction,
// with its rules for that direction in words: what a compliance report
// shows as "who may reach this workload, on which ports".
type SelectingPolicy struct {
	// Tier is TierAdmin, TierNetworkPolicy or TierBaseline.
	Tier   string `json:"tier"`
	Policy string `json:"policy"` // "namespace/name" of a NetworkPolicy, the name of a ClusterNetworkPolicy
	// Priority orders a ClusterNetworkPolicy within its tier (lower first).
	Priority int32 `json:"priority,omitempty"`
	// Audit: the policy is in audit mode and decides nothing yet.
	Audit bool       `json:"audit,omitempty"`
	Rules []RuleView `json:"rules"` // empty: the policy allows nothing in this direction
}

// RuleView is one rule in words. A NetworkPolicy rule allows a connection
// when the peer matches one of Peers and the port one of Ports; a
// ClusterNetworkPolicy rule does its Action to it.
type RuleView struct {
	Index int `json:"index"`
	// Name and Action are a ClusterNetworkPolicy rule's ("Accept",
	// "Deny", "Pass"); empty for a NetworkPolicy rule, which allows.
	Name   string   `json:"name,omitempty"`
	Action string   `json:"action,omitempty"`
	Peers  []string `json:"peers"` // e.g. "service account web in namespace shop"; ["any peer"] when the rule names none
	Ports  []string `json:"ports"` // e.g. "TCP 5432 (db)"; ["every port"] when the rule names none
}

// SelectingTiers returns every policy that selects local for dir, in the
// order Decide applies them: the Admin tier's ClusterNetworkPolicies (by
// priority), the NetworkPolicies (by name), the Baseline tier's.
func (e *Engine) SelectingTiers(local *identity.Identity, dir Direction) []SelectingPolicy {
	s := e.selectionFor(local).of(dir)
	var out []SelectingPolicy
	for _, cc := range s.admin {
		out = append(out, e.clusterView(cc, local, dir))
	}
	out = append(out, e.Selecting(local, dir)...)
	for _, cc := range s.baseline {
		out = append(out, e.clusterView(cc, local, dir))
	}
	return out
}

func (e *Engine) clusterView(cc *compiledCluster, local *identity.Identity, dir Direction) SelectingPolicy {
	sp := SelectingPolicy{Tier: cc.tier, Policy: cc.name, Priority: cc.priority, Audit: cc.audit, Rules: []RuleView{}}
	for i, r := range cc.rules(dir) {
		v := viewRule(i, &r.rule, local, dir, e.opts.IPBlockIdentityOnly)
		v.Name, v.Action = r.name, r.action.String()
		sp.Rules = append(sp.Rules, v)
	}
	return sp
}

// Isolated reports whether every connection of local in dir is decided by
// a rule someone wrote, none by the default "allow": a NetworkPolicy in
// force selects it (its rules are all that is allowed), or a
// ClusterNetworkPolicy in force denies every peer on every port before any
// rule could pass the connection on to an open tier. A catch-all denial
// needs networks 0.0.0.0/0 and ::/0 with address rules matching identified
// peers (the default): a `namespaces: {}` peer leaves addresses outside the
// cluster and pods of other clusters open. An Admin tier catch-all behind a
// Pass rule does not isolate on its own: what passes reaches the lower
// tiers.
func (e *Engine) Isolated(local *identity.Identity, dir Direction) bool {
	s := e.selectionFor(local).of(dir)
	return e.denyAllBeforePass(s.admin, dir) || len(s.enforcedNames) > 0 || e.denyAllBeforePass(s.baseline, dir)
}

// denyAllBeforePass walks a tier's rules in evaluation order: true at a
// catch-all Deny, false at the first Pass or at the end.
func (e *Engine) denyAllBeforePass(tier []*compiledCluster, dir Direction) bool {
	for _, cc := range tier {
		if cc.audit {
			continue
		}
		for _, r := range cc.rules(dir) {
			switch {
			case r.action == actionPass:
				return false
			case r.action == actionDeny && e.everyPeerEveryPort(&r.rule):
				return true
			}
		}
	}
	return false
}

// everyPeerEveryPort: the rule matches every connection.
func (e *Engine) everyPeerEveryPort(r *compiledRule) bool {
	if !r.allPorts || e.opts.IPBlockIdentityOnly {
		return r.allPorts && r.allPeers
	}
	if r.allPeers {
		return true
	}
	var v4, v6 bool
	for _, p := range r.peers {
		if p.block == nil || len(p.block.except) > 0 || p.block.cidr.Bits() != 0 {
			continue
		}
		v4 = v4 || p.block.cidr.Addr().Is4()
		v6 = v6 || p.block.cidr.Addr().Is6()
	}
	return v4 && v6
}

// Selecting returns the policies that select local for dir (in name
// order), as Decide would apply them, with their rules described. For
// ingress, a named port is resolved on local, the destination; for egress
// it depends on the peer and stays a name. A nil or empty result means no
// policy isolates local in that direction.
func (e *Engine) Selecting(local *identity.Identity, dir Direction) []SelectingPolicy {
	s := e.selectionFor(local).of(dir)
	out := make([]SelectingPolicy, 0, len(s.policies))
	for _, cp := range s.policies {
		rules := cp.ingressRules
		if dir == Egress {
			rules = cp.egressRules
		}
		sp := SelectingPolicy{Tier: TierNetworkPolicy, Policy: cp.name, Audit: cp.audit, Rules: []RuleView{}}
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
