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
	// enforcer, in which case only ipBlock rules can match it.
	Identity *identity.Identity
	// Addr is the peer address as seen by this node (after NAT). It is
	// consulted only when Identity is nil: addresses carry no trust.
	Addr netip.Addr
}

// Decision is a verdict and why.
type Decision struct {
	Allowed bool `json:"allowed"`
	// Policy is "namespace/name" of the policy whose rule allowed; "" otherwise.
	Policy string `json:"policy,omitempty"`
	// Rule is the index of that rule in the policy's ingress or egress list,
	// -1 if none.
	Rule int `json:"rule"`
	// Match names what in that rule matched the peer: the facts of the
	// matching from/to entry ("service account web in namespace shop"),
	// or that the rule names no peers. Empty when no rule allowed.
	Match string `json:"match,omitempty"`
	// SelectedBy lists the policies selecting local in this direction
	// ("ns/name"), sorted. Shared with the cache: callers must not modify it.
	SelectedBy []string `json:"selectedBy,omitempty"`
	// Reason is one human sentence.
	Reason string `json:"reason"`
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

// decisionKey is everything a decision depends on. For an identified peer
// the address is left zero (it cannot change the answer); for an anonymous
// peer the digest is zero and the address decides.
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

// selected is the policies selecting a workload in one direction.
type selected struct {
	policies []*compiledPolicy
	names    []string
}

// Decide implements [Decider]. A repeated question is one cache lookup
// (plus hashing the two identities); a new one walks only the policies of
// the local workload's namespace that select it.
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
	if peer.Identity != nil {
		key.peer = keyOf(peer.Identity)
	} else {
		key.anon = true
		key.addr = peer.Addr.Unmap()
		peer.Addr = key.addr
	}
	if d, ok := e.decisions.get(key); ok {
		return d
	}
	sel, ok := e.selections.get(key.local)
	if !ok {
		sel = e.selectionFor(local)
		e.selections.put(key.local, sel)
	}
	d := e.decide(local, sel, peer, dir, port, p)
	e.decisions.put(key, d)
	return d
}

// decide computes a decision from the policies selecting local.
func (e *Engine) decide(local *identity.Identity, sel *selection, peer Peer, dir Direction, port uint16, proto protocol) Decision {
	s := &sel.ingress
	if dir == Egress {
		s = &sel.egress
	}
	if len(s.policies) == 0 {
		return Decision{Allowed: true, Rule: -1, Reason: fmt.Sprintf("allowed: no policy selects %s for %s", local.Ref(), dir)}
	}
	m := ruleMatch{local: local, peer: peer, port: port, proto: proto, dest: local}
	if dir == Egress {
		m.dest = peer.Identity
	}
	for _, cp := range s.policies {
		rules := cp.ingressRules
		if dir == Egress {
			rules = cp.egressRules
		}
		m.policyNamespace = cp.namespace
		for i := range rules {
			if match, ok := m.matches(&rules[i]); ok {
				why := "peer matched by " + match
				if match == anyPeerDescription {
					why = "the rule allows any peer"
				}
				return Decision{
					Allowed:    true,
					Policy:     cp.name,
					Rule:       i,
					Match:      match,
					SelectedBy: s.names,
					Reason:     fmt.Sprintf("allowed by %s %s rule %d: %s", cp.name, dir, i, why),
				}
			}
		}
	}
	return Decision{
		Rule:       -1,
		SelectedBy: s.names,
		Reason:     "denied: selected by " + strings.Join(s.names, ", ") + " and no rule allows",
	}
}

// selectionFor finds the policies of local's namespace whose podSelector
// matches local's labels, split by the policy types they enforce.
func (e *Engine) selectionFor(local *identity.Identity) *selection {
	sel := &selection{}
	for _, cp := range e.byNamespace[local.Namespace] {
		if !cp.podSelector.matchesPod(local) {
			continue
		}
		if cp.ingress {
			sel.ingress.policies = append(sel.ingress.policies, cp)
			sel.ingress.names = append(sel.ingress.names, cp.name)
		}
		if cp.egress {
			sel.egress.policies = append(sel.egress.policies, cp)
			sel.egress.names = append(sel.egress.names, cp.name)
		}
	}
	return sel
}

// ruleMatch is one question asked of rules.
type ruleMatch struct {
	local           *identity.Identity
	peer            Peer
	port            uint16
	proto           protocol
	dest            *identity.Identity // resolves named ports; may be nil
	policyNamespace string
}

// matches: a rule allows when some peer AND some port match. It returns
// the description of the peer entry that matched.
func (m *ruleMatch) matches(r *compiledRule) (match string, ok bool) {
	if !r.allPorts && !m.anyPort(r.ports) {
		return "", false
	}
	if r.allPeers {
		return anyPeerDescription, true
	}
	for i := range r.peers {
		if m.peerMatches(&r.peers[i]) {
			return r.peers[i].description, true
		}
	}
	return "", false
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

// peerMatches applies one NetworkPolicyPeer, with the product rules:
// ipBlock matches only peers without identity; a podSelector-only peer
// ("pods of this namespace") matches only same-cluster peers; and a
// namespaceSelector matches a peer of another cluster only when it names
// the cluster (identity.LabelCluster), so that a policy written for one
// cluster never admits a federated cluster's workloads by their namespace
// labels, which that cluster chose.
func (m *ruleMatch) peerMatches(p *compiledPeer) bool {
	id := m.peer.Identity
	if p.block != nil {
		return id == nil && p.block.contains(m.peer.Addr)
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
