package policy_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/bireme/bireme/policy"
)

// np renders a NetworkPolicy document; spec is YAML indented by two spaces.
func np(ns, name, spec string) string {
	return fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: \"%s\", namespace: \"%s\"}\nspec:\n%s\n", name, ns, spec)
}

// TestSemantics checks each NetworkPolicy rule of the Kubernetes API
// reference (networking.k8s.io/v1), one case per rule, on the fixture world.
func TestSemantics(t *testing.T) {
	denyAllIngress := np("x", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress]")
	tests := []struct {
		name     string
		policies []string
		local    string // the protected workload, "ns/pod"
		peer     string // "ns/pod", "cluster:ns/pod" or an IP (anonymous)
		dir      policy.Direction
		port     uint16
		proto    string
		allowed  bool
		policy   string // when allowed by a rule
		rule     int
		selected []string // SelectedBy, when checked
		strict   bool     // compile with Options.IPBlockIdentityOnly
		byAddr   bool     // Decision.MatchedByAddress
	}{
		// Isolation.
		{name: "no policy: ingress unrestricted", local: "x/a", peer: "y/b", port: 80, allowed: true, rule: -1},
		{name: "no policy: anonymous peer unrestricted", local: "x/a", peer: "203.0.113.1", port: 80, allowed: true, rule: -1},
		{name: "policy in another namespace does not select", policies: []string{np("y", "deny", "  podSelector: {}\n  ingress: []")},
			local: "x/a", peer: "y/b", port: 80, allowed: true, rule: -1},
		{name: "podSelector not matching local does not isolate", policies: []string{np("x", "db", "  podSelector: {matchLabels: {app: db}}\n  ingress: []")},
			local: "x/a", peer: "y/b", port: 80, allowed: true, rule: -1},
		{name: "empty podSelector selects all pods: deny all", policies: []string{denyAllIngress},
			local: "x/a", peer: "x/c", port: 80, selected: []string{"x/deny-all"}},
		{name: "ingress: [] denies all", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: []")},
			local: "x/a", peer: "x/c", port: 80},
		{name: "ingress: [{}] allows all", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{}]")},
			local: "x/a", peer: "z/c", port: 1234, allowed: true, policy: "x/p"},
		{name: "ingress: [{}] allows anonymous", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{}]")},
			local: "x/a", peer: "203.0.113.1", port: 80, allowed: true, policy: "x/p"},
		{name: "from: [] allows all sources", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [], ports: [{port: 80}]}]")},
			local: "x/a", peer: "z/c", port: 80, allowed: true, policy: "x/p"},

		// Peers.
		{name: "podSelector alone: same namespace", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]")},
			local: "x/a", peer: "x/c", port: 80, allowed: true, policy: "x/p"},
		{name: "podSelector alone: other namespace with same labels denied", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]")},
			local: "x/a", peer: "y/b", port: 80},
		{name: "empty podSelector peer: all pods of the namespace", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]")},
			local: "x/a", peer: "x/b", port: 80, allowed: true, policy: "x/p"},
		{name: "empty podSelector peer: not other namespaces", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]")},
			local: "x/a", peer: "z/c", port: 80},
		{name: "namespaceSelector {} all namespaces", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}]}]")},
			local: "x/a", peer: "z/c", port: 80, allowed: true, policy: "x/p"},
		{name: "namespaceSelector {} excludes anonymous", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}]}]")},
			local: "x/a", peer: "198.18.0.7", port: 80},
		{name: "namespaceSelector by label", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}]}]")},
			local: "x/a", peer: "y/a", port: 80, allowed: true, policy: "x/p"},
		{name: "namespaceSelector by label: own namespace not matching", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}]}]")},
			local: "x/a", peer: "x/c", port: 80},
		{name: "namespaceSelector by metadata.name label", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]")},
			local: "x/a", peer: "z/c", port: 80, allowed: true, policy: "x/p"},
		{name: "AND in one peer: both match", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: client}}}]}]")},
			local: "x/a", peer: "y/b", port: 80, allowed: true, policy: "x/p"},
		{name: "AND in one peer: namespace only is not enough", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: client}}}]}]")},
			local: "x/a", peer: "y/a", port: 80},
		{name: "AND in one peer: pod only is not enough", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: client}}}]}]")},
			local: "x/a", peer: "x/c", port: 80},
		{name: "OR of two peers: namespace one", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}, {podSelector: {matchLabels: {app: client}}}]}]")},
			local: "x/a", peer: "y/a", port: 80, allowed: true, policy: "x/p"},
		{name: "OR of two peers: pod one", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}, {podSelector: {matchLabels: {app: client}}}]}]")},
			local: "x/a", peer: "x/c", port: 80, allowed: true, policy: "x/p"},
		{name: "OR of two peers: neither", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}, {podSelector: {matchLabels: {app: client}}}]}]")},
			local: "x/a", peer: "z/c", port: 80},

		// Selector operators.
		{name: "In", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: app, operator: In, values: [client, db]}]}}]}]")},
			local: "x/a", peer: "y/b", port: 80, allowed: true, policy: "x/p"},
		{name: "In: value not listed", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: app, operator: In, values: [client, db]}]}}]}]")},
			local: "x/a", peer: "y/a", port: 80},
		{name: "NotIn", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}}]}]")},
			local: "x/a", peer: "y/b", port: 80, allowed: true, policy: "x/p"},
		{name: "NotIn: listed value", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}}]}]")},
			local: "x/a", peer: "z/c", port: 80},
		{name: "NotIn matches when key absent", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: NotIn, values: [a]}]}}]}]")},
			local: "x/a", peer: "z/c", port: 80, allowed: true, policy: "x/p"},
		{name: "Exists", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: Exists}]}}]}]")},
			local: "x/a", peer: "y/b", port: 80, allowed: true, policy: "x/p"},
		{name: "Exists: key absent", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: Exists}]}}]}]")},
			local: "x/a", peer: "z/c", port: 80},
		{name: "DoesNotExist", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}}]}]")},
			local: "x/a", peer: "z/c", port: 80, allowed: true, policy: "x/p"},
		{name: "matchLabels AND matchExpressions", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}, matchExpressions: [{key: app, operator: Exists}]}}]}]")},
			local: "x/a", peer: "y/b", port: 80},
		{name: "spec podSelector with expressions selects local", policies: []string{np("x", "p", "  podSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}\n  ingress: []")},
			local: "x/a", peer: "x/c", port: 80},

		// Ports.
		{name: "numeric port matches", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]")},
			local: "x/a", peer: "x/c", port: 80, allowed: true, policy: "x/p"},
		{name: "numeric port other port", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]")},
			local: "x/a", peer: "x/c", port: 81},
		{name: "protocol defaults to TCP: UDP denied", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]")},
			local: "x/a", peer: "x/c", port: 80, proto: "UDP"},
		{name: "UDP rule", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{protocol: UDP, port: 53}]}]")},
			local: "x/a", peer: "x/c", port: 53, proto: "UDP", allowed: true, policy: "x/p"},
		{name: "UDP rule does not allow TCP", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{protocol: UDP, port: 53}]}]")},
			local: "x/a", peer: "x/c", port: 53},
		{name: "protocol without port: all its ports", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{protocol: SCTP}]}]")},
			local: "x/a", peer: "x/c", port: 3868, proto: "SCTP", allowed: true, policy: "x/p"},
		{name: "endPort low bound", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: 8000, endPort: 8100}]}]")},
			local: "x/a", peer: "x/c", port: 8000, allowed: true, policy: "x/p"},
		{name: "endPort high bound", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: 8000, endPort: 8100}]}]")},
			local: "x/a", peer: "x/c", port: 8100, allowed: true, policy: "x/p"},
		{name: "endPort above", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: 8000, endPort: 8100}]}]")},
			local: "x/a", peer: "x/c", port: 8101},
		{name: "endPort below", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: 8000, endPort: 8100}]}]")},
			local: "x/a", peer: "x/c", port: 7999},
		{name: "named port resolved on local (ingress)", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: http}]}]")},
			local: "x/b", peer: "x/c", port: 8080, allowed: true, policy: "x/p"},
		{name: "named port: other pods' number does not count", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: http}]}]")},
			local: "x/b", peer: "x/c", port: 80},
		{name: "named port some pods define: defined", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: metrics}]}]")},
			local: "x/a", peer: "x/c", port: 9090, allowed: true, policy: "x/p"},
		{name: "named port some pods define: undefined matches nothing", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: metrics}]}]")},
			local: "x/b", peer: "x/c", port: 9090},
		{name: "named port with wrong protocol", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: http, protocol: UDP}]}]")},
			local: "x/a", peer: "x/c", port: 80, proto: "UDP"},
		{name: "ports OR: second entry", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: 443}, {port: 80}]}]")},
			local: "x/a", peer: "x/c", port: 80, allowed: true, policy: "x/p"},
		{name: "peers AND ports: right peer wrong port", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 443}]}]")},
			local: "x/a", peer: "x/c", port: 80},

		// ipBlock.
		{name: "ipBlock anonymous inside", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/15, except: [198.18.1.0/24]}}]}]")},
			local: "x/a", peer: "198.18.2.5", port: 80, allowed: true, policy: "x/p", byAddr: true},
		{name: "ipBlock anonymous in except", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/15, except: [198.18.1.0/24]}}]}]")},
			local: "x/a", peer: "198.18.1.5", port: 80},
		{name: "ipBlock anonymous outside", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/15}}]}]")},
			local: "x/a", peer: "203.0.113.9", port: 80},
		{name: "ipBlock IPv4-mapped address", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/15}}]}]")},
			local: "x/a", peer: "::ffff:198.18.3.3", port: 80, allowed: true, policy: "x/p", byAddr: true},
		{name: "ipBlock IPv6", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: '2001:db8::/32', except: ['2001:db8:1::/48']}}]}]")},
			local: "x/a", peer: "2001:db8:2::1", port: 80, allowed: true, policy: "x/p", byAddr: true},
		{name: "ipBlock matches identified peer by address (upstream)", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]")},
			local: "x/a", peer: "x/c", port: 80, allowed: true, policy: "x/p", byAddr: true},
		{name: "ipBlock except excludes identified peer's address", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/15, except: [198.18.0.0/24]}}]}]")},
			local: "x/a", peer: "x/c", port: 80},
		{name: "ipBlock never matches identified peer (strict mode)", strict: true, policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]")},
			local: "x/a", peer: "x/c", port: 80},
		{name: "ipBlock matches anonymous peer (strict mode)", strict: true, policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]")},
			local: "x/a", peer: "198.18.0.5", port: 80, allowed: true, policy: "x/p", byAddr: true},
		{name: "selector never matches anonymous peer", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]")},
			local: "x/a", peer: "198.18.0.5", port: 80},

		// policyTypes and egress.
		{name: "no policyTypes, egress rules: egress enforced", policies: []string{np("x", "p", "  podSelector: {}\n  egress: [{ports: [{port: 53, protocol: UDP}]}]")},
			local: "x/c", peer: "y/a", dir: policy.Egress, port: 80},
		{name: "no policyTypes, egress rules: ingress also enforced", policies: []string{np("x", "p", "  podSelector: {}\n  egress: [{ports: [{port: 53, protocol: UDP}]}]")},
			local: "x/a", peer: "y/b", port: 80},
		{name: "no policyTypes, only ingress: egress unrestricted", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: []")},
			local: "x/c", peer: "y/a", dir: policy.Egress, port: 80, allowed: true, rule: -1},
		{name: "no policyTypes, egress: [] does not enforce egress", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: []\n  egress: []")},
			local: "x/c", peer: "y/a", dir: policy.Egress, port: 80, allowed: true, rule: -1},
		{name: "policyTypes [Ingress, Egress], egress: [] denies egress", policies: []string{np("x", "p", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  egress: []")},
			local: "x/c", peer: "y/a", dir: policy.Egress, port: 80},
		{name: "policyTypes [Egress] without rules: deny all egress", policies: []string{np("x", "p", "  podSelector: {}\n  policyTypes: [Egress]")},
			local: "x/c", peer: "y/a", dir: policy.Egress, port: 80, selected: []string{"x/p"}},
		{name: "egress-only policy leaves ingress open", policies: []string{np("x", "p", "  podSelector: {}\n  policyTypes: [Egress]")},
			local: "x/a", peer: "y/b", port: 80, allowed: true, rule: -1},
		{name: "ingress rules ignored when policyTypes is [Egress]", policies: []string{np("x", "p", "  podSelector: {}\n  policyTypes: [Egress]\n  ingress: []")},
			local: "x/a", peer: "y/b", port: 80, allowed: true, rule: -1},
		{name: "egress rules ignored when policyTypes is [Ingress]", policies: []string{np("x", "p", "  podSelector: {}\n  policyTypes: [Ingress]\n  egress: [{ports: [{port: 1}]}]")},
			local: "x/c", peer: "y/a", dir: policy.Egress, port: 80, allowed: true, rule: -1},
		{name: "egress to podSelector", policies: []string{np("x", "p", "  podSelector: {matchLabels: {app: client}}\n  egress: [{to: [{podSelector: {matchLabels: {app: web}}}]}]")},
			local: "x/c", peer: "x/a", dir: policy.Egress, port: 80, allowed: true, policy: "x/p"},
		{name: "egress to podSelector: other namespace", policies: []string{np("x", "p", "  podSelector: {matchLabels: {app: client}}\n  egress: [{to: [{podSelector: {matchLabels: {app: web}}}]}]")},
			local: "x/c", peer: "y/a", dir: policy.Egress, port: 80},
		{name: "egress named port resolved on peer", policies: []string{np("x", "p", "  podSelector: {}\n  egress: [{ports: [{port: http}]}]")},
			local: "x/c", peer: "x/b", dir: policy.Egress, port: 8080, allowed: true, policy: "x/p"},
		{name: "egress named port not on local", policies: []string{np("x", "p", "  podSelector: {}\n  egress: [{ports: [{port: http}]}]")},
			local: "x/a", peer: "x/b", dir: policy.Egress, port: 80},
		{name: "egress named port peer does not define", policies: []string{np("x", "p", "  podSelector: {}\n  egress: [{ports: [{port: metrics}]}]")},
			local: "x/c", peer: "x/b", dir: policy.Egress, port: 9090},
		{name: "egress named port to anonymous matches nothing", policies: []string{np("x", "p", "  podSelector: {}\n  egress: [{ports: [{port: http}]}]")},
			local: "x/c", peer: "198.18.0.5", dir: policy.Egress, port: 80},
		{name: "egress ipBlock to anonymous", policies: []string{np("x", "p", "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 198.18.0.0/16}}], ports: [{port: 443}]}]")},
			local: "x/c", peer: "198.18.4.4", dir: policy.Egress, port: 443, allowed: true, policy: "x/p", byAddr: true},
		{name: "egress to: [] allows anonymous", policies: []string{np("x", "p", "  podSelector: {}\n  egress: [{to: [], ports: [{port: 443}]}]")},
			local: "x/c", peer: "203.0.113.4", dir: policy.Egress, port: 443, allowed: true, policy: "x/p"},

		// Union of policies.
		{name: "union: second policy allows", policies: []string{denyAllIngress, np("x", "web", "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 80}]}]")},
			local: "x/a", peer: "z/c", port: 80, allowed: true, policy: "x/web", selected: []string{"x/deny-all", "x/web"}},
		{name: "union: first allowing rule in name order", policies: []string{np("x", "b", "  podSelector: {}\n  ingress: [{ports: [{port: 1}]}, {}]"), np("x", "a", "  podSelector: {}\n  ingress: [{ports: [{port: 2}]}, {ports: [{port: 80}]}]")},
			local: "x/a", peer: "z/c", port: 80, allowed: true, policy: "x/a", rule: 1},
		{name: "union: nobody allows", policies: []string{denyAllIngress, np("x", "web", "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 443}]}]")},
			local: "x/a", peer: "z/c", port: 80, selected: []string{"x/deny-all", "x/web"}},

		// Cross-cluster.
		{name: "cross-cluster: podSelector alone never matches", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]")},
			local: "x/a", peer: "c2:x/c", port: 80},
		{name: "cross-cluster: namespaceSelector without the cluster label matches local peers only", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {}}]}]")},
			local: "x/a", peer: "c2:x/c", port: 80},
		{name: "cross-cluster: empty namespaceSelector is every namespace of this cluster", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}]}]")},
			local: "x/a", peer: "c2:x/c", port: 80},
		{name: "cross-cluster: namespaceSelector naming the cluster matches signed labels", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {bireme.io/cluster: c2, team: a}}, podSelector: {}}]}]")},
			local: "x/a", peer: "c2:x/c", port: 80, allowed: true, policy: "x/p"},
		{name: "cross-cluster: namespaceSelector naming another cluster", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {bireme.io/cluster: c3}}}]}]")},
			local: "x/a", peer: "c2:x/c", port: 80},
		{name: "cross-cluster: cluster label In list", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: bireme.io/cluster, operator: In, values: [c2, c3]}]}}]}]")},
			local: "x/a", peer: "c2:x/c", port: 80, allowed: true, policy: "x/p"},
		{name: "cross-cluster: the cluster label selects the local cluster too", policies: []string{np("x", "p", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {bireme.io/cluster: c1}}}]}]")},
			local: "x/a", peer: "z/c", port: 80, allowed: true, policy: "x/p"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := compileWith(t, tt.policies...)
			if tt.strict {
				var err error
				if e, err = policy.CompileWith(e.Objects(), policy.Options{IPBlockIdentityOnly: true}); err != nil {
					t.Fatal(err)
				}
			}
			objs := e.Objects()
			local := ident(t, objs, tt.local)
			peer := peerOf(t, objs, tt.peer)
			proto := tt.proto
			if proto == "" {
				proto = "TCP"
			}
			d := e.Decide(local, peer, tt.dir, tt.port, proto)
			if d.Allowed != tt.allowed {
				t.Fatalf("allowed = %v, want %v (%s)", d.Allowed, tt.allowed, d.Reason)
			}
			wantRule := tt.rule
			if !tt.allowed {
				wantRule = -1
			}
			if d.Policy != tt.policy || d.Rule != wantRule {
				t.Fatalf("policy, rule = %q, %d; want %q, %d (%s)", d.Policy, d.Rule, tt.policy, wantRule, d.Reason)
			}
			if d.MatchedByAddress != tt.byAddr {
				t.Fatalf("matchedByAddress = %v, want %v (%s)", d.MatchedByAddress, tt.byAddr, d.Reason)
			}
			if tt.selected != nil && !slices.Equal(d.SelectedBy, tt.selected) {
				t.Fatalf("selectedBy = %v, want %v", d.SelectedBy, tt.selected)
			}
			// Decisions are cached: the same question gives the same answer.
			if again := e.Decide(local, peer, tt.dir, tt.port, proto); again.Reason != d.Reason || again.Allowed != d.Allowed {
				t.Fatalf("cached decision differs: %+v vs %+v", again, d)
			}
		})
	}
}

