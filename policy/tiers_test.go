package policy_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/policy"
)

// cnpDoc renders a ClusterNetworkPolicy document; spec is YAML indented
// by two spaces; audit adds the audit-mode annotation.
func cnpDoc(name string, audit bool, spec string) string {
	ann := ""
	if audit {
		ann = ", annotations: {bireme.io/enforcement: audit}"
	}
	return fmt.Sprintf("apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: %s%s}\nspec:\n%s\n", name, ann, spec)
}

// TestTiers checks the tier order and the actions on the fixture world:
// Admin before NetworkPolicy before Baseline, Accept/Deny final, Pass
// delegating to the next tier, priorities, and audit mode.
func TestTiers(t *testing.T) {
	adminDenyY := cnpDoc("deny-from-y", false, `  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - {name: no-y, action: Deny, from: [{namespaces: {matchLabels: {team: b}}}]}`)
	npAllowAll := np("x", "allow-all", "  podSelector: {}\n  ingress: [{}]")
	passFromY := cnpDoc("pass-y", false, `  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  ingress:
  - {action: Pass, from: [{pods: {namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: client}}}}]}`)
	baselineDeny := cnpDoc("default-deny", false, `  tier: Baseline
  priority: 100
  subject: {namespaces: {}}
  ingress:
  - {action: Deny, from: [{namespaces: {}}]}`)
	npOpenWeb := np("x", "open-web", "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: http}]}]")
	tests := []struct {
		name    string
		docs    []string
		local   string
		peer    string
		dir     policy.Direction
		port    uint16
		proto   string
		allowed bool
		tier    string
		policy  string
		rule    int
		reason  string // substring
		ifEnf   *bool  // IfEnforced.Allowed, nil = no audit policy applies
		would   string // WouldDeny.Policy
		strict  bool
		byAddr  bool
	}{
		{name: "admin deny beats a NetworkPolicy allowing all", docs: []string{adminDenyY, npAllowAll},
			local: "x/a", peer: "y/b", port: 80, tier: policy.TierAdmin, policy: "deny-from-y",
			reason: `denied by ClusterNetworkPolicy deny-from-y (Admin tier, priority 10) ingress rule 0 "no-y": peer matched by any pod in namespaces labelled team=b`},
		{name: "admin deny does not touch other peers", docs: []string{adminDenyY, npAllowAll},
			local: "x/a", peer: "z/c", port: 80, allowed: true, tier: policy.TierNetworkPolicy, policy: "x/allow-all"},
		{name: "admin deny: no NetworkPolicy, still denied", docs: []string{adminDenyY},
			local: "x/b", peer: "y/a", port: 8080, tier: policy.TierAdmin, policy: "deny-from-y"},
		{name: "pass delegates to the NetworkPolicy (which allows)", docs: []string{passFromY, adminDenyY, npAllowAll},
			local: "x/a", peer: "y/b", port: 80, allowed: true, tier: policy.TierNetworkPolicy, policy: "x/allow-all",
			reason: "(passed by ClusterNetworkPolicy pass-y (Admin tier, priority 5) ingress rule 0"},
		{name: "pass delegates to the NetworkPolicy (which denies)", docs: []string{passFromY, adminDenyY, np("x", "deny", "  podSelector: {}\n  ingress: []")},
			local: "x/a", peer: "y/b", port: 80, tier: policy.TierNetworkPolicy, reason: "denied: selected by x/deny and no rule allows (passed by"},
		{name: "pass with no NetworkPolicy falls to the default", docs: []string{passFromY, adminDenyY},
			local: "x/a", peer: "y/b", port: 80, allowed: true, reason: "allowed: no policy selects x/a for ingress (passed by"},
		{name: "pass does not match y/a: admin deny applies", docs: []string{passFromY, adminDenyY, npAllowAll},
			local: "x/a", peer: "y/a", port: 80, tier: policy.TierAdmin, policy: "deny-from-y"},
		{name: "priority: lower value first", docs: []string{adminDenyY, cnpDoc("accept-y", false, "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Accept, from: [{namespaces: {}}]}]")},
			local: "x/a", peer: "y/b", port: 80, allowed: true, tier: policy.TierAdmin, policy: "accept-y"},
		{name: "baseline deny applies without NetworkPolicy", docs: []string{baselineDeny},
			local: "x/a", peer: "y/b", port: 80, tier: policy.TierBaseline, policy: "default-deny"},
		{name: "baseline deny: a NetworkPolicy opens", docs: []string{baselineDeny, npOpenWeb},
			local: "x/a", peer: "y/b", port: 80, allowed: true, tier: policy.TierNetworkPolicy, policy: "x/open-web"},
		{name: "baseline deny: the NetworkPolicy decides its other ports too", docs: []string{baselineDeny, npOpenWeb},
			local: "x/a", peer: "y/b", port: 9090, tier: policy.TierNetworkPolicy},
		{name: "baseline: a pod the NetworkPolicy does not select stays denied", docs: []string{baselineDeny, npOpenWeb},
			local: "x/b", peer: "y/b", port: 8080, tier: policy.TierBaseline, policy: "default-deny"},
		{name: "baseline namespaces peer does not match an anonymous peer", docs: []string{baselineDeny},
			local: "x/a", peer: "203.0.113.9", port: 80, allowed: true},
		{name: "networks match an identified peer by address", docs: []string{cnpDoc("deny-net", false, "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [198.18.0.0/24]}]}]")},
			local: "x/c", peer: "x/a", dir: policy.Egress, port: 80, tier: policy.TierAdmin, policy: "deny-net", byAddr: true,
			reason: "peer matched by address in 198.18.0.0/24 (peer x/a identified, matched by address)"},
		{name: "networks: strict mode matches only anonymous peers", strict: true, docs: []string{cnpDoc("deny-net", false, "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [198.18.0.0/24]}]}]")},
			local: "x/c", peer: "x/a", dir: policy.Egress, port: 80, allowed: true},
		{name: "networks: anonymous peer", docs: []string{cnpDoc("deny-net", false, "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [198.18.0.0/24]}]}]")},
			local: "x/c", peer: "198.18.0.7", dir: policy.Egress, port: 80, tier: policy.TierAdmin, policy: "deny-net", byAddr: true},
		{name: "protocols: port range", docs: []string{cnpDoc("deny-range", false, "  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}\n  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 70, end: 90}}}}]}]")},
			local: "x/a", peer: "x/c", port: 80, tier: policy.TierAdmin, policy: "deny-range"},
		{name: "protocols: other protocol not matched", docs: []string{cnpDoc("deny-range", false, "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 70, end: 90}}}}]}]")},
			local: "x/a", peer: "x/c", port: 80, proto: "UDP", allowed: true},
		{name: "protocols: named port resolved on the destination", docs: []string{cnpDoc("deny-metrics", false, "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{destinationNamedPort: metrics}]}]")},
			local: "x/a", peer: "x/c", port: 9090, tier: policy.TierAdmin, policy: "deny-metrics"},
		{name: "protocols: named port, another number", docs: []string{cnpDoc("deny-metrics", false, "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{destinationNamedPort: metrics}]}]")},
			local: "x/a", peer: "x/c", port: 80, allowed: true},
		{name: "subject pods: not selected", docs: []string{cnpDoc("deny-db", false, "  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]")},
			local: "x/a", peer: "x/c", port: 80, allowed: true},
		{name: "egress rules do not affect ingress", docs: []string{cnpDoc("deny-eg", false, "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{namespaces: {}}]}]")},
			local: "x/a", peer: "x/c", port: 80, allowed: true},

		// Audit mode.
		{name: "audit NetworkPolicy: would deny, passes", docs: []string{auditNP(np("x", "lock", "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]"))},
			local: "x/a", peer: "y/b", port: 80, allowed: true, ifEnf: ptr(false), would: "x/lock",
			reason: "allowed: no policy selects x/a for ingress (audit mode: would be denied: selected by x/lock and no rule allows)"},
		{name: "audit NetworkPolicy: allows what it would allow", docs: []string{auditNP(np("x", "lock", "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]"))},
			local: "x/a", peer: "x/c", port: 80, allowed: true, ifEnf: ptr(true)},
		{name: "audit admin deny: passes, would deny", docs: []string{strings.Replace(adminDenyY, "name: deny-from-y", "name: deny-from-y, annotations: {bireme.io/enforcement: audit}", 1), npAllowAll},
			local: "x/a", peer: "y/b", port: 80, allowed: true, tier: policy.TierNetworkPolicy, policy: "x/allow-all", ifEnf: ptr(false), would: "deny-from-y"},
		{name: "audit never loosens: audit accept under an enforced deny", docs: []string{cnpDoc("accept", true, "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Accept, from: [{namespaces: {}}]}]"), adminDenyY},
			local: "x/a", peer: "y/b", port: 80, tier: policy.TierAdmin, policy: "deny-from-y", ifEnf: ptr(true)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := parseObjects(t, append([]string{fixtureYAML}, tt.docs...)...)
			e, err := k8s.CompileWith(objs, policy.Options{IPBlockIdentityOnly: tt.strict})
			if err != nil {
				t.Fatal(err)
			}
			local := ident(t, objs, tt.local)
			peer := peerOf(t, objs, tt.peer)
			proto := tt.proto
			if proto == "" {
				proto = "TCP"
			}
			for range 2 { // the second answer comes from the cache
				d := e.Decide(local, peer, tt.dir, tt.port, proto)
				if d.Allowed != tt.allowed || d.Tier != tt.tier {
					t.Fatalf("allowed, tier = %v, %q; want %v, %q (%s)", d.Allowed, d.Tier, tt.allowed, tt.tier, d.Reason)
				}
				if tt.policy != "" && d.Policy != tt.policy {
					t.Fatalf("policy %q, want %q (%s)", d.Policy, tt.policy, d.Reason)
				}
				if tt.reason != "" && !strings.Contains(d.Reason, tt.reason) {
					t.Fatalf("reason %q\nwant it to contain %q", d.Reason, tt.reason)
				}
				if d.MatchedByAddress != tt.byAddr {
					t.Fatalf("matchedByAddress %v, want %v (%s)", d.MatchedByAddress, tt.byAddr, d.Reason)
				}
				switch {
				case tt.ifEnf == nil && d.IfEnforced != nil:
					t.Fatalf("IfEnforced %+v, want none", d.IfEnforced)
				case tt.ifEnf != nil && (d.IfEnforced == nil || d.IfEnforced.Allowed != *tt.ifEnf):
					t.Fatalf("IfEnforced %+v, want allowed=%v", d.IfEnforced, *tt.ifEnf)
				}
				if got := ""; d.WouldDeny != nil {
					got = d.WouldDeny.Policy
					if got != tt.would {
						t.Fatalf("wouldDeny %+v, want policy %q", d.WouldDeny, tt.would)
					}
				} else if tt.would != "" {
					t.Fatalf("no wouldDeny, want policy %q (%s)", tt.would, d.Reason)
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// auditNP puts a NetworkPolicy document from np in audit mode.
func auditNP(doc string) string {
	return strings.Replace(doc, "metadata: {", "metadata: {annotations: {bireme.io/enforcement: audit}, ", 1)
}

// TestExplainAudit: explain shows the enforced and the audit outcomes.
func TestExplainAudit(t *testing.T) {
	objs := parseObjects(t, fixtureYAML, cnpDoc("deny-y", true, `  tier: Admin
  priority: 3
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: b}}}]}]`))
	e, err := k8s.Compile(objs)
	if err != nil {
		t.Fatal(err)
	}
	x, err := k8s.Explain(e, testCluster, "y/b", "x/a", "http", "")
	if err != nil {
		t.Fatal(err)
	}
	if !x.Allowed || x.AllowedIfEnforced || x.Ingress.WouldDeny == nil || x.Ingress.WouldDeny.Policy != "deny-y" {
		t.Fatalf("explanation %+v ingress %+v", x, x.Ingress)
	}
	s := x.String()
	for _, want := range []string{
		"with audit-mode policies enforced: denied by ClusterNetworkPolicy deny-y (Admin tier, priority 3) ingress rule 0",
		"verdict: allowed (audit mode: would be denied if enforced)",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("explanation lacks %q:\n%s", want, s)
		}
	}
}

// TestClusterCompileErrors: what policy.Compile refuses rather than
// guesses, for sources that skip k8s validation.
func TestClusterCompileErrors(t *testing.T) {
	base := func() *cnp.ClusterNetworkPolicy {
		return &cnp.ClusterNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "c"},
			Spec: cnp.ClusterNetworkPolicySpec{Tier: cnp.AdminTier, Subject: cnp.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
				Ingress: []cnp.ClusterNetworkPolicyIngressRule{{Action: cnp.ClusterNetworkPolicyRuleActionDeny, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}}},
		}
	}
	tests := []struct {
		name   string
		modify func(*cnp.ClusterNetworkPolicy)
		want   string
	}{
		{"tier", func(p *cnp.ClusterNetworkPolicy) { p.Spec.Tier = "admin" }, `spec.tier: unknown tier "admin"`},
		{"action", func(p *cnp.ClusterNetworkPolicy) { p.Spec.Ingress[0].Action = "Allow" }, `spec.ingress[0]: action: unknown action "Allow"`},
		{"empty peer", func(p *cnp.ClusterNetworkPolicy) { p.Spec.Ingress[0].From[0].Namespaces = nil }, "spec.ingress[0]: peer 0: exactly one of"},
		{"no subject", func(p *cnp.ClusterNetworkPolicy) { p.Spec.Subject.Namespaces = nil }, "spec.subject: exactly one of"},
		{"nodes", func(p *cnp.ClusterNetworkPolicy) {
			p.Spec.Egress = []cnp.ClusterNetworkPolicyEgressRule{{Action: cnp.ClusterNetworkPolicyRuleActionDeny, To: []cnp.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{}}}}}
		}, "spec.egress[0]: peer 0: nodes: not supported"},
		{"audit typo", func(p *cnp.ClusterNetworkPolicy) {
			p.Annotations = map[string]string{policy.AnnotationEnforcement: "Audit"}
		}, `unknown value "Audit"`},
		{"protocol empty", func(p *cnp.ClusterNetworkPolicy) {
			p.Spec.Ingress[0].Protocols = []cnp.ClusterNetworkPolicyProtocol{{}}
		}, "spec.ingress[0]: protocols[0]: exactly one of"},
	}
	for _, tt := range tests {
		p := base()
		tt.modify(p)
		_, err := policy.Compile(policy.Objects{ClusterPolicies: []*cnp.ClusterNetworkPolicy{p}})
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "ClusterNetworkPolicy c: ") {
			t.Errorf("%s: error %v, want %q", tt.name, err, tt.want)
		}
	}
}

