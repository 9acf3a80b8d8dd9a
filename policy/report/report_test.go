package report_test

import (
	"bytes"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/policy/report"
)

// modelFile is the lab's service-account model, whose answers are known:
//
//	pay/db      sa db: ingress only from service account web of shop on db (5432); no egress
//	pay/ledger  sa ledger, pci=true like pay/db, isolated by nothing
//	shop/web, shop/batch, shop/forger: isolated by nothing
const modelFile = "../../lab/testdata/service-accounts.yaml"

// buildModel reports on the model with the given regimes and flow records.
func buildModel(t *testing.T, flows []flowlog.Record, regimes ...string) *report.Report {
	t.Helper()
	data, err := os.ReadFile(modelFile)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := k8s.Decode("service-accounts.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	e, err := k8s.Compile(objs)
	if err != nil {
		t.Fatal(err)
	}
	in := report.Input{Engine: e, Flows: flows, IgnoredLabels: map[string][]string{}}
	for _, p := range objs.Pods {
		in.Workloads = append(in.Workloads, k8s.IdentityOf("lab", objs.Namespace(p.Namespace), p))
		if ignored := k8s.IgnoredReservedLabels(p); ignored != nil {
			in.IgnoredLabels[p.Namespace+"/"+p.Name] = ignored
		}
	}
	for _, s := range regimes {
		reg, err := report.ParseRegime(s)
		if err != nil {
			t.Fatal(err)
		}
		in.Regimes = append(in.Regimes, reg)
	}
	return report.Build(in)
}

func TestReportWorkloads(t *testing.T) {
	r := buildModel(t, nil)
	var order []string
	for _, w := range r.Workloads {
		order = append(order, w.Workload)
	}
	// Isolated in no direction first (by name), pay/db (both) last.
	if want := []string{"pay/ledger", "shop/batch", "shop/forger", "shop/web", "pay/db"}; !slices.Equal(order, want) {
		t.Fatalf("workload order %v, want %v", order, want)
	}
	if !slices.Equal(r.Tiers, []string{report.TierAdmin, report.TierNetworkPolicy, report.TierBaseline}) || r.Refusals != nil {
		t.Errorf("tiers %v, refusals %+v", r.Tiers, r.Refusals)
	}
	for _, w := range r.Workloads[:4] {
		if w.Ingress.Isolated || w.Egress.Isolated || len(w.Ingress.Policies)+len(w.Egress.Policies) != 0 {
			t.Errorf("%s: %+v, want open both ways", w.Workload, w)
		}
	}
	forger := r.Workloads[2]
	if forger.ServiceAccount != "batch" || forger.Labels[identity.LabelServiceAccount] != "" ||
		!slices.Equal(forger.IgnoredLabels, []string{"bireme.io/service-account=web"}) {
		t.Errorf("shop/forger reported as %+v: the signed service account is batch and its own reserved label is ignored", forger)
	}
	db := r.Workloads[4]
	if db.ServiceAccount != "db" || !db.Ingress.Isolated || !db.Egress.Isolated {
		t.Fatalf("pay/db: %+v", db)
	}
	in := db.Ingress.Policies
	if len(in) != 1 || in[0].Tier != report.TierNetworkPolicy || in[0].Policy != "pay/db-ingress" || len(in[0].Rules) != 1 {
		t.Fatalf("pay/db ingress policies: %+v", in)
	}
	rule := in[0].Rules[0]
	if !slices.Equal(rule.Peers, []string{"service account web in namespace shop"}) || !slices.Equal(rule.Ports, []string{"TCP 5432 (db)"}) {
		t.Errorf("pay/db ingress rule: %+v", rule)
	}
	out := db.Egress.Policies
	if len(out) != 1 || out[0].Policy != "pay/db-egress" || len(out[0].Rules) != 0 {
		t.Errorf("pay/db egress policies: %+v (want one with no rule: nothing allowed)", out)
	}
}

func TestReportRegimes(t *testing.T) {
	r := buildModel(t, nil, "pci=true", "team=shop", "bireme.io/service-account=db", "pci=yes")
	want := []struct {
		regime    string
		compliant bool
		members   []string // workload, "+" when covered
	}{
		{"pci=true", false, []string{"pay/db+", "pay/ledger"}},
		// A namespace label is a regime too.
		{"team=shop", false, []string{"shop/batch", "shop/forger", "shop/web"}},
		// And a pseudo-label: the signed service account.
		{"bireme.io/service-account=db", true, []string{"pay/db+"}},
		// Nobody carries it: not a pass.
		{"pci=yes", false, nil},
	}
	if len(r.Regimes) != len(want) {
		t.Fatalf("regimes %+v", r.Regimes)
	}
	for i, w := range want {
		got := r.Regimes[i]
		var members []string
		for _, m := range got.Workloads {
			s := m.Workload
			if m.Covered {
				s += "+"
			}
			members = append(members, s)
		}
		if got.Regime != w.regime || got.Compliant != w.compliant || !slices.Equal(members, w.members) {
			t.Errorf("regime %s: compliant %v, members %v; want %s %v %v", got.Regime, got.Compliant, members, w.regime, w.compliant, w.members)
		}
	}
	if ledger := r.Regimes[0].Workloads[1]; !slices.Equal(ledger.Open, []string{"ingress", "egress"}) {
		t.Errorf("pay/ledger open directions %v", ledger.Open)
	}
	if _, err := report.ParseRegime("pci"); err == nil {
		t.Error("ParseRegime accepted a regime without =VALUE")
	}
}

func TestReportRefusals(t *testing.T) {
	deny := func(node, dir, local, peer string, selectedBy ...string) flowlog.Record {
		return flowlog.Record{Node: node, Direction: dir, Protocol: "TCP", LocalAddr: local, PeerAddr: peer,
			Verdict: flowlog.Deny, SelectedBy: selectedBy}
	}
	flows := []flowlog.Record{
		deny("node2", "ingress", "198.18.2.2:5432", "198.18.1.3:40001", "pay/db-ingress"),
		// The same connection's retransmitted SYN: counted once.
		deny("node2", "ingress", "198.18.2.2:5432", "198.18.1.3:40001", "pay/db-ingress"),
		deny("node2", "ingress", "198.18.2.2:5432", "198.18.2.1:40002", "pay/db-ingress"),
		deny("node2", "egress", "198.18.2.2:40003", "198.18.2.3:80", "pay/db-egress"),
		// Two policies selected and neither allowed: both count it.
		deny("node2", "ingress", "198.18.2.2:5432", "198.18.2.1:40004", "pay/db-ingress", "pay/gone"),
		{Node: "node2", Direction: "ingress", Protocol: "TCP", LocalAddr: "198.18.2.2:5432", PeerAddr: "198.18.9.9:1",
			Verdict: flowlog.Deny, TokenError: "unknown-ca"},
		{Node: "node2", Direction: "ingress", Protocol: "TCP", LocalAddr: "198.18.2.2:5432", PeerAddr: "198.18.9.9:2",
			Verdict: flowlog.Deny, Reason: "denied: selected by pay/db-ingress and no rule allows"},
		{Node: "node2", Direction: "ingress", Protocol: "TCP", LocalAddr: "198.18.2.2:5432", PeerAddr: "198.18.1.2:40005",
			Verdict: flowlog.Allow, Policy: "pay/db-ingress"},
	}
	rf := buildModel(t, flows).Refusals
	if rf == nil {
		t.Fatal("no refusals section with flow records given")
	}
	want := []report.PolicyRefusals{
		{Tier: "NetworkPolicy", Policy: "pay/db-egress", InStore: true, Egress: 1},
		{Tier: "NetworkPolicy", Policy: "pay/db-ingress", InStore: true, Ingress: 3},
		{Tier: "NetworkPolicy", Policy: "pay/gone", InStore: false, Ingress: 1},
	}
	if !slices.Equal(rf.ByPolicy, want) {
		t.Errorf("by policy %+v\nwant %+v", rf.ByPolicy, want)
	}
	if rf.Records != len(flows) || rf.Identity["unknown-ca"] != 1 || len(rf.Identity) != 1 || rf.Unattributed != 1 {
		t.Errorf("records %d, identity %v, unattributed %d", rf.Records, rf.Identity, rf.Unattributed)
	}
	// No records at all still lists every policy, with zero.
	if rf := buildModel(t, []flowlog.Record{}).Refusals; rf == nil || len(rf.ByPolicy) != 2 || rf.ByPolicy[0].Egress+rf.ByPolicy[1].Ingress != 0 {
		t.Errorf("empty flows: %+v", rf)
	}
}

// The two human formats say the same things: open workloads first, the
// rule in words, the regime verdict per workload and the refusal counts.
func TestReportRendering(t *testing.T) {
	flows := []flowlog.Record{{Node: "node2", Direction: "ingress", Protocol: "TCP", LocalAddr: "198.18.2.2:5432",
		PeerAddr: "198.18.1.3:40001", Verdict: flowlog.Deny, SelectedBy: []string{"pay/db-ingress"}}}
	r := buildModel(t, flows, "pci=true")
	for _, f := range []struct {
		name  string
		write func(*bytes.Buffer) error
		want  []string
	}{
		{"table", func(b *bytes.Buffer) error { return report.WriteTable(b, r) }, []string{
			"pay/ledger   ledger           app=ledger,pci=true  open",
			"pay/db       db               app=db,pci=true      isolated by pay/db-ingress  isolated by pay/db-egress",
			"pay/db    ingress    pay/db-ingress  rule 0    service account web in namespace shop  TCP 5432 (db)",
			"shop/forger  bireme.io/service-account=web (runs as service account batch)",
			"REGIME pci=true: NOT every workload covered",
			"pay/ledger  NOT covered: open for ingress and egress",
			"NetworkPolicy  pay/db-ingress  1        0",
		}},
		{"markdown", func(b *bytes.Buffer) error { return report.WriteMarkdown(b, r) }, []string{
			"# Network policy compliance report",
			"| pay/ledger | ledger | app=ledger,pci=true | open | open |",
			"| pay/db | ingress | pay/db-ingress | rule 0 | service account web in namespace shop | TCP 5432 (db) |",
			"| shop/forger | bireme.io/service-account=web (runs as service account batch) |",
			"## Regime `pci=true`: NOT every workload covered",
			"| pay/ledger | NOT covered: open for ingress and egress |",
			"| NetworkPolicy | pay/db-ingress | 1 | 0 |",
		}},
	} {
		var b bytes.Buffer
		if err := f.write(&b); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		for _, w := range f.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s output lacks %q:\n%s", f.name, w, out)
			}
		}
		if strings.Index(out, "pay/ledger") > strings.Index(out, "pay/db") {
			t.Errorf("%s: the open pay/ledger is not listed before pay/db:\n%s", f.name, out)
		}
	}
}

