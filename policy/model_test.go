package policy_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/policy"
)

// The model-based test: random policy sets over a small world, decided by
// the compiled Engine and by refDecide, a plain evaluator written straight
// from the Kubernetes API reference (no indexing, no caching, selectors
// evaluated by apimachinery's own labels package), on every
// (local pod, peer, port, protocol, direction).

var (
	modelNamespaces = []struct {
		name   string
		labels map[string]string
	}{
		{"ns1", map[string]string{"env": "prod", "team": "a"}},
		{"ns2", map[string]string{"env": "dev"}},
		{"ns3", nil},
	}
	// Pods with equal labels but different service accounts (ns1/cli and
	// ns1/cli2), and pods that label themselves with reserved keys to claim
	// another service account or namespace (ns2/forger, ns3/bare): the
	// reference evaluator gives every pod the pseudo-labels from its spec,
	// overwriting what it set, and the engine must agree.
	modelPods = []struct {
		ns, name       string
		serviceAccount string // "" = default
		labels         map[string]string
		ports          []corev1.ContainerPort
	}{
		{"ns1", "web", "web", map[string]string{"app": "web", "tier": "front"}, []corev1.ContainerPort{{Name: "http", ContainerPort: 80}, {Name: "metrics", ContainerPort: 9090}}},
		{"ns1", "db", "db", map[string]string{"app": "db", "tier": "back"}, []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}},
		{"ns1", "cli", "payments", map[string]string{"app": "client"}, nil},
		{"ns1", "cli2", "batch", map[string]string{"app": "client"}, nil},
		{"ns2", "web", "web", map[string]string{"app": "web"}, []corev1.ContainerPort{{Name: "http", ContainerPort: 443}}},
		{"ns2", "cli", "", map[string]string{"app": "client", "tier": "front"}, nil},
		{"ns2", "forger", "batch", map[string]string{"app": "client", identity.LabelServiceAccount: "payments", identity.LabelNamespace: "ns1"}, nil},
		{"ns3", "db", "payments", map[string]string{"app": "db"}, []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090}}},
		{"ns3", "bare", "", map[string]string{identity.LabelServiceAccount: "web"}, nil},
	}
	modelPorts     = []uint16{53, 80, 443, 8080, 9090, 9999}
	modelProtocols = []string{"TCP", "UDP"}
	modelAddrs     = []string{"198.18.0.10", "198.18.1.10", "198.19.5.5", "203.0.113.7"}
	labelKeys      = []string{"app", "tier", "env", "team", "kubernetes.io/metadata.name", identity.LabelServiceAccount, identity.LabelNamespace, identity.LabelCluster}
	labelValues    = []string{"web", "db", "client", "front", "back", "prod", "dev", "a", "ns1", "ns2", "ns3", "payments", "batch", "default", "c1", "c2"}
	portNames      = []string{"http", "metrics", "dns", "none"}
	cidrs          = []string{"198.18.0.0/15", "198.18.0.0/16", "198.18.1.0/24", "0.0.0.0/0", "203.0.113.0/24"}
)

// modelWorld builds the world's objects.
func modelWorld() policy.Objects {
	var objs policy.Objects
	for _, n := range modelNamespaces {
		ns := &corev1.Namespace{}
		ns.Name, ns.Labels = n.name, n.labels
		objs.Namespaces = append(objs.Namespaces, ns)
	}
	for _, p := range modelPods {
		pod := &corev1.Pod{}
		pod.Namespace, pod.Name, pod.Labels = p.ns, p.name, p.labels
		pod.Spec.ServiceAccountName = p.serviceAccount
		pod.Spec.Containers = []corev1.Container{{Name: "c", Ports: p.ports}}
		objs.Pods = append(objs.Pods, pod)
	}
	return objs
}

// gen draws random but valid policy pieces.
type gen struct{ r *rand.Rand }

func (g gen) pick(s []string) string { return s[g.r.IntN(len(s))] }

