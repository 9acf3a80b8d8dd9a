package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Engine is an immutable, compiled policy set. It is safe for concurrent
// use; to change policy, compile a new Engine and swap it in a [Live].
// Dropping an Engine drops its caches, so a swap is also the invalidation.
type Engine struct {
	// byNamespace holds each namespace's policies sorted by name, so the
	// policies that can select a workload are one map lookup away.
	byNamespace map[string][]*compiledPolicy
	// admin and baseline are the ClusterNetworkPolicy tiers, each in
	// evaluation order (compareCluster).
	admin, baseline []*compiledCluster
	opts            Options
	objs            Objects
	decisions       *boundedCache[decisionKey, Decision]
	selections      *boundedCache[identityKey, *selection]
}

// compiledPolicy is one NetworkPolicy with its selectors precompiled and its
// policyTypes resolved.
type compiledPolicy struct {
	name         string // "namespace/name"
	namespace    string
	audit        bool // bireme.io/enforcement: audit
	podSelector  *selector
	ingress      bool // policyTypes includes Ingress (after defaulting)
	egress       bool // policyTypes includes Egress (after defaulting)
	ingressRules []compiledRule
	egressRules  []compiledRule
}

// compiledRule is one ingress or egress rule: the traffic it allows is
// (any peer in peers) AND (any port in ports).
type compiledRule struct {
	allPeers bool // from/to absent or empty: every source/destination
	peers    []compiledPeer
	allPorts bool // ports absent or empty: every port and protocol
	ports    []compiledPort
}

// compiledPeer is one NetworkPolicyPeer. Exactly one of the forms is used:
// a selector pair (either may be nil = not specified) or an ipBlock.
type compiledPeer struct {
	pods       *selector // nil: podSelector not specified
	namespaces *selector // nil: namespaceSelector not specified
	block      *ipBlock
	// description names the facts a peer must have, for decisions and
	// reports ("service account web in namespace shop").
	description string
}

// ipBlock is a CIDR minus exceptions, masked and unmapped.
type ipBlock struct {
	cidr   netip.Prefix
	except []netip.Prefix
}

// compiledPort is one NetworkPolicyPort.
type compiledPort struct {
	protocol protocol
	anyPort  bool   // port not specified: all ports of the protocol
	name     string // named port, resolved against the destination identity
	// anyProtocol: a ClusterNetworkPolicy destinationNamedPort, which
	// matches the name with whatever protocol the destination declares it.
	anyProtocol bool
	from, to    uint16 // numeric port or [port, endPort]
}

// Cache bounds. A cached decision costs ~380 bytes of heap with its key and
// map overhead (BenchmarkCacheMemory); 32 Ki of them is ~12 MB at most, far
// above the working set of (workload, peer, port) triples of one node.
const (
	decisionCacheSize  = 1 << 15
	selectionCacheSize = 1 << 12
)

// Options change how policy is compiled.
type Options struct {
	// IPBlockIdentityOnly is the strict mode: an ipBlock (and a
	// ClusterNetworkPolicy networks peer) matches only peers WITHOUT an
	// identity, so an identified workload is admitted by its signed labels
	// alone and never by its address. The default (false) is the upstream
	// semantics: an ipBlock matches the peer's observed address, identified
	// or not (the policy's author chose to trust that address), and the
	// decision says "matched by address".
	IPBlockIdentityOnly bool
}

// Compile is [CompileWith] with the default options.
func Compile(objs Objects) (*Engine, error) { return CompileWith(objs, Options{}) }

