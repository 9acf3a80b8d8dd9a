package policy

import (
	"crypto/sha256"
	"fmt"
	"net/netip"
	"strings"

	"github.com/bireme/bireme/identity"
)

// Direction is the direction of a connection relative to the local workload.
type Direction uint8

const (
	// Ingress: the peer connects to the local workload (local is the server).
	Ingress Direction = iota
	// Egress: the local workload connects to the peer (local is the client).
	Egress
)

// String returns "ingress" or "egress".
func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// MarshalText makes a Direction appear as "ingress"/"egress" in JSON.
func (d Direction) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Peer is the other end of a connection.
type Peer struct {
	// Identity is the peer's verified identity; nil when the peer runs no
	// enforcer, in which case only address rules (ipBlock, networks) and
	// rules naming no peers can match it.
	Identity *identity.Identity
	// Addr is the peer address as seen by this node (after NAT). ipBlock
	// rules match it, for identified peers too unless the engine was
	// compiled with [Options.IPBlockIdentityOnly].
	Addr netip.Addr
}

// Decision is a verdict and why.
type Decision struct {
	Allowed bool `json:"allowed"`
	// Tier is the tier that decided: TierAdmin, TierNetworkPolicy or
	// TierBaseline; "" when no policy did (nothing selects the workload,
	// or every applicable tier passed).
	Tier string `json:"tier,omitempty"`
	// Policy is the policy whose rule decided: "namespace/name" of a
	// NetworkPolicy whose rule allowed, or the name of the
	// ClusterNetworkPolicy whose rule accepted or denied; "" otherwise.
	Policy string `json:"policy,omitempty"`
	// Rule is the index of that rule in the policy's ingress or egress list,
	// -1 if none.
	Rule int `json:"rule"`
	// RuleName is a ClusterNetworkPolicy rule's name, if it has one.
	RuleName string `json:"ruleName,omitempty"`
	// Match names what in that rule matched the peer: the facts of the
	// matching from/to entry ("service account web in namespace shop"),
	// or that the rule names no peers. Empty when no rule decided.
	Match string `json:"match,omitempty"`
	// MatchedByAddress: the rule matched the peer by its address (an
	// ipBlock or networks entry), not by its identity.
	MatchedByAddress bool `json:"matchedByAddress,omitempty"`
	// SelectedBy lists the policies selecting local in this direction
	// ("ns/name"), sorted, when the NetworkPolicy tier decided; the
	// deciding ClusterNetworkPolicy's name when an admin or baseline rule
	// did. Shared with the cache: callers must not modify it.
	SelectedBy []string `json:"selectedBy,omitempty"`
	// Reason is one human sentence.
	Reason string `json:"reason"`
	// IfEnforced is the decision as if the policies in audit mode were
	// enforced; nil when none applies to local in this direction.
	IfEnforced *Decision `json:"ifEnforced,omitempty"`
	// WouldDeny is set on an allowed decision that the policies in audit
	// mode would deny.
	WouldDeny *WouldDeny `json:"wouldDeny,omitempty"`
}

// Decider decides whether a connection is allowed.
type Decider interface {
	// Decide: local is the protected workload on this node. For Ingress,
	// local is the server and port is the local (destination) port; for
	// Egress, local is the client and port is the peer's destination port.
	// protocol is "TCP" (also "UDP", "SCTP"; "" means TCP), or
	// ProtocolICMP or ProtocolOtherIP, which have no ports (port is
	// ignored) and which only rules without ports allow. Named ports
	// resolve against the destination workload's identity Ports (local for
	// ingress, peer.Identity for egress).
	Decide(local *identity.Identity, peer Peer, dir Direction, port uint16, protocol string) Decision
}

var _ Decider = (*Engine)(nil)

// identityKey names an identity in caches (see keyOf).
type identityKey [sha256.Size]byte

// decisionKey is everything a decision depends on. For an anonymous peer
// the digest is zero and the address decides; for an identified peer the
// address is part of the key too (address rules match it), except in the
// strict mode, where it cannot change the answer and is left zero.
type decisionKey struct {
	local identityKey
	peer  identityKey
	addr  netip.Addr
	anon  bool
	dir   Direction
	port  uint16
	proto protocol
}