// selector draws a selector for pods (namespace false) or namespaces; a
// namespace has no service account, so its selectors never name one.
func (g gen) selector(namespace bool) *metav1.LabelSelector {
	key := func() string {
		for {
			k := g.pick(labelKeys)
			if namespace && k == identity.LabelServiceAccount || !namespace && k == identity.LabelCluster {
				continue
			}
			return k
		}
	}
	s := &metav1.LabelSelector{}
	for range g.r.IntN(3) {
		if g.r.IntN(2) == 0 {
			if s.MatchLabels == nil {
				s.MatchLabels = map[string]string{}
			}
			s.MatchLabels[key()] = g.pick(labelValues)
			continue
		}
		req := metav1.LabelSelectorRequirement{Key: key()}
		switch g.r.IntN(4) {
		case 0:
			req.Operator = metav1.LabelSelectorOpIn
		case 1:
			req.Operator = metav1.LabelSelectorOpNotIn
		case 2:
			req.Operator = metav1.LabelSelectorOpExists
		case 3:
			req.Operator = metav1.LabelSelectorOpDoesNotExist
		}
		if req.Operator == metav1.LabelSelectorOpIn || req.Operator == metav1.LabelSelectorOpNotIn {
			for range 1 + g.r.IntN(3) {
				req.Values = append(req.Values, g.pick(labelValues))
			}
		}
		s.MatchExpressions = append(s.MatchExpressions, req)
	}
	return s
}

func (g gen) peers() []networkingv1.NetworkPolicyPeer {
	switch g.r.IntN(6) {
	case 0:
		return nil
	case 1:
		return []networkingv1.NetworkPolicyPeer{}
	}
	var out []networkingv1.NetworkPolicyPeer
	for range 1 + g.r.IntN(3) {
		var p networkingv1.NetworkPolicyPeer
		switch g.r.IntN(4) {
		case 0:
			p.PodSelector = g.selector(false)
		case 1:
			p.NamespaceSelector = g.selector(true)
		case 2:
			p.PodSelector, p.NamespaceSelector = g.selector(false), g.selector(true)
		case 3:
			cidr := g.pick(cidrs)
			p.IPBlock = &networkingv1.IPBlock{CIDR: cidr}
			if cidr == "198.18.0.0/15" || cidr == "0.0.0.0/0" {
				if g.r.IntN(2) == 0 {
					p.IPBlock.Except = []string{"198.18.1.0/24"}
				}
			}
		}
		out = append(out, p)
	}
	return out
}

func (g gen) ports() []networkingv1.NetworkPolicyPort {
	if g.r.IntN(3) == 0 {
		return nil
	}
	var out []networkingv1.NetworkPolicyPort
	for range 1 + g.r.IntN(3) {
		var p networkingv1.NetworkPolicyPort
		if g.r.IntN(2) == 0 {
			proto := corev1.Protocol(g.pick(modelProtocols))
			p.Protocol = &proto
		}
		switch g.r.IntN(5) {
		case 0: // all ports of the protocol
		case 1:
			name := intstr.FromString(g.pick(portNames))
			p.Port = &name
		case 2:
			n := intstr.FromInt32(int32(modelPorts[g.r.IntN(len(modelPorts))]))
			p.Port = &n
		default:
			lo := int32(modelPorts[g.r.IntN(len(modelPorts))])
			hi := lo + int32(g.r.IntN(9000))
			n := intstr.FromInt32(lo)
			p.Port, p.EndPort = &n, &hi
		}
		out = append(out, p)
	}
	return out
}

func (g gen) policy(i int) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{}
	p.APIVersion, p.Kind = "networking.k8s.io/v1", "NetworkPolicy"
	p.Namespace = modelNamespaces[g.r.IntN(len(modelNamespaces))].name
	p.Name = fmt.Sprintf("p%d", i)
	p.Spec.PodSelector = *g.selector(false)
	switch g.r.IntN(4) {
	case 1:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 2:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	case 3:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	}
	if g.r.IntN(5) > 0 {
		p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{}
		for range g.r.IntN(3) {
			p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: g.peers(), Ports: g.ports()})
		}
	}
	if g.r.IntN(3) > 0 {
		for range g.r.IntN(3) {
			p.Spec.Egress = append(p.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: g.peers(), Ports: g.ports()})
		}
	}
	return p
}

// refPeer is a peer as the reference evaluator sees it.
type refPeer struct {
	pod     *corev1.Pod // nil: anonymous
	foreign bool        // from another cluster
	addr    netip.Addr
	// strict: the engine's IPBlockIdentityOnly mode, in which identified
	// peers never match an ipBlock.
	strict bool
}