// CompileWith builds an Engine from objs. It expects objects the API server
// (or k8s.Validate) has accepted and does not repeat that validation; it
// still refuses whatever it could only compile by guessing (an unknown
// selector operator, protocol, policy type, tier or action, a bad CIDR, an
// unknown enforcement annotation), because a guess can fail open: a
// podSelector that selects nothing isolates nothing. Either a whole new
// Engine is returned or nothing is built and the error names the policy.
// objs is not modified; the Engine keeps it for [Engine.Objects].
func CompileWith(objs Objects, opts Options) (*Engine, error) {
	e := &Engine{
		byNamespace: map[string][]*compiledPolicy{},
		opts:        opts,
		objs:        objs,
		decisions:   newBoundedCache[decisionKey, Decision](decisionCacheSize),
		selections:  newBoundedCache[identityKey, *selection](selectionCacheSize),
	}
	for _, np := range objs.Policies {
		cp, err := compilePolicy(np)
		if err != nil {
			return nil, fmt.Errorf("NetworkPolicy %s/%s: %w", np.Namespace, np.Name, err)
		}
		e.byNamespace[np.Namespace] = append(e.byNamespace[np.Namespace], cp)
	}
	for _, list := range e.byNamespace {
		slices.SortFunc(list, func(a, b *compiledPolicy) int { return cmp.Compare(a.name, b.name) })
	}
	for _, p := range objs.ClusterPolicies {
		cc, err := compileCluster(p)
		if err != nil {
			return nil, fmt.Errorf("ClusterNetworkPolicy %s: %w", p.Name, err)
		}
		if cc.tier == TierAdmin {
			e.admin = append(e.admin, cc)
		} else {
			e.baseline = append(e.baseline, cc)
		}
	}
	slices.SortFunc(e.admin, compareCluster)
	slices.SortFunc(e.baseline, compareCluster)
	return e, nil
}

// Objects returns the objects the Engine was compiled from. Callers must not
// modify them.
func (e *Engine) Objects() Objects { return e.objs }

// compilePolicy compiles a NetworkPolicy; errors name the field.
func compilePolicy(np *networkingv1.NetworkPolicy) (*compiledPolicy, error) {
	podSelector, err := compileSelector(&np.Spec.PodSelector, podSide)
	if err != nil {
		return nil, fmt.Errorf("spec.podSelector: %w", err)
	}
	audit, err := auditMode(np.Annotations)
	if err != nil {
		return nil, err
	}
	cp := &compiledPolicy{
		name:        np.Namespace + "/" + np.Name,
		namespace:   np.Namespace,
		audit:       audit,
		podSelector: podSelector,
	}
	if len(np.Spec.PolicyTypes) == 0 {
		// The API server's defaulting: Ingress always, Egress only when
		// there are egress rules.
		cp.ingress = true
		cp.egress = len(np.Spec.Egress) > 0
	}
	for i, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			cp.ingress = true
		case networkingv1.PolicyTypeEgress:
			cp.egress = true
		default:
			// Ignoring it could leave the policy isolating nothing.
			return nil, fmt.Errorf("spec.policyTypes[%d]: unknown policy type %q", i, t)
		}
	}
	for i, r := range np.Spec.Ingress {
		rule, err := compileRule(np.Namespace, r.From, r.Ports)
		if err != nil {
			return nil, fmt.Errorf("spec.ingress[%d]: %w", i, err)
		}
		cp.ingressRules = append(cp.ingressRules, rule)
	}
	for i, r := range np.Spec.Egress {
		rule, err := compileRule(np.Namespace, r.To, r.Ports)
		if err != nil {
			return nil, fmt.Errorf("spec.egress[%d]: %w", i, err)
		}
		cp.egressRules = append(cp.egressRules, rule)
	}
	return cp, nil
}

