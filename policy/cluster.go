package policy

import (
	"cmp"
	"fmt"

	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/bireme/bireme/identity"
)

// Tiers, in the order they are evaluated (the ClusterNetworkPolicy API's
// names; TierNetworkPolicy is the namespaced networking.k8s.io/v1 tier).
const (
	TierAdmin         = string(cnp.AdminTier)
	TierNetworkPolicy = "NetworkPolicy"
	TierBaseline      = string(cnp.BaselineTier)
)

// action is a ClusterNetworkPolicy rule's action.
type action uint8

const (
	actionAccept action = iota + 1
	actionDeny
	actionPass
)

// String is the action as the API spells it.
func (a action) String() string {
	switch a {
	case actionAccept:
		return string(cnp.ClusterNetworkPolicyRuleActionAccept)
	case actionDeny:
		return string(cnp.ClusterNetworkPolicyRuleActionDeny)
	case actionPass:
		return string(cnp.ClusterNetworkPolicyRuleActionPass)
	}
	return "unknown"
}

// compiledCluster is one ClusterNetworkPolicy: its subject precompiled and
// its rules in written order (the order is their precedence).
type compiledCluster struct {
	name     string
	tier     string // TierAdmin or TierBaseline
	priority int32
	audit    bool
	// The subject: namespaces (subjectPods nil) or pods in namespaces.
	subjectNamespaces *selector
	subjectPods       *selector
	ingressRules      []clusterRule
	egressRules       []clusterRule
}

// clusterRule is one ingress or egress rule: an action on the traffic
// whose peer matches one of peers and whose protocol and port match one of
// ports (allPorts: no protocols listed, so every protocol and port).
type clusterRule struct {
	name   string
	action action
	rule   compiledRule
}

// compileCluster compiles a ClusterNetworkPolicy; errors name the field.
// It refuses what Bireme cannot decide rather than ignoring it: a peer it
// cannot match (nodes, domainNames, or no field at all from a newer CRD)
// ignored in a Deny rule would let through what the rule denies.
func compileCluster(p *cnp.ClusterNetworkPolicy) (*compiledCluster, error) {
	cc := &compiledCluster{name: p.Name, priority: p.Spec.Priority}
	switch p.Spec.Tier {
	case cnp.AdminTier, cnp.BaselineTier:
		cc.tier = string(p.Spec.Tier)
	default:
		return nil, fmt.Errorf("spec.tier: unknown tier %q (want Admin or Baseline)", p.Spec.Tier)
	}
	if p.Spec.Priority < 0 || p.Spec.Priority > 1000 {
		return nil, fmt.Errorf("spec.priority: %d is not in 0..1000", p.Spec.Priority)
	}
	audit, err := auditMode(p.Annotations)
	if err != nil {
		return nil, err
	}
	cc.audit = audit
	s := p.Spec.Subject
	switch {
	case s.Namespaces != nil && s.Pods == nil:
		if cc.subjectNamespaces, err = compileSelector(s.Namespaces, namespaceSide); err != nil {
			return nil, fmt.Errorf("spec.subject.namespaces: %w", err)
		}
	case s.Pods != nil && s.Namespaces == nil:
		if cc.subjectNamespaces, err = compileSelector(&s.Pods.NamespaceSelector, namespaceSide); err != nil {
			return nil, fmt.Errorf("spec.subject.pods.namespaceSelector: %w", err)
		}
		if cc.subjectPods, err = compileSelector(&s.Pods.PodSelector, podSide); err != nil {
			return nil, fmt.Errorf("spec.subject.pods.podSelector: %w", err)
		}
	default:
		return nil, fmt.Errorf("spec.subject: exactly one of namespaces, pods must be set")
	}
	for i, r := range p.Spec.Ingress {
		peers := make([]cnp.ClusterNetworkPolicyEgressPeer, len(r.From))
		for j, f := range r.From {
			peers[j] = cnp.ClusterNetworkPolicyEgressPeer{Namespaces: f.Namespaces, Pods: f.Pods}
		}
		cr, err := compileClusterRule(r.Name, r.Action, peers, r.Protocols)
		if err != nil {
			return nil, fmt.Errorf("spec.ingress[%d]: %w", i, err)
		}
		cc.ingressRules = append(cc.ingressRules, cr)
	}
	for i, r := range p.Spec.Egress {
		cr, err := compileClusterRule(r.Name, r.Action, r.To, r.Protocols)
		if err != nil {
			return nil, fmt.Errorf("spec.egress[%d]: %w", i, err)
		}
		cc.egressRules = append(cc.egressRules, cr)
	}
	return cc, nil
}