// refDecide returns whether the connection is allowed and, if by a rule,
// which policy and rule index (first in name order, then rule order).
func refDecide(objs policy.Objects, local *corev1.Pod, peer refPeer, dir policy.Direction, port uint16, proto string) (bool, string, int) {
	policies := slices.Clone(objs.Policies)
	slices.SortFunc(policies, func(a, b *networkingv1.NetworkPolicy) int { return strings.Compare(a.Name, b.Name) })
	selected := false
	for _, p := range policies {
		if p.Namespace != local.Namespace || !refSelects(&p.Spec.PodSelector, refPodLabels(local)) {
			continue
		}
		types := p.Spec.PolicyTypes
		if len(types) == 0 {
			types = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
			if len(p.Spec.Egress) > 0 {
				types = append(types, networkingv1.PolicyTypeEgress)
			}
		}
		want := networkingv1.PolicyTypeIngress
		if dir == policy.Egress {
			want = networkingv1.PolicyTypeEgress
		}
		if !slices.Contains(types, want) {
			continue
		}
		selected = true
		// The destination pod resolves named ports.
		dest := local
		if dir == policy.Egress {
			dest = peer.pod
		}
		if dir == policy.Ingress {
			for i, r := range p.Spec.Ingress {
				if refPeersAllow(objs, p.Namespace, r.From, peer) && refPortsAllow(r.Ports, dest, port, proto) {
					return true, p.Namespace + "/" + p.Name, i
				}
			}
		} else {
			for i, r := range p.Spec.Egress {
				if refPeersAllow(objs, p.Namespace, r.To, peer) && refPortsAllow(r.Ports, dest, port, proto) {
					return true, p.Namespace + "/" + p.Name, i
				}
			}
		}
	}
	return !selected, "", -1
}

func refSelects(s *metav1.LabelSelector, l map[string]string) bool {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		panic(err)
	}
	return sel.Matches(labels.Set(l))
}

// refPodLabels is a pod's labels as docs/policy.md specifies them for
// selection: its own, with the reserved pseudo-labels set from its spec
// over whatever the pod wrote under those keys.
func refPodLabels(p *corev1.Pod) map[string]string {
	l := map[string]string{}
	for k, v := range p.Labels {
		l[k] = v
	}
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	l[identity.LabelServiceAccount] = sa
	l[identity.LabelNamespace] = p.Namespace
	return l
}

func refPeersAllow(objs policy.Objects, policyNS string, peers []networkingv1.NetworkPolicyPeer, peer refPeer) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		if p.IPBlock != nil {
			if peer.pod != nil && peer.strict {
				continue // strict mode: identified peers never match ipBlock
			}
			in := netip.MustParsePrefix(p.IPBlock.CIDR).Contains(peer.addr)
			for _, ex := range p.IPBlock.Except {
				if netip.MustParsePrefix(ex).Contains(peer.addr) {
					in = false
				}
			}
			if in {
				return true
			}
			continue
		}
		if peer.pod == nil {
			continue
		}
		nsLabels := map[string]string{}
		for k, v := range objs.Namespace(peer.pod.Namespace).Labels {
			nsLabels[k] = v
		}
		nsLabels["kubernetes.io/metadata.name"] = peer.pod.Namespace
		nsLabels[identity.LabelNamespace] = peer.pod.Namespace
		nsLabels[identity.LabelCluster] = testCluster
		if peer.foreign {
			nsLabels[identity.LabelCluster] = "c2"
		}
		nsOK := false
		if p.NamespaceSelector == nil {
			nsOK = !peer.foreign && peer.pod.Namespace == policyNS
		} else {
			// A foreign peer only for a selector that names its cluster.
			_, namesCluster := p.NamespaceSelector.MatchLabels[identity.LabelCluster]
			for _, e := range p.NamespaceSelector.MatchExpressions {
				namesCluster = namesCluster || e.Key == identity.LabelCluster
			}
			nsOK = refSelects(p.NamespaceSelector, nsLabels) && (!peer.foreign || namesCluster)
		}
		podOK := p.PodSelector == nil || refSelects(p.PodSelector, refPodLabels(peer.pod))
		if nsOK && podOK {
			return true
		}
	}
	return false
}