// clusterTiers: Admin and Baseline ClusterNetworkPolicies over three
// namespaces, each isolating (or not) in a way worth telling apart.
const clusterTiers = `apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {zone: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {zone: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: c, labels: {zone: c}}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: a, labels: {app: p}}
spec: {nodeName: n1, containers: [{name: m, image: none}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: b, labels: {app: p}}
spec: {nodeName: n1, containers: [{name: m, image: none}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: c, labels: {app: p}}
spec: {nodeName: n1, containers: [{name: m, image: none}]}
---
# a: Admin accepts zone b, then denies every peer: isolated for egress.
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: seal-a}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {zone: a}}}
  egress:
  - {name: to-b, action: Accept, to: [{namespaces: {matchLabels: {zone: b}}}]}
  - {name: rest, action: Deny, to: [{networks: [0.0.0.0/0, "::/0"]}]}
---
# b: an Admin Pass ahead of the same denial: what passes reaches open tiers.
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: pass-b}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {zone: b}}}
  egress:
  - {name: delegate-a, action: Pass, to: [{namespaces: {matchLabels: {zone: a}}}]}
  - {name: rest, action: Deny, to: [{networks: [0.0.0.0/0, "::/0"]}]}
---
# every namespace: a Baseline deny of every pod leaves other peers open
# (ingress rules name pods only: addresses outside the cluster, pods of
# other clusters).
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: default-deny-pods}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  ingress:
  - {name: pods, action: Deny, from: [{namespaces: {}}]}
`