// compileClusterRule compiles one rule; ingress peers come converted to
// the egress peer type, of which they are a subset.
func compileClusterRule(name string, act cnp.ClusterNetworkPolicyRuleAction, peers []cnp.ClusterNetworkPolicyEgressPeer, protocols []cnp.ClusterNetworkPolicyProtocol) (clusterRule, error) {
	cr := clusterRule{name: name}
	switch act {
	case cnp.ClusterNetworkPolicyRuleActionAccept:
		cr.action = actionAccept
	case cnp.ClusterNetworkPolicyRuleActionDeny:
		cr.action = actionDeny
	case cnp.ClusterNetworkPolicyRuleActionPass:
		cr.action = actionPass
	default:
		return clusterRule{}, fmt.Errorf("action: unknown action %q (want Accept, Deny or Pass)", act)
	}
	if len(peers) == 0 {
		return clusterRule{}, fmt.Errorf("peers: at least one is required")
	}
	cr.rule.allPorts = len(protocols) == 0
	for i, p := range peers {
		set := 0
		for _, b := range []bool{p.Namespaces != nil, p.Pods != nil, len(p.Networks) > 0, p.Nodes != nil, len(p.DomainNames) > 0} {
			if b {
				set++
			}
		}
		if set != 1 {
			return clusterRule{}, fmt.Errorf("peer %d: exactly one of namespaces, pods, networks must be set", i)
		}
		var err error
		switch {
		case p.Namespaces != nil:
			var cp compiledPeer
			if cp.namespaces, err = compileSelector(p.Namespaces, namespaceSide); err != nil {
				return clusterRule{}, fmt.Errorf("peer %d: namespaces: %w", i, err)
			}
			cp.description = "any pod in " + cp.namespaces.describeNamespaces()
			cr.rule.peers = append(cr.rule.peers, cp)
		case p.Pods != nil:
			var cp compiledPeer
			if cp.namespaces, err = compileSelector(&p.Pods.NamespaceSelector, namespaceSide); err != nil {
				return clusterRule{}, fmt.Errorf("peer %d: pods.namespaceSelector: %w", i, err)
			}
			if cp.pods, err = compileSelector(&p.Pods.PodSelector, podSide); err != nil {
				return clusterRule{}, fmt.Errorf("peer %d: pods.podSelector: %w", i, err)
			}
			cp.description = cp.pods.describePods() + " in " + cp.namespaces.describeNamespaces()
			cr.rule.peers = append(cr.rule.peers, cp)
		case len(p.Networks) > 0:
			for j, n := range p.Networks {
				cidr, err := parsePrefix(string(n))
				if err != nil {
					return clusterRule{}, fmt.Errorf("peer %d: networks[%d]: %w", i, j, err)
				}
				cp := compiledPeer{block: &ipBlock{cidr: cidr}}
				cp.description = describePeer(&cp, "")
				cr.rule.peers = append(cr.rule.peers, cp)
			}
		case p.Nodes != nil:
			return clusterRule{}, fmt.Errorf("peer %d: nodes: not supported by Bireme (node addresses carry no identity)", i)
		default:
			return clusterRule{}, fmt.Errorf("peer %d: domainNames: not supported by Bireme", i)
		}
	}
	for i, pr := range protocols {
		cp, err := compileClusterProtocol(pr)
		if err != nil {
			return clusterRule{}, fmt.Errorf("protocols[%d]: %w", i, err)
		}
		cr.rule.ports = append(cr.rule.ports, cp)
	}
	return cr, nil
}

// compileClusterProtocol compiles one entry of a rule's protocols.
func compileClusterProtocol(pr cnp.ClusterNetworkPolicyProtocol) (compiledPort, error) {
	var (
		proto protocol
		port  *cnp.Port
		set   int
	)
	if pr.TCP != nil {
		proto, port, set = protoTCP, pr.TCP.DestinationPort, set+1
	}
	if pr.UDP != nil {
		proto, port, set = protoUDP, pr.UDP.DestinationPort, set+1
	}
	if pr.SCTP != nil {
		proto, port, set = protoSCTP, pr.SCTP.DestinationPort, set+1
	}
	if pr.DestinationNamedPort != "" {
		set++
	}
	if set != 1 {
		return compiledPort{}, fmt.Errorf("exactly one of tcp, udp, sctp, destinationNamedPort must be set")
	}
	if pr.DestinationNamedPort != "" {
		// The named port's own protocol: whatever the destination
		// declares the name with.
		return compiledPort{name: pr.DestinationNamedPort, anyProtocol: true}, nil
	}
	cp := compiledPort{protocol: proto}
	switch {
	case port == nil:
		return compiledPort{}, fmt.Errorf("%s.destinationPort: Required value", proto)
	case port.Range != nil && port.Number == 0:
		if port.Range.Start < 1 || port.Range.End > 65535 || port.Range.Start >= port.Range.End {
			return compiledPort{}, fmt.Errorf("%s.destinationPort.range: want 1 <= start < end <= 65535", proto)
		}
		cp.from, cp.to = uint16(port.Range.Start), uint16(port.Range.End)
	case port.Range == nil && port.Number >= 1 && port.Number <= 65535:
		cp.from, cp.to = uint16(port.Number), uint16(port.Number)
	default:
		return compiledPort{}, fmt.Errorf("%s.destinationPort: exactly one of number (1-65535), range must be set", proto)
	}
	return cp, nil
}

// selects reports whether the policy's subject is local.
func (cc *compiledCluster) selects(local *identity.Identity) bool {
	if !cc.subjectNamespaces.matchesNamespace(local) {
		return false
	}
	return cc.subjectPods == nil || cc.subjectPods.matchesPod(local)
}

// rules returns the rules for dir.
func (cc *compiledCluster) rules(dir Direction) []clusterRule {
	if dir == Egress {
		return cc.egressRules
	}
	return cc.ingressRules
}

// compareCluster orders a tier: lower priority value first, then by name
// (the API leaves equal priorities to the implementation; a fixed order
// keeps decisions reproducible).
func compareCluster(a, b *compiledCluster) int {
	if c := cmp.Compare(a.priority, b.priority); c != 0 {
		return c
	}
	return cmp.Compare(a.name, b.name)
}

// ruleRef names a rule of a ClusterNetworkPolicy in reasons:
// `ClusterNetworkPolicy deny-x (Admin tier, priority 10) ingress rule 0 "block"`.
func (cc *compiledCluster) ruleRef(dir Direction, i int) string {
	s := fmt.Sprintf("ClusterNetworkPolicy %s (%s tier, priority %d) %s rule %d", cc.name, cc.tier, cc.priority, dir, i)
	if n := cc.rules(dir)[i].name; n != "" {
		s += fmt.Sprintf(" %q", n)
	}
	return s
}
