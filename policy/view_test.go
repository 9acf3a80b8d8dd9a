package policy_test

import (
	"slices"
	"testing"

	"github.com/bireme/bireme/policy"
)

// Selecting describes each rule's peers and ports in the words reports
// and decisions use; ingress named ports resolve on the selected pod.
func TestSelectingDescribesRules(t *testing.T) {
	e := compileWith(t, np("x", "t", `  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x, env: prod}}
    - namespaceSelector: {}
      podSelector: {matchExpressions: [{key: bireme.io/service-account, operator: In, values: [b, a]}, {key: tier, operator: NotIn, values: [x]}]}
    - podSelector: {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports: [{port: 80, endPort: 90}, {protocol: UDP}, {port: http}, {port: nope}]
  - {}
  egress:
  - to: [{namespaceSelector: {matchLabels: {bireme.io/namespace: "y"}}, podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]`))
	a := ident(t, e.Objects(), "x/a")
	in := e.Selecting(a, policy.Ingress)
	if len(in) != 1 || in[0].Policy != "x/t" || len(in[0].Rules) != 2 {
		t.Fatalf("ingress selection %+v", in)
	}
	r0 := in[0].Rules[0]
	wantPeers := []string{
		"any pod in namespace x labelled env=prod",
		"service account in (a, b) and labels tier notin (x) in any namespace",
		"any pod in namespace x",
		"address in 10.0.0.0/8 except 10.1.0.0/16",
	}
	wantPorts := []string{"TCP 80-90", "every UDP port", "TCP 80 (http)", "TCP port named nope (not defined by x/a: matches nothing)"}
	if !slices.Equal(r0.Peers, wantPeers) || !slices.Equal(r0.Ports, wantPorts) {
		t.Errorf("rule 0:\n peers %q\n want  %q\n ports %q\n want  %q", r0.Peers, wantPeers, r0.Ports, wantPorts)
	}
	if r1 := in[0].Rules[1]; r1.Index != 1 || !slices.Equal(r1.Peers, []string{"any peer"}) || !slices.Equal(r1.Ports, []string{"every port"}) {
		t.Errorf("rule 1: %+v", r1)
	}
	out := e.Selecting(a, policy.Egress)
	if len(out) != 1 || !slices.Equal(out[0].Rules[0].Peers, []string{"labels app=web in namespace y"}) ||
		!slices.Equal(out[0].Rules[0].Ports, []string{"TCP port named http"}) {
		t.Errorf("egress selection %+v", out)
	}
	if got := e.Selecting(ident(t, e.Objects(), "x/b"), policy.Ingress); len(got) != 0 {
		t.Errorf("x/b (app=db) selected by %+v", got)
	}
}
