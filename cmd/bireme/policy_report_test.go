package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bireme/bireme/policy/report"
)

// The command is a thin layer: it loads the store, builds identities, reads
// flow files and picks the format. policy/report's tests check the answers.
func TestPolicyReport(t *testing.T) {
	model := "../../lab/testdata/service-accounts.yaml"
	flows := filepath.Join(t.TempDir(), "node2.jsonl")
	if err := os.WriteFile(flows, []byte(`{"node":"node2","direction":"ingress","protocol":"TCP","localAddr":"198.18.2.2:5432","peerAddr":"198.18.1.3:40001","verdict":"deny","selectedBy":["pay/db-ingress"],"reason":"denied: selected by pay/db-ingress and no rule allows"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	out, err := runPolicy(t, "report", "-f", model, "--regime", "pci=true", "--flows", flows, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var r report.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(r.Workloads) != 5 || r.Workloads[0].Workload != "pay/ledger" || len(r.Regimes) != 1 || r.Regimes[0].Compliant ||
		r.Refusals == nil || r.Refusals.Records != 1 ||
		r.Workloads[2].Workload != "shop/forger" || len(r.Workloads[2].IgnoredLabels) != 1 {
		t.Errorf("json report: %s", out)
	}

	out, err = runPolicy(t, "report", "-f", model, "-o", "markdown")
	if err != nil || !strings.HasPrefix(out, "# Network policy compliance report") || strings.Contains(out, "Refused connections") {
		t.Errorf("markdown without --flows: %v\n%s", err, out)
	}
	out, err = runPolicy(t, "report", "-f", model)
	if err != nil || !strings.Contains(out, "service account web in namespace shop") {
		t.Errorf("table: %v\n%s", err, out)
	}

	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"report", "-f", model, "-o", "yaml"}, `--output "yaml"`},
		{[]string{"report", "-f", model, "--regime", "pci"}, "KEY=VALUE"},
		{[]string{"report", "-f", model, "--flows", filepath.Join(t.TempDir(), "none.jsonl")}, "none.jsonl"},
		{[]string{"report"}, "no input"},
	} {
		if _, err := runPolicy(t, bad.args...); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("policy %v: error %v, want one containing %q", bad.args, err, bad.want)
		}
	}
}