// --- Model-based test of the tiers ---

// cnpGen draws random valid ClusterNetworkPolicies over the model world.
func (g gen) clusterPolicy(i int) *cnp.ClusterNetworkPolicy {
	p := &cnp.ClusterNetworkPolicy{}
	p.APIVersion, p.Kind = "policy.networking.k8s.io/v1beta1", "ClusterNetworkPolicy"
	p.Name = fmt.Sprintf("c%d", i)
	p.Spec.Tier = cnp.AdminTier
	if g.r.IntN(2) == 0 {
		p.Spec.Tier = cnp.BaselineTier
	}
	p.Spec.Priority = int32(g.r.IntN(4)) // ties are frequent: the name orders them
	if g.r.IntN(2) == 0 {
		p.Spec.Subject.Namespaces = g.selector(true)
	} else {
		p.Spec.Subject.Pods = &cnp.NamespacedPod{NamespaceSelector: *g.selector(true), PodSelector: *g.selector(false)}
	}
	for range g.r.IntN(3) {
		var from []cnp.ClusterNetworkPolicyIngressPeer
		for range 1 + g.r.IntN(2) {
			if g.r.IntN(2) == 0 {
				from = append(from, cnp.ClusterNetworkPolicyIngressPeer{Namespaces: g.selector(true)})
			} else {
				from = append(from, cnp.ClusterNetworkPolicyIngressPeer{Pods: &cnp.NamespacedPod{NamespaceSelector: *g.selector(true), PodSelector: *g.selector(false)}})
			}
		}
		p.Spec.Ingress = append(p.Spec.Ingress, cnp.ClusterNetworkPolicyIngressRule{Action: g.action(), From: from, Protocols: g.protocols(false)})
	}
	for range g.r.IntN(3) {
		var to []cnp.ClusterNetworkPolicyEgressPeer
		networks := false
		for range 1 + g.r.IntN(2) {
			switch g.r.IntN(3) {
			case 0:
				to = append(to, cnp.ClusterNetworkPolicyEgressPeer{Namespaces: g.selector(true)})
			case 1:
				to = append(to, cnp.ClusterNetworkPolicyEgressPeer{Pods: &cnp.NamespacedPod{NamespaceSelector: *g.selector(true), PodSelector: *g.selector(false)}})
			default:
				networks = true
				to = append(to, cnp.ClusterNetworkPolicyEgressPeer{Networks: []cnp.CIDR{cnp.CIDR(g.pick(cidrs))}})
			}
		}
		p.Spec.Egress = append(p.Spec.Egress, cnp.ClusterNetworkPolicyEgressRule{Action: g.action(), To: to, Protocols: g.protocols(networks)})
	}
	if g.r.IntN(4) == 0 {
		p.Annotations = map[string]string{policy.AnnotationEnforcement: policy.EnforcementAudit}
	}
	return p
}