// selection is the set of policies selecting one local identity, per
// direction, with the names ready for Decisions.
type selection struct {
	ingress, egress selected
}

// of returns the policies selecting for dir.
func (s *selection) of(dir Direction) *selected {
	if dir == Egress {
		return &s.egress
	}
	return &s.ingress
}

// selected is the policies selecting a workload in one direction, per
// tier, in evaluation order.
type selected struct {
	admin, baseline []*compiledCluster
	policies        []*compiledPolicy
	names           []string // of policies
	enforcedNames   []string // of policies not in audit mode
	audit           bool     // some policy above is in audit mode
}

// Decide implements [Decider]. A repeated question is one cache lookup
// (plus hashing the two identities); a new one walks only the policies
// that select the local workload.
func (e *Engine) Decide(local *identity.Identity, peer Peer, dir Direction, port uint16, proto string) Decision {
	if local == nil {
		return Decision{Rule: -1, Reason: "denied: no local identity"}
	}
	p, ok := parseDecideProtocol(proto)
	if !ok {
		return Decision{Rule: -1, Reason: fmt.Sprintf("denied: unsupported protocol %q", proto)}
	}
	if dir != Ingress && dir != Egress {
		return Decision{Rule: -1, Reason: fmt.Sprintf("denied: unknown %s", dir)}
	}
	if p == protoICMP || p == protoOtherIP {
		port = 0 // they have none; one cache entry per peer, not per number
	}
	key := decisionKey{local: keyOf(local), dir: dir, port: port, proto: p}
	peer.Addr = peer.Addr.Unmap()
	if peer.Identity != nil {
		key.peer = keyOf(peer.Identity)
		if !e.opts.IPBlockIdentityOnly {
			key.addr = peer.Addr // address rules may match it
		}
	} else {
		key.anon = true
		key.addr = peer.Addr
	}
	if d, ok := e.decisions.get(key); ok {
		return d
	}
	sel, ok := e.selections.get(key.local)
	if !ok {
		sel = e.selectionFor(local)
		e.selections.put(key.local, sel)
	}
	d := e.decideFresh(local, sel, peer, dir, port, p)
	e.decisions.put(key, d)
	return d
}

// decideFresh computes a decision from the policies selecting local:
// the enforced outcome and, when policies in audit mode apply, the
// outcome as if they were enforced.
func (e *Engine) decideFresh(local *identity.Identity, sel *selection, peer Peer, dir Direction, port uint16, proto protocol) Decision {
	s := &sel.ingress
	if dir == Egress {
		s = &sel.egress
	}
	m := ruleMatch{local: local, peer: peer, port: port, proto: proto, dest: local, addrForAll: !e.opts.IPBlockIdentityOnly}
	if dir == Egress {
		m.dest = peer.Identity
	}
	d := e.decide(s, &m, dir, false)
	if s.audit {
		a := e.decide(s, &m, dir, true)
		d.IfEnforced = &a
		if d.Allowed && !a.Allowed {
			w := &WouldDeny{Tier: a.Tier, Policy: a.Policy, Rule: a.Rule, RuleName: a.RuleName, Reason: a.Reason}
			if w.Policy == "" {
				// Isolation by a NetworkPolicy in audit mode: name the
				// audited policies that selected local.
				var audited []string
				for _, cp := range s.policies {
					if cp.audit {
						audited = append(audited, cp.name)
					}
				}
				w.Policy = strings.Join(audited, ", ")
			}
			d.WouldDeny = w
			d.Reason += " (audit mode: would be " + a.Reason + ")"
		}
	}
	return d
}