func refPortsAllow(ports []networkingv1.NetworkPolicyPort, dest *corev1.Pod, port uint16, proto string) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		pp := "TCP"
		if p.Protocol != nil {
			pp = string(*p.Protocol)
		}
		if pp != proto {
			continue
		}
		if p.Port == nil {
			return true
		}
		if p.Port.Type == intstr.String {
			if dest == nil {
				continue
			}
			for _, c := range dest.Spec.Containers {
				for _, cp := range c.Ports {
					cproto := string(cp.Protocol)
					if cproto == "" {
						cproto = "TCP"
					}
					if cp.Name == p.Port.StrVal && cproto == pp && uint16(cp.ContainerPort) == port {
						return true
					}
				}
			}
			continue
		}
		hi := p.Port.IntVal
		if p.EndPort != nil {
			hi = *p.EndPort
		}
		if int32(port) >= p.Port.IntVal && int32(port) <= hi {
			return true
		}
	}
	return false
}

// TestModel compares Engine and refDecide on random policy sets.
func TestModel(t *testing.T) {
	iterations := 250
	if testing.Short() {
		iterations = 40
	}
	r := rand.New(rand.NewPCG(20261123, 4))
	g := gen{r}
	world := modelWorld()
	checked := 0
	for it := range iterations {
		objs := world
		objs.Policies = nil
		var docs []string
		for i := range r.IntN(6) {
			p := g.policy(i)
			// Through YAML and the Decoder, as users' files come.
			b, err := yaml.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			docs = append(docs, string(b))
		}
		decoded, err := k8s.Decode("random.yaml", []byte(strings.Join(docs, "---\n")))
		if err != nil {
			t.Fatalf("iteration %d: generated policies rejected: %v\n%s", it, err, strings.Join(docs, "---\n"))
		}
		objs.Policies = decoded.Policies
		// Alternate the ipBlock modes: upstream (address matches any
		// peer) and strict (identified peers never match an address).
		strict := it%2 == 1
		e, err := policy.CompileWith(objs, policy.Options{IPBlockIdentityOnly: strict})
		if err != nil {
			t.Fatalf("iteration %d: %v", it, err)
		}
		var peers []refPeer
		for i, p := range objs.Pods {
			// Identified peers get addresses inside and outside the
			// generated blocks and their exceptions.
			addr := netip.MustParseAddr(modelAddrs[i%len(modelAddrs)])
			peers = append(peers, refPeer{pod: p, addr: addr, strict: strict}, refPeer{pod: p, foreign: true, addr: addr, strict: strict})
		}
		for _, a := range modelAddrs {
			peers = append(peers, refPeer{addr: netip.MustParseAddr(a), strict: strict})
		}
		for _, local := range objs.Pods {
			lid := k8s.IdentityOf("c1", objs.Namespace(local.Namespace), local)
			for _, peer := range peers {
				pp := policy.Peer{Addr: peer.addr}
				if peer.pod != nil {
					pp.Identity = k8s.IdentityOf("c1", objs.Namespace(peer.pod.Namespace), peer.pod)
					if peer.foreign {
						pp.Identity.Cluster = "c2"
					}
				}
				for _, dir := range []policy.Direction{policy.Ingress, policy.Egress} {
					for _, proto := range modelProtocols {
						for _, port := range modelPorts {
							got := e.Decide(lid, pp, dir, port, proto)
							ok, pol, rule := refDecide(objs, local, peer, dir, port, proto)
							checked++
							if got.Allowed != ok || got.Policy != pol || got.Rule != rule {
								t.Fatalf("iteration %d: %s %s peer %s:%d/%s: engine %v %q rule %d (%s), reference %v %q rule %d\npolicies:\n%s",
									it, lid.Ref(), dir, describePeer(peer), port, proto, got.Allowed, got.Policy, got.Rule, got.Reason, ok, pol, rule, strings.Join(docs, "---\n"))
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d decisions compared over %d policy sets", checked, iterations)
}

func describePeer(p refPeer) string {
	switch {
	case p.pod == nil:
		return p.addr.String()
	case p.foreign:
		return "c2:" + p.pod.Namespace + "/" + p.pod.Name
	}
	return p.pod.Namespace + "/" + p.pod.Name
}