func (g gen) action() cnp.ClusterNetworkPolicyRuleAction {
	return []cnp.ClusterNetworkPolicyRuleAction{cnp.ClusterNetworkPolicyRuleActionAccept, cnp.ClusterNetworkPolicyRuleActionDeny, cnp.ClusterNetworkPolicyRuleActionPass}[g.r.IntN(3)]
}

func (g gen) protocols(networks bool) []cnp.ClusterNetworkPolicyProtocol {
	if g.r.IntN(3) == 0 {
		return nil
	}
	var out []cnp.ClusterNetworkPolicyProtocol
	for range 1 + g.r.IntN(2) {
		port := &cnp.Port{Number: int32(modelPorts[g.r.IntN(len(modelPorts))])}
		if g.r.IntN(3) == 0 {
			port = &cnp.Port{Range: &cnp.PortRange{Start: port.Number, End: port.Number + 1 + int32(g.r.IntN(9000))}}
		}
		switch g.r.IntN(4) {
		case 0:
			out = append(out, cnp.ClusterNetworkPolicyProtocol{UDP: &cnp.ClusterNetworkPolicyProtocolUDP{DestinationPort: port}})
		case 1:
			if !networks {
				out = append(out, cnp.ClusterNetworkPolicyProtocol{DestinationNamedPort: g.pick(portNames)})
				continue
			}
			fallthrough
		default:
			out = append(out, cnp.ClusterNetworkPolicyProtocol{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: port}})
		}
	}
	return out
}