// decide computes a decision from the policies selecting local in one
// direction, tier by tier: Admin, then NetworkPolicy, then Baseline, then
// the Kubernetes default (allowed). withAudit includes the policies in
// audit mode, as if they were enforced.
func (e *Engine) decide(s *selected, m *ruleMatch, dir Direction, withAudit bool) Decision {
	var passed string // the admin rule that passed, for the reason
	if d, pass, ok := clusterTier(s.admin, m, dir, withAudit); ok {
		return d
	} else if pass != "" {
		passed = " (" + pass + ")"
	}
	names := s.enforcedNames
	if withAudit {
		names = s.names
	}
	if len(names) > 0 {
		for _, cp := range s.policies {
			if cp.audit && !withAudit {
				continue
			}
			rules := cp.ingressRules
			if dir == Egress {
				rules = cp.egressRules
			}
			m.policyNamespace = cp.namespace
			for i := range rules {
				if match, byAddr, ok := m.matches(&rules[i]); ok {
					why := "peer matched by " + match
					if match == anyPeerDescription {
						why = "the rule allows any peer"
					}
					return Decision{
						Allowed:          true,
						Tier:             TierNetworkPolicy,
						Policy:           cp.name,
						Rule:             i,
						Match:            match,
						MatchedByAddress: byAddr,
						SelectedBy:       names,
						Reason:           fmt.Sprintf("allowed by %s %s rule %d: %s%s", cp.name, dir, i, why, m.identifiedNote(byAddr)) + passed,
					}
				}
			}
		}
		return Decision{
			Tier:       TierNetworkPolicy,
			Rule:       -1,
			SelectedBy: names,
			Reason:     "denied: selected by " + strings.Join(names, ", ") + " and no rule allows" + passed,
		}
	}
	if d, pass, ok := clusterTier(s.baseline, m, dir, withAudit); ok {
		d.Reason += passed
		return d
	} else if pass != "" {
		passed += " (" + pass + ")"
	}
	return Decision{Allowed: true, Rule: -1, Reason: fmt.Sprintf("allowed: no policy selects %s for %s", m.local.Ref(), dir) + passed}
}

// clusterTier applies one ClusterNetworkPolicy tier: the first rule that
// matches, in policy then rule order, decides (Accept, Deny) or ends the
// tier (Pass, described in pass). ok is false when the tier made no final
// decision.
func clusterTier(tier []*compiledCluster, m *ruleMatch, dir Direction, withAudit bool) (d Decision, pass string, ok bool) {
	for _, cc := range tier {
		if cc.audit && !withAudit {
			continue
		}
		rules := cc.rules(dir)
		for i := range rules {
			match, byAddr, ok := m.matches(&rules[i].rule)
			if !ok {
				continue
			}
			ref := cc.ruleRef(dir, i)
			why := ": peer matched by " + match + m.identifiedNote(byAddr)
			if rules[i].action == actionPass {
				return Decision{}, "passed by " + ref + why, false
			}
			d := Decision{
				Allowed:          rules[i].action == actionAccept,
				Tier:             cc.tier,
				Policy:           cc.name,
				Rule:             i,
				RuleName:         rules[i].name,
				Match:            match,
				MatchedByAddress: byAddr,
				SelectedBy:       []string{cc.name},
			}
			if d.Allowed {
				d.Reason = "allowed by " + ref + why
			} else {
				d.Reason = "denied by " + ref + why
			}
			return d, "", true
		}
	}
	return Decision{}, "", false
}

// selectionFor finds the policies that select local: the
// ClusterNetworkPolicies whose subject it is and that have rules in a
// direction, and the NetworkPolicies of local's namespace whose
// podSelector matches local's labels, split by the policy types they
// enforce.
func (e *Engine) selectionFor(local *identity.Identity) *selection {
	sel := &selection{}
	for _, cp := range e.byNamespace[local.Namespace] {
		if !cp.podSelector.matchesPod(local) {
			continue
		}
		if cp.ingress {
			sel.ingress.addPolicy(cp)
		}
		if cp.egress {
			sel.egress.addPolicy(cp)
		}
	}
	for _, tier := range [][]*compiledCluster{e.admin, e.baseline} {
		for _, cc := range tier {
			if !cc.selects(local) {
				continue
			}
			if len(cc.ingressRules) > 0 {
				sel.ingress.addCluster(cc)
			}
			if len(cc.egressRules) > 0 {
				sel.egress.addCluster(cc)
			}
		}
	}
	return sel
}

