package lab_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/lab"
	"github.com/bireme/bireme/netns/netnstest"
	"github.com/bireme/bireme/policy/report"
)

// Two pods with equal labels and different service accounts, and a third
// that labels itself with the admitted service account, on real enforcers:
// pay/db admits only the web service account of shop, by its signed token.
// Then `bireme policy report` over the enforcers' flow records counts the
// refusals against the policies that made them.
func TestLabServiceAccounts(t *testing.T) {
	netnstest.RequireNamespaces(t)
	const model = "testdata/service-accounts.yaml"
	l, _ := upLab(t, lab.Options{}, model)
	got := probe(t, l)
	for _, tt := range []struct {
		probe     string
		connected bool
		reason    string // substring of the enforcer's reason
	}{
		{"shop/web>pay/db:5432", true, ""},
		// Equal labels, other service account.
		{"shop/batch>pay/db:5432", false, "pay/db-ingress"},
		// Runs as batch, labelled bireme.io/service-account: web.
		{"shop/forger>pay/db:5432", false, "pay/db-ingress"},
		{"pay/ledger>pay/db:5432", false, "pay/db-ingress"},
		// pay/db-egress selects pay/db by its service account.
		{"pay/db>pay/ledger:80", false, "pay/db-egress"},
		{"shop/web>pay/ledger:80", true, ""},
		{"shop/batch>pay/ledger:80", true, ""},
		{"shop/forger>pay/ledger:80", true, ""},
	} {
		r, ok := got[tt.probe]
		switch {
		case !ok:
			t.Errorf("no probe %s", tt.probe)
		case r.Connected != tt.connected:
			t.Errorf("%s: connected=%v, want %v (%s)", tt.probe, r.Connected, tt.connected, r.Reason)
		case !strings.Contains(r.Reason, tt.reason):
			t.Errorf("%s: reason %q, want it to name %q", tt.probe, r.Reason, tt.reason)
		}
	}
	if len(got) != 8 {
		t.Errorf("%d probes, want 8 (4 clients to pay/db:5432, 4 to pay/ledger:80): %v", len(got), got)
	}

	// Refusals per policy from the enforcers' own records: three refused
	// connections into pay/db (however many SYNs each retransmitted), one
	// out of it.
	var flows []string
	for _, n := range l.Status().Nodes {
		flows = append(flows, n.Flows)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, biremeBinary(t), "policy", "report", "-f", model,
		"--flows", strings.Join(flows, ","), "--regime", "pci=true", "-o", "json").Output()
	if err != nil {
		t.Fatalf("policy report: %v", err)
	}
	var rep report.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	counts := map[string][2]int{}
	for _, p := range rep.Refusals.ByPolicy {
		counts[p.Policy] = [2]int{p.Ingress, p.Egress}
	}
	if counts["pay/db-ingress"] != [2]int{3, 0} || counts["pay/db-egress"] != [2]int{0, 1} || len(counts) != 2 ||
		rep.Refusals.Unattributed != 0 || len(rep.Refusals.Identity) != 0 {
		t.Errorf("refusals per policy %v (unattributed %d, identity %v), want pay/db-ingress 3 ingress, pay/db-egress 1 egress",
			counts, rep.Refusals.Unattributed, rep.Refusals.Identity)
	}
	if len(rep.Regimes) != 1 || rep.Regimes[0].Compliant {
		t.Errorf("regime pci=true: %+v, want not compliant (pay/ledger is open)", rep.Regimes)
	}
}