// compileRule compiles the peers and ports of one rule of a policy in
// namespace policyNS.
func compileRule(policyNS string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (compiledRule, error) {
	r := compiledRule{allPeers: len(peers) == 0, allPorts: len(ports) == 0}
	for i, p := range peers {
		if p.PodSelector == nil && p.NamespaceSelector == nil && p.IPBlock == nil {
			return compiledRule{}, fmt.Errorf("peer %d: none of podSelector, namespaceSelector, ipBlock", i)
		}
		var cp compiledPeer
		var err error
		if p.PodSelector != nil {
			if cp.pods, err = compileSelector(p.PodSelector, podSide); err != nil {
				return compiledRule{}, fmt.Errorf("peer %d: podSelector: %w", i, err)
			}
		}
		if p.NamespaceSelector != nil {
			if cp.namespaces, err = compileSelector(p.NamespaceSelector, namespaceSide); err != nil {
				return compiledRule{}, fmt.Errorf("peer %d: namespaceSelector: %w", i, err)
			}
		}
		if p.IPBlock != nil {
			cidr, err := parsePrefix(p.IPBlock.CIDR)
			if err != nil {
				return compiledRule{}, err
			}
			b := &ipBlock{cidr: cidr}
			for _, s := range p.IPBlock.Except {
				ex, err := parsePrefix(s)
				if err != nil {
					return compiledRule{}, err
				}
				b.except = append(b.except, ex)
			}
			cp.block = b
		}
		cp.description = describePeer(&cp, policyNS)
		r.peers = append(r.peers, cp)
	}
	for i, p := range ports {
		cp := compiledPort{protocol: protoTCP, anyPort: p.Port == nil}
		if p.Protocol != nil {
			var ok bool
			if cp.protocol, ok = parseProtocol(string(*p.Protocol)); !ok {
				return compiledRule{}, fmt.Errorf("ports[%d]: unknown protocol %q", i, *p.Protocol)
			}
		}
		switch {
		case p.Port == nil:
		case p.Port.Type == intstr.String:
			cp.name = p.Port.StrVal
		default:
			cp.from, cp.to = uint16(p.Port.IntVal), uint16(p.Port.IntVal)
			if p.EndPort != nil {
				cp.to = uint16(*p.EndPort)
			}
		}
		r.ports = append(r.ports, cp)
	}
	return r, nil
}

// parsePrefix parses a CIDR into the masked form the matcher compares addresses against.
func parsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ipBlock %q: %w", s, err)
	}
	return p.Masked(), nil
}

// protocol is a transport protocol as a small integer for cache keys.
type protocol uint8

const (
	protoInvalid protocol = iota
	protoTCP
	protoUDP
	protoSCTP
	// protoICMP and protoOtherIP are never in a compiled port: a
	// NetworkPolicy cannot name them, so only rules without ports match
	// them (see ProtocolICMP).
	protoICMP
	protoOtherIP
)

// Protocols that NetworkPolicy cannot name, for [Decider.Decide]. A rule
// allows them only when it lists no ports: "ports absent" means every
// port and protocol, and no port list can name them. This is what common
// CNIs do for ICMP under a port-less rule; Kubernetes itself leaves ICMP
// unspecified. An isolated workload thus gets ICMP only from a rule that
// allows everything from that peer.
const (
	// ProtocolICMP is ICMP and ICMPv6 (echo and the other messages that
	// open a conntrack flow; errors about an allowed connection are the
	// datapath's business, not policy's).
	ProtocolICMP = "ICMP"
	// ProtocolOtherIP is any IP protocol other than TCP, UDP, SCTP and
	// ICMP (GRE, IGMP, ESP, ...).
	ProtocolOtherIP = "OTHER-IP"
)

// parseDecideProtocol is parseProtocol plus the protocols a decision may
// be asked about but no policy port may name.
func parseDecideProtocol(s string) (protocol, bool) {
	switch strings.ToUpper(s) {
	case ProtocolICMP, "ICMPV6":
		return protoICMP, true
	case ProtocolOtherIP:
		return protoOtherIP, true
	}
	return parseProtocol(s)
}

// parseProtocol accepts TCP, UDP, SCTP in any case; "" means TCP.
func parseProtocol(s string) (protocol, bool) {
	switch strings.ToUpper(s) {
	case "", "TCP":
		return protoTCP, true
	case "UDP":
		return protoUDP, true
	case "SCTP":
		return protoSCTP, true
	}
	return protoInvalid, false
}

// String returns the Kubernetes spelling.
func (p protocol) String() string {
	switch p {
	case protoTCP:
		return string(corev1.ProtocolTCP)
	case protoUDP:
		return string(corev1.ProtocolUDP)
	case protoSCTP:
		return string(corev1.ProtocolSCTP)
	case protoICMP:
		return ProtocolICMP
	case protoOtherIP:
		return ProtocolOtherIP
	}
	return "invalid"
}