func (s *selected) addPolicy(cp *compiledPolicy) {
	s.policies = append(s.policies, cp)
	s.names = append(s.names, cp.name)
	if cp.audit {
		s.audit = true
	} else {
		s.enforcedNames = append(s.enforcedNames, cp.name)
	}
}

func (s *selected) addCluster(cc *compiledCluster) {
	if cc.tier == TierAdmin {
		s.admin = append(s.admin, cc)
	} else {
		s.baseline = append(s.baseline, cc)
	}
	s.audit = s.audit || cc.audit
}

// ruleMatch is one question asked of rules.
type ruleMatch struct {
	local           *identity.Identity
	peer            Peer
	port            uint16
	proto           protocol
	dest            *identity.Identity // resolves named ports; may be nil
	policyNamespace string
	// addrForAll: address rules match identified peers too (the default,
	// upstream semantics).
	addrForAll bool
}

// identifiedNote adds, to a match by address of an identified peer, who
// the peer proved to be: the rule trusted its address, not its identity.
func (m *ruleMatch) identifiedNote(byAddr bool) string {
	if !byAddr || m.peer.Identity == nil {
		return ""
	}
	return fmt.Sprintf(" (peer %s identified, matched by address)", m.peer.Identity.Ref())
}

// matches: a rule allows when some peer AND some port match. It returns
// the description of the peer entry that matched and whether it matched
// by address.
func (m *ruleMatch) matches(r *compiledRule) (match string, byAddr, ok bool) {
	if !r.allPorts && !m.anyPort(r.ports) {
		return "", false, false
	}
	if r.allPeers {
		return anyPeerDescription, false, true
	}
	for i := range r.peers {
		if m.peerMatches(&r.peers[i]) {
			return r.peers[i].description, r.peers[i].block != nil, true
		}
	}
	return "", false, false
}

func (m *ruleMatch) anyPort(ports []compiledPort) bool {
	for i := range ports {
		if m.portMatches(&ports[i]) {
			return true
		}
	}
	return false
}

// portMatches: protocol must match; then any port, a range, or a named port
// resolved on the destination identity (a name it does not define matches
// nothing).
func (m *ruleMatch) portMatches(p *compiledPort) bool {
	if p.anyProtocol {
		if m.dest == nil || m.proto == protoICMP || m.proto == protoOtherIP {
			return false
		}
		n, ok := m.dest.NamedPort(p.name, m.proto.String())
		return ok && n == m.port
	}
	if p.protocol != m.proto {
		return false
	}
	switch {
	case p.anyPort:
		return true
	case p.name != "":
		if m.dest == nil {
			return false
		}
		n, ok := m.dest.NamedPort(p.name, p.protocol.String())
		return ok && n == m.port
	default:
		return p.from <= m.port && m.port <= p.to
	}
}

// peerMatches applies one peer, with the product rules: an address block
// matches the peer's address (for identified peers too, unless in the
// strict identity-only mode); a podSelector-only peer ("pods of this
// namespace") matches only same-cluster peers; and a namespaceSelector
// matches a peer of another cluster only when it names the cluster
// (identity.LabelCluster), so that a policy written for one cluster never
// admits a federated cluster's workloads by their namespace labels, which
// that cluster chose.
func (m *ruleMatch) peerMatches(p *compiledPeer) bool {
	id := m.peer.Identity
	if p.block != nil {
		return (id == nil || m.addrForAll) && p.block.contains(m.peer.Addr)
	}
	if id == nil {
		return false
	}
	if p.namespaces == nil {
		return id.Cluster == m.local.Cluster && id.Namespace == m.policyNamespace && p.pods.matchesPod(id)
	}
	if id.Cluster != m.local.Cluster && !p.namespaces.namesCluster {
		return false
	}
	return p.namespaces.matchesNamespace(id) && (p.pods == nil || p.pods.matchesPod(id))
}

// contains: inside cidr and in no except.
func (b *ipBlock) contains(a netip.Addr) bool {
	if !a.IsValid() || !b.cidr.Contains(a) {
		return false
	}
	for _, ex := range b.except {
		if ex.Contains(a) {
			return false
		}
	}
	return true
}
