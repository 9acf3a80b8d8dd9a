package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const policyWorld = `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, ports: [{name: pg, containerPort: 5432}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {containers: [{name: c}]}
`

const policyRules = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}, {ipBlock: {cidr: 198.18.0.0/16}}], ports: [{port: http}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: web}}}]}]
`

// runPolicy runs `bireme policy ARGS...` and returns its output and error.
func runPolicy(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return runCommand(t, newPolicyCmd(), args...)
}

// expectOutput fails t for each of want that out lacks.
func expectOutput(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

func policyDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestPolicyCheck(t *testing.T) {
	dir := policyDir(t, map[string]string{
		"world.yaml":    policyWorld,
		"policies.yaml": policyRules,
		"bad.yml":       strings.Replace(policyRules, "port: http", "port: 90, endPort: 80", 1),
	})
	good := []string{filepath.Join(dir, "world.yaml"), filepath.Join(dir, "policies.yaml")}
	tests := []struct {
		name    string
		args    []string
		wantErr []string
		wantOut string
	}{
		{"valid files", []string{"check", "-f", good[0], "-f", good[1]}, nil, "ok: 1 namespaces, 3 pods, 2 network policies"},
		{"comma-separated", []string{"check", "-f", good[0] + "," + good[1]}, nil, "ok: 1 namespaces, 3 pods, 2 network policies"},
		{"bad file", []string{"check", "-f", filepath.Join(dir, "bad.yml")},
			[]string{"bad.yml: NetworkPolicy shop/allow-web: spec.ingress[0].ports[0].endPort", "must be >= port"}, ""},
		{"directory with a bad file", []string{"check", "-f", dir}, []string{"bad.yml"}, ""},
		{"missing file", []string{"check", "-f", filepath.Join(dir, "nope.yaml")}, []string{"nope.yaml"}, ""},
		{"no input", []string{"check"}, []string{"no input"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runPolicy(t, tt.args...)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("error: %v", err)
				}
				if !strings.Contains(out, tt.wantOut) {
					t.Fatalf("output %q lacks %q", out, tt.wantOut)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error; output %q", out)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestPolicyExplain(t *testing.T) {
	dir := policyDir(t, map[string]string{"world.yaml": policyWorld, "policies.yaml": policyRules})
	tests := []struct {
		name    string
		args    []string
		wantOut []string
		wantErr string
	}{
		{"allowed by both", []string{"--from", "shop/client", "--to", "shop/web", "--port", "8080"},
			[]string{"egress  of shop/client: allowed by shop/client-egress egress rule 0", "ingress of shop/web: allowed by shop/allow-web ingress rule 0", "verdict: allowed"}, ""},
		{"named port", []string{"--from", "shop/client", "--to", "shop/web", "--port", "http"},
			[]string{"port 8080 (http)/TCP", "verdict: allowed"}, ""},
		{"egress denied", []string{"--from", "shop/client", "--to", "shop/db", "--port", "pg"},
			[]string{"egress  of shop/client: denied: selected by shop/client-egress and no rule allows", "ingress of shop/db: allowed: no policy selects shop/db for ingress", "verdict: denied"}, ""},
		{"ingress denied", []string{"--from", "shop/db", "--to", "shop/web", "--port", "8080"},
			[]string{"ingress of shop/web: denied: selected by shop/allow-web and no rule allows", "verdict: denied"}, ""},
		{"wrong protocol", []string{"--from", "shop/client", "--to", "shop/web", "--port", "8080", "--protocol", "UDP"},
			[]string{"8080/UDP", "verdict: denied"}, ""},
		{"anonymous client in ipBlock", []string{"--from", "198.18.3.4", "--to", "shop/web", "--port", "8080"},
			[]string{"egress  of 198.18.3.4: not decided", "verdict: allowed"}, ""},
		{"anonymous client outside ipBlock", []string{"--from", "198.19.3.4", "--to", "shop/web", "--port", "8080"},
			[]string{"verdict: denied"}, ""},
		{"unknown pod", []string{"--from", "shop/nobody", "--to", "shop/web", "--port", "8080"}, nil, "no pod shop/nobody"},
		{"unknown port name", []string{"--from", "shop/client", "--to", "shop/web", "--port", "pg"}, nil, `port "pg"`},
		{"bad protocol", []string{"--from", "shop/client", "--to", "shop/web", "--port", "80", "--protocol", "ICMP"}, nil, "ICMP"},
		{"bad output", []string{"--from", "shop/client", "--to", "shop/web", "--port", "80", "-o", "yaml"}, nil, "--output"},
		{"missing --to", []string{"--from", "shop/client", "--port", "80"}, nil, "required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runPolicy(t, append([]string{"explain", "-f", dir}, tt.args...)...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			expectOutput(t, out, tt.wantOut...)
		})
	}
}

func TestPolicyExplainJSON(t *testing.T) {
	dir := policyDir(t, map[string]string{"world.yaml": policyWorld, "policies.yaml": policyRules})
	out, err := runPolicy(t, "explain", "-f", dir, "--from", "shop/db", "--to", "shop/web", "--port", "http", "--output", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Port     int    `json:"port"`
		PortName string `json:"portName"`
		Allowed  bool   `json:"allowed"`
		Egress   struct {
			Allowed bool   `json:"allowed"`
			Reason  string `json:"reason"`
		} `json:"egress"`
		Ingress struct {
			Allowed    bool     `json:"allowed"`
			Rule       int      `json:"rule"`
			SelectedBy []string `json:"selectedBy"`
			Reason     string   `json:"reason"`
		} `json:"ingress"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if got.Port != 8080 || got.PortName != "http" || got.Allowed || !got.Egress.Allowed || got.Ingress.Allowed ||
		got.Ingress.Rule != -1 || len(got.Ingress.SelectedBy) != 1 || got.Ingress.SelectedBy[0] != "shop/allow-web" {
		t.Fatalf("unexpected explanation:\n%s", out)
	}
}