// refOutcome is what the reference evaluator decides.
type refOutcome struct {
	allowed bool
	tier    string
	policy  string
	rule    int
}

// refTierDecide evaluates the tiers straight from the ClusterNetworkPolicy
// API's documentation: Admin (priority order; first matching rule; Pass
// skips the rest of the tier), then NetworkPolicy (refDecide: final for
// selected pods), then Baseline, then allowed. withAudit treats the
// audit-mode policies as enforced; otherwise they do not exist.
func refTierDecide(objs policy.Objects, local *corev1.Pod, peer refPeer, dir policy.Direction, port uint16, proto string, withAudit bool) refOutcome {
	audited := func(a map[string]string) bool { return a[policy.AnnotationEnforcement] == policy.EnforcementAudit }
	tier := func(t cnp.Tier) (refOutcome, bool) {
		var list []*cnp.ClusterNetworkPolicy
		for _, p := range objs.ClusterPolicies {
			if p.Spec.Tier == t && (withAudit || !audited(p.Annotations)) {
				list = append(list, p)
			}
		}
		slices.SortFunc(list, func(a, b *cnp.ClusterNetworkPolicy) int {
			if a.Spec.Priority != b.Spec.Priority {
				return int(a.Spec.Priority - b.Spec.Priority)
			}
			return strings.Compare(a.Name, b.Name)
		})
		for _, p := range list {
			if !refSubject(objs, p.Spec.Subject, local) {
				continue
			}
			type rule struct {
				act   cnp.ClusterNetworkPolicyRuleAction
				peers []cnp.ClusterNetworkPolicyEgressPeer
				prots []cnp.ClusterNetworkPolicyProtocol
			}
			var rules []rule
			if dir == policy.Ingress {
				for _, r := range p.Spec.Ingress {
					var peers []cnp.ClusterNetworkPolicyEgressPeer
					for _, f := range r.From {
						peers = append(peers, cnp.ClusterNetworkPolicyEgressPeer{Namespaces: f.Namespaces, Pods: f.Pods})
					}
					rules = append(rules, rule{r.Action, peers, r.Protocols})
				}
			} else {
				for _, r := range p.Spec.Egress {
					rules = append(rules, rule{r.Action, r.To, r.Protocols})
				}
			}
			dest := local
			if dir == policy.Egress {
				dest = peer.pod
			}
			for i, r := range rules {
				if !refClusterPeers(objs, r.peers, peer) || !refClusterProtocols(r.prots, dest, port, proto) {
					continue
				}
				switch r.act {
				case cnp.ClusterNetworkPolicyRuleActionPass:
					return refOutcome{}, false
				case cnp.ClusterNetworkPolicyRuleActionAccept:
					return refOutcome{true, string(t), p.Name, i}, true
				default:
					return refOutcome{false, string(t), p.Name, i}, true
				}
			}
		}
		return refOutcome{}, false
	}
	if o, ok := tier(cnp.AdminTier); ok {
		return o
	}
	npObjs := objs
	npObjs.Policies = nil
	for _, p := range objs.Policies {
		if withAudit || !audited(p.Annotations) {
			npObjs.Policies = append(npObjs.Policies, p)
		}
	}
	if ok, pol, rule := refDecide(npObjs, local, peer, dir, port, proto); !ok || rule >= 0 {
		return refOutcome{ok, policy.TierNetworkPolicy, pol, rule}
	}
	if o, ok := tier(cnp.BaselineTier); ok {
		return o
	}
	return refOutcome{true, "", "", -1}
}