func TestReportClusterTiers(t *testing.T) {
	objs, err := k8s.Decode("tiers.yaml", []byte(clusterTiers))
	if err != nil {
		t.Fatal(err)
	}
	e, err := k8s.Compile(objs)
	if err != nil {
		t.Fatal(err)
	}
	in := report.Input{Engine: e, Flows: []flowlog.Record{
		{Node: "n1", Direction: "egress", Protocol: "TCP", LocalAddr: "198.18.0.1:4000", PeerAddr: "198.18.0.3:80",
			Verdict: flowlog.Deny, Tier: "admin", Policy: "seal-a", SelectedBy: []string{"seal-a"}},
	}}
	for _, p := range objs.Pods {
		in.Workloads = append(in.Workloads, k8s.IdentityOf("lab", objs.Namespace(p.Namespace), p))
	}
	r := report.Build(in)
	got := map[string]report.Workload{}
	for _, w := range r.Workloads {
		got[w.Workload] = w
	}
	for _, tt := range []struct {
		workload        string
		ingress, egress bool
		ingressPolicies []string
		egressPolicies  []string
	}{
		{"a/p", false, true, []string{"default-deny-pods"}, []string{"seal-a"}},
		{"b/p", false, false, []string{"default-deny-pods"}, []string{"pass-b"}},
		{"c/p", false, false, []string{"default-deny-pods"}, nil},
	} {
		w := got[tt.workload]
		names := func(c report.Coverage) []string {
			var out []string
			for _, p := range c.Policies {
				out = append(out, p.Policy)
			}
			return out
		}
		if w.Ingress.Isolated != tt.ingress || w.Egress.Isolated != tt.egress ||
			!slices.Equal(names(w.Ingress), tt.ingressPolicies) || !slices.Equal(names(w.Egress), tt.egressPolicies) {
			t.Errorf("%s: ingress isolated %v by %v, egress isolated %v by %v; want %v %v, %v %v", tt.workload,
				w.Ingress.Isolated, names(w.Ingress), w.Egress.Isolated, names(w.Egress), tt.ingress, tt.ingressPolicies, tt.egress, tt.egressPolicies)
		}
	}
	seal := got["a/p"].Egress.Policies[0]
	if seal.Tier != report.TierAdmin || seal.Priority != 10 || len(seal.Rules) != 2 ||
		seal.Rules[0].Action != "Accept" || seal.Rules[1].Name != "rest" || seal.Rules[1].Action != "Deny" {
		t.Errorf("seal-a as reported: %+v", seal)
	}
	var b bytes.Buffer
	if err := report.WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"isolated by seal-a (Admin tier, priority 10)",
		"open, though selected by pass-b (Admin tier, priority 5)",
		`rule 1 "rest": Deny`,
		"Admin     seal-a",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	var refusals report.PolicyRefusals
	for _, p := range r.Refusals.ByPolicy {
		if p.Policy == "seal-a" {
			refusals = p
		}
	}
	if refusals != (report.PolicyRefusals{Tier: report.TierAdmin, Policy: "seal-a", InStore: true, Egress: 1}) {
		t.Errorf("seal-a refusals: %+v (all: %+v)", refusals, r.Refusals.ByPolicy)
	}
}