// A remote client (CLUSTER/NAMESPACE/POD): only the local side is decided,
// and only a selector naming its cluster admits it.
func TestPolicyExplainAcrossClusters(t *testing.T) {
	files := []string{"-f", "../../examples/federation/a.yaml", "-f", "../../examples/federation/b.yaml", "--cluster", "a"}
	for _, tc := range []struct {
		name    string
		args    []string
		wantOut []string
		wantErr string
	}{
		{"admitted remote workload", []string{"--from", "b/checkout/client", "--to", "payments/api", "--port", "8080"},
			[]string{"egress  of b/checkout/client: not decided here", "bireme.io/cluster=b", "note: b/checkout/client is a workload of cluster \"b\"", "verdict: allowed"}, ""},
		{"forged labels do not count", []string{"--from", "b/checkout/client", "--to", "payments/worker", "--port", "8080"},
			[]string{"denied: selected by payments/worker and no rule allows", "verdict: denied"}, ""},
		{"other remote workload", []string{"--from", "b/checkout/other", "--to", "payments/api", "--port", "8080"},
			[]string{"verdict: denied"}, ""},
		{"local server to remote", []string{"--from", "payments/api", "--to", "b/checkout/client", "--port", "8080"},
			[]string{"ingress of b/checkout/client: not decided here", "verdict: allowed"}, ""},
		{"the local cluster is not remote", []string{"--from", "a/checkout/client", "--to", "payments/api", "--port", "8080"}, nil, "another cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runPolicy(t, append(append([]string{"explain"}, files...), tc.args...)...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			expectOutput(t, out, tc.wantOut...)
		})
	}
}

// Audit mode through the command: a NetworkPolicy and a ClusterNetworkPolicy
// annotated bireme.io/enforcement: audit decide nothing, and explain shows
// both outcomes (the verdict in force, and the one if they were enforced).
func TestPolicyExplainAudit(t *testing.T) {
	dir := policyDir(t, map[string]string{"world.yaml": policyWorld, "audit.yaml": `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: lock-db, namespace: shop, annotations: {bireme.io/enforcement: audit}}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
---
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: no-client-to-web, annotations: {bireme.io/enforcement: audit}}
spec:
  tier: Admin
  priority: 7
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}
  ingress:
  - {name: not-yet, action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}}]}
`})
	for _, tc := range []struct {
		name        string
		args        []string
		want, never []string
	}{
		{"audited NetworkPolicy would deny", []string{"--from", "shop/client", "--to", "shop/db", "--port", "5432"},
			[]string{"ingress of shop/db: allowed: no policy selects shop/db for ingress (audit mode: would be denied: selected by shop/lock-db and no rule allows)",
				"with audit-mode policies enforced: denied: selected by shop/lock-db and no rule allows",
				"verdict: allowed (audit mode: would be denied if enforced)"}, nil},
		{"audited NetworkPolicy admits", []string{"--from", "shop/web", "--to", "shop/db", "--port", "5432"},
			[]string{"with audit-mode policies enforced: allowed by shop/lock-db ingress rule 0", "verdict: allowed\n"}, []string{"would be denied"}},
		{"audited ClusterNetworkPolicy would deny", []string{"--from", "shop/client", "--to", "shop/web", "--port", "http"},
			[]string{`with audit-mode policies enforced: denied by ClusterNetworkPolicy no-client-to-web (Admin tier, priority 7) ingress rule 0 "not-yet"`,
				"verdict: allowed (audit mode: would be denied if enforced)"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runPolicy(t, append([]string{"explain", "-f", dir}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			expectOutput(t, out, tc.want...)
			for _, n := range tc.never {
				if strings.Contains(out, n) {
					t.Errorf("output has %q:\n%s", n, out)
				}
			}
		})
	}
	// The JSON form carries both verdicts and the would-be denial.
	out, err := runPolicy(t, "explain", "-f", dir, "--from", "shop/client", "--to", "shop/db", "--port", "5432", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Allowed           bool `json:"allowed"`
		AllowedIfEnforced bool `json:"allowedIfEnforced"`
		Ingress           struct {
			WouldDeny *struct {
				Policy string `json:"policy"`
				Rule   int    `json:"rule"`
			} `json:"wouldDeny"`
		} `json:"ingress"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if !got.Allowed || got.AllowedIfEnforced || got.Ingress.WouldDeny == nil || got.Ingress.WouldDeny.Policy != "shop/lock-db" || got.Ingress.WouldDeny.Rule != -1 {
		t.Fatalf("JSON explanation:\n%s", out)
	}
}