func refNSLabels(objs policy.Objects, ns string) map[string]string {
	l := map[string]string{}
	for k, v := range objs.Namespace(ns).Labels {
		l[k] = v
	}
	l["kubernetes.io/metadata.name"] = ns
	l[identity.LabelNamespace] = ns
	l[identity.LabelCluster] = testCluster // every peer of this model is local
	return l
}

func refSubject(objs policy.Objects, s cnp.ClusterNetworkPolicySubject, p *corev1.Pod) bool {
	if s.Namespaces != nil {
		return refSelects(s.Namespaces, refNSLabels(objs, p.Namespace))
	}
	return refSelects(&s.Pods.NamespaceSelector, refNSLabels(objs, p.Namespace)) && refSelects(&s.Pods.PodSelector, refPodLabels(p))
}

func refClusterPeers(objs policy.Objects, peers []cnp.ClusterNetworkPolicyEgressPeer, peer refPeer) bool {
	for _, p := range peers {
		switch {
		case p.Namespaces != nil:
			if peer.pod != nil && refSelects(p.Namespaces, refNSLabels(objs, peer.pod.Namespace)) {
				return true
			}
		case p.Pods != nil:
			if peer.pod != nil && refSelects(&p.Pods.NamespaceSelector, refNSLabels(objs, peer.pod.Namespace)) && refSelects(&p.Pods.PodSelector, refPodLabels(peer.pod)) {
				return true
			}
		default:
			if peer.pod != nil && peer.strict {
				continue
			}
			for _, n := range p.Networks {
				if netip.MustParsePrefix(string(n)).Contains(peer.addr) {
					return true
				}
			}
		}
	}
	return false
}

