package policy_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bireme/bireme/policy"
)

// TestCompileRefusesGuesses: Compile leaves validation to k8s, but what it
// could compile only by guessing is an error naming the policy and field,
// because each guess here would make a policy isolate less than it says.
func TestCompileRefusesGuesses(t *testing.T) {
	icmp := corev1.Protocol("ICMP")
	tests := []struct {
		name string
		spec networkingv1.NetworkPolicySpec
		want string
	}{
		{"unknown operator", networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{
			MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Equals", Values: []string{"a"}}}}},
			`spec.podSelector: matchExpressions[0]: unknown operator "Equals"`},
		{"In without values", networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{
			MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn}}}},
			"spec.podSelector: matchExpressions[0]: operator In needs values"},
		{"Exists with values", networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: metav1.LabelSelectorOpExists, Values: []string{"a"}}}}}}}}},
			"spec.ingress[0]: peer 0: namespaceSelector: matchExpressions[0]: operator Exists takes no values"},
		{"unknown policy type", networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{"Ingres"}},
			`spec.policyTypes[0]: unknown policy type "Ingres"`},
		{"unknown protocol", networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{{
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &icmp}}}}},
			`spec.egress[0]: ports[0]: unknown protocol "ICMP"`},
		{"empty peer", networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{{}}}}},
			"spec.ingress[0]: peer 0: none of podSelector, namespaceSelector, ipBlock"},
		{"bad CIDR", networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{{
			To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "198.18.0.0/33"}}}}}},
			`spec.egress[0]: ipBlock "198.18.0.0/33"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			np := &networkingv1.NetworkPolicy{Spec: tt.spec}
			np.Namespace, np.Name = "x", "p"
			e, err := policy.Compile(policy.Objects{Policies: []*networkingv1.NetworkPolicy{np}})
			if err == nil || e != nil {
				t.Fatalf("Compile = %v, %v; want no engine and an error", e, err)
			}
			if want := "NetworkPolicy x/p: " + tt.want; !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q lacks %q", err, want)
			}
		})
	}
}