// TestReasons checks the sentences explain and flow records show.
func TestReasons(t *testing.T) {
	e := compileWith(t,
		np("x", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress, Egress]"),
		np("x", "allow-web", "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 80}]}]"))
	objs := e.Objects()
	tests := []struct {
		local, peer string
		dir         policy.Direction
		port        uint16
		want        string
	}{
		{"x/a", "x/c", policy.Ingress, 80, "allowed by x/allow-web ingress rule 0: the rule allows any peer"},
		{"x/a", "x/c", policy.Ingress, 81, "denied: selected by x/allow-web, x/deny-all and no rule allows"},
		{"x/a", "x/c", policy.Egress, 81, "denied: selected by x/deny-all and no rule allows"},
		{"y/a", "x/c", policy.Ingress, 81, "allowed: no policy selects y/a for ingress"},
	}
	for _, tt := range tests {
		d := e.Decide(ident(t, objs, tt.local), peerOf(t, objs, tt.peer), tt.dir, tt.port, "TCP")
		if d.Reason != tt.want {
			t.Errorf("%s %s %s:%d: reason %q, want %q", tt.local, tt.dir, tt.peer, tt.port, d.Reason, tt.want)
		}
	}
	// Odd inputs fail closed.
	a := ident(t, objs, "y/a")
	for name, d := range map[string]policy.Decision{
		"nil local":     e.Decide(nil, policy.Peer{}, policy.Ingress, 80, "TCP"),
		"bad protocol":  e.Decide(a, policy.Peer{}, policy.Ingress, 80, "GRE"),
		"bad direction": e.Decide(a, policy.Peer{}, policy.Direction(7), 80, "TCP"),
	} {
		if d.Allowed || !strings.HasPrefix(d.Reason, "denied: ") {
			t.Errorf("%s: %+v, want denied", name, d)
		}
	}
}