func refClusterProtocols(prots []cnp.ClusterNetworkPolicyProtocol, dest *corev1.Pod, port uint16, proto string) bool {
	if len(prots) == 0 {
		return true
	}
	for _, pr := range prots {
		if pr.DestinationNamedPort != "" {
			if dest == nil {
				continue
			}
			for _, c := range dest.Spec.Containers {
				for _, cp := range c.Ports {
					cproto := string(cp.Protocol)
					if cproto == "" {
						cproto = "TCP"
					}
					if cp.Name == pr.DestinationNamedPort && cproto == proto && uint16(cp.ContainerPort) == port {
						return true
					}
				}
			}
			continue
		}
		var p *cnp.Port
		switch {
		case pr.TCP != nil && proto == "TCP":
			p = pr.TCP.DestinationPort
		case pr.UDP != nil && proto == "UDP":
			p = pr.UDP.DestinationPort
		case pr.SCTP != nil && proto == "SCTP":
			p = pr.SCTP.DestinationPort
		default:
			continue
		}
		if p.Range != nil {
			if int32(port) >= p.Range.Start && int32(port) <= p.Range.End {
				return true
			}
		} else if int32(port) == p.Number {
			return true
		}
	}
	return false
}

// TestTierModel compares the Engine with refTierDecide on random sets of
// ClusterNetworkPolicies and NetworkPolicies, some in audit mode: the
// enforced outcome, and the audit outcome wherever an audited policy
// applies.
func TestTierModel(t *testing.T) {
	iterations := 60
	switch {
	case raceDetector:
		iterations = 8
	case testing.Short():
		iterations = 15
	}
	r := rand.New(rand.NewPCG(20261202, 15))
	g := gen{r}
	world := modelWorld()
	checked, audits, tiers := 0, 0, map[string]int{}
	for it := range iterations {
		var docs []string
		for i := range 1 + r.IntN(4) {
			b, err := yaml.Marshal(g.clusterPolicy(i))
			if err != nil {
				t.Fatal(err)
			}
			docs = append(docs, string(b))
		}
		for i := range r.IntN(4) {
			p := g.policy(i)
			if r.IntN(4) == 0 {
				p.Annotations = map[string]string{policy.AnnotationEnforcement: policy.EnforcementAudit}
			}
			b, err := yaml.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			docs = append(docs, string(b))
		}
		all := strings.Join(docs, "---\n")
		decoded, err := k8s.Decode("random.yaml", []byte(all))
		if err != nil {
			t.Fatalf("iteration %d: generated policies rejected: %v\n%s", it, err, all)
		}
		objs := world
		objs.Policies, objs.ClusterPolicies = decoded.Policies, decoded.ClusterPolicies
		strict := it%3 == 2
		e, err := policy.CompileWith(objs, policy.Options{IPBlockIdentityOnly: strict})
		if err != nil {
			t.Fatalf("iteration %d: %v", it, err)
		}
		var peers []refPeer
		for i, p := range objs.Pods {
			peers = append(peers, refPeer{pod: p, addr: netip.MustParseAddr(modelAddrs[i%len(modelAddrs)]), strict: strict})
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
				}
				for _, dir := range []policy.Direction{policy.Ingress, policy.Egress} {
					for _, proto := range modelProtocols {
						for _, port := range modelPorts {
							got := e.Decide(lid, pp, dir, port, proto)
							want := refTierDecide(objs, local, peer, dir, port, proto, false)
							audit := refTierDecide(objs, local, peer, dir, port, proto, true)
							checked++
							tiers[got.Tier]++
							fail := func(what string, gotO, wantO refOutcome, reason string) {
								t.Fatalf("iteration %d: %s %s peer %s:%d/%s: %s: engine %+v (%s), reference %+v\npolicies:\n%s",
									it, lid.Ref(), dir, describePeer(peer), port, proto, what, gotO, reason, wantO, all)
							}
							gotO := refOutcome{got.Allowed, got.Tier, got.Policy, got.Rule}
							if !got.Allowed && got.Tier == policy.TierNetworkPolicy {
								gotO.rule = -1
							}
							if gotO != want {
								fail("enforced", gotO, want, got.Reason)
							}
							if got.IfEnforced == nil {
								if audit != want {
									fail("audit outcome missing", gotO, audit, got.Reason)
								}
								continue
							}
							audits++
							a := got.IfEnforced
							aO := refOutcome{a.Allowed, a.Tier, a.Policy, a.Rule}
							if aO != audit {
								fail("audit", aO, audit, a.Reason)
							}
							if (got.WouldDeny != nil) != (got.Allowed && !a.Allowed) {
								fail(fmt.Sprintf("wouldDeny %+v", got.WouldDeny), gotO, audit, got.Reason)
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d decisions compared over %d policy sets; %d with an audit outcome; by tier %v", checked, iterations, audits, tiers)
}
