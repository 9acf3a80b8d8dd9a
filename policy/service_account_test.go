package policy_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/policy"
)

// The lab's service-account model: equal labels, different service
// accounts, and a pod that labels itself with another service account.
func serviceAccountEngine(t *testing.T) *policy.Engine {
	t.Helper()
	data, err := os.ReadFile("../lab/testdata/service-accounts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.Compile(parseObjects(t, string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestServiceAccountSelection(t *testing.T) {
	e := serviceAccountEngine(t)
	objs := e.Objects()
	db := ident(t, objs, "pay/db")
	for _, tt := range []struct {
		peer    string
		allowed bool
		reason  string
	}{
		{"shop/web", true, "allowed by pay/db-ingress ingress rule 0: peer matched by service account web in namespace shop"},
		// Same labels as shop/web, other service account.
		{"shop/batch", false, "denied: selected by pay/db-ingress and no rule allows"},
		// Labels itself bireme.io/service-account: web; runs as batch.
		{"shop/forger", false, "denied: selected by pay/db-ingress and no rule allows"},
		{"pay/ledger", false, "denied: selected by pay/db-ingress and no rule allows"},
	} {
		d := e.Decide(db, peerOf(t, objs, tt.peer), policy.Ingress, 5432, "TCP")
		if d.Allowed != tt.allowed || d.Reason != tt.reason {
			t.Errorf("pay/db ingress from %s: %v %q, want %v %q", tt.peer, d.Allowed, d.Reason, tt.allowed, tt.reason)
		}
		if tt.allowed && d.Match != "service account web in namespace shop" {
			t.Errorf("pay/db ingress from %s: match %q", tt.peer, d.Match)
		}
	}

	// A peer identity that arrives with reserved labels the engine did not
	// build (as a token from a node that signs what a pod wrote would carry
	// it, were tokens not to drop them): the signed service account decides.
	forged := ident(t, objs, "shop/batch")
	forged.Labels = map[string]string{"app": "client", identity.LabelServiceAccount: "web", identity.LabelNamespace: "shop"}
	if d := e.Decide(db, policy.Peer{Identity: forged}, policy.Ingress, 5432, "TCP"); d.Allowed {
		t.Errorf("a forged bireme.io/service-account label admitted shop/batch: %s", d.Reason)
	}

	// The subject side: db-egress selects pay/db by its service account,
	// and not pay/ledger, whose labels say nothing of it.
	ledger := ident(t, objs, "pay/ledger")
	if d := e.Decide(db, policy.Peer{Identity: ledger}, policy.Egress, 80, "TCP"); d.Allowed || !slices.Equal(d.SelectedBy, []string{"pay/db-egress"}) {
		t.Errorf("pay/db egress: %+v", d)
	}
	if d := e.Decide(ledger, policy.Peer{Identity: db}, policy.Egress, 5432, "TCP"); !d.Allowed || len(d.SelectedBy) != 0 {
		t.Errorf("pay/ledger egress: %+v", d)
	}
	// A pod that labels itself with db's service account is not selected
	// by a policy on that service account.
	impostor := ident(t, objs, "pay/ledger")
	impostor.Labels = map[string]string{identity.LabelServiceAccount: "db"}
	if d := e.Decide(impostor, policy.Peer{Identity: db}, policy.Egress, 5432, "TCP"); !d.Allowed || len(d.SelectedBy) != 0 {
		t.Errorf("a forged label made a policy select pay/ledger: %+v", d)
	}
}

// Compile, which informer-fed paths call without k8s.Validate, refuses a
// selector on a reserved key Bireme never sets: it would select nothing,
// and a podSelector that selects nothing isolates nothing.
func TestCompileRefusesUnknownReservedKey(t *testing.T) {
	for _, tt := range []struct {
		name string
		np   func(*networkingv1.NetworkPolicy)
		want string
	}{
		{"subject", func(np *networkingv1.NetworkPolicy) {
			np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"bireme.io/serviceaccount": "db"}}
		}, "spec.podSelector: matchLabels"},
		{"namespace side", func(np *networkingv1.NetworkPolicy) {
			np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: identity.LabelServiceAccount, Operator: metav1.LabelSelectorOpExists}}},
			}}}}
		}, "spec.ingress[0]: peer 0: namespaceSelector: matchExpressions[0]"},
	} {
		np := &networkingv1.NetworkPolicy{}
		np.Namespace, np.Name = "pay", "bad"
		tt.np(np)
		_, err := policy.Compile(policy.Objects{Policies: []*networkingv1.NetworkPolicy{np}})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Compile error %v, want one containing %q", tt.name, err, tt.want)
		}
	}
}
