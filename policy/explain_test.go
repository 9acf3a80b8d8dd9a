package policy_test

import (
	"strings"
	"testing"

	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/policy"
)

// TestExplain explains on the fixture world, the ends named as `bireme
// policy explain` names them (k8s resolves the names, policy decides).
func TestExplain(t *testing.T) {
	e := compileWith(t,
		np("x", "web", "  podSelector: {matchLabels: {app: db}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}, {ipBlock: {cidr: 198.18.0.0/15}}], ports: [{port: http}]}]"),
		np("x", "client", "  podSelector: {matchLabels: {app: client}}\n  egress: [{to: [{podSelector: {}}], ports: [{port: http}]}]"))
	tests := []struct {
		from, to, port, proto string
		allowed               bool
		egress, ingress       string // reasons; "" = no decision
		err                   string
	}{
		{from: "x/c", to: "x/b", port: "http", allowed: true,
			egress: "allowed by x/client egress rule 0: peer matched by any pod in namespace x", ingress: "allowed by x/web ingress rule 0: peer matched by labels app=client in namespace x"},
		{from: "x/c", to: "x/b", port: "8080", allowed: true,
			egress: "allowed by x/client egress rule 0: peer matched by any pod in namespace x", ingress: "allowed by x/web ingress rule 0: peer matched by labels app=client in namespace x"},
		{from: "x/c", to: "x/a", port: "http",
			egress: "allowed by x/client egress rule 0: peer matched by any pod in namespace x", ingress: "allowed: no policy selects x/a for ingress", allowed: true},
		{from: "x/c", to: "x/a", port: "metrics",
			egress: "denied: selected by x/client and no rule allows", ingress: "allowed: no policy selects x/a for ingress"},
		{from: "x/a", to: "x/b", port: "8080",
			egress: "allowed: no policy selects x/a for egress", ingress: "denied: selected by x/web and no rule allows"},
		{from: "198.18.9.9", to: "x/b", port: "http", allowed: true, ingress: "allowed by x/web ingress rule 0: peer matched by address in 198.18.0.0/15"},
		{from: "x/c", to: "198.18.9.9", port: "8080", egress: "denied: selected by x/client and no rule allows"},
		{from: "x/c", to: "198.18.9.9", port: "http", err: "needs a pod"},
		{from: "198.18.0.1", to: "198.18.0.2", port: "80", err: "at least one end"},
		{from: "x/c", to: "x/b", port: "dns", err: `port "dns"`},
		{from: "x/c", to: "x/b", port: "0", err: `port "0"`},
		{from: "x/c", to: "x/b", port: "80", proto: "GRE", err: "GRE"},
		{from: "x", to: "x/b", port: "80", err: "from:"},
		{from: "x/c", to: "q/b", port: "80", err: "to: no pod q/b"},
	}
	for _, tt := range tests {
		name := tt.from + "->" + tt.to + ":" + tt.port
		x, err := k8s.Explain(e, testCluster, tt.from, tt.to, tt.port, tt.proto)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: error %v, want %q", name, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		reason := func(d *policy.Decision) string {
			if d == nil {
				return ""
			}
			return d.Reason
		}
		if x.Allowed != tt.allowed || reason(x.Egress) != tt.egress || reason(x.Ingress) != tt.ingress {
			t.Errorf("%s: got allowed=%v egress=%q ingress=%q; want %v %q %q", name, x.Allowed, reason(x.Egress), reason(x.Ingress), tt.allowed, tt.egress, tt.ingress)
		}
		if !strings.Contains(x.String(), "verdict: ") {
			t.Errorf("%s: text lacks the verdict: %s", name, x)
		}
	}
}
