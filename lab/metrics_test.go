package lab

import (
	"strings"
	"testing"
)

func TestFindSeries(t *testing.T) {
	const text = `# HELP bireme_decisions_total Handshake decisions.
# TYPE bireme_decisions_total counter
bireme_decisions_total{direction="egress",reason="policy-rule",verdict="allow"} 2
bireme_decisions_total{direction="ingress",reason="unknown-ca",verdict="deny"} 1
bireme_workloads_protected 3
bireme_workloads_protected_total 9 1700000000000
`
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
		err    bool
	}{
		{"bireme_workloads_protected", nil, 3, false},
		{"bireme_workloads_protected_total", nil, 9, false},
		{"bireme_decisions_total", map[string]string{"verdict": "deny"}, 1, false},
		{"bireme_decisions_total", map[string]string{"verdict": "allow", "direction": "egress"}, 2, false},
		{"bireme_decisions_total", map[string]string{"verdict": "allow", "direction": "ingress"}, 0, true},
		{"bireme_decisions", nil, 0, true},
	} {
		got, err := findSeries(strings.NewReader(text), c.name, c.labels)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("findSeries(%s, %v) = %v, %v; want %v (error %v)", c.name, c.labels, got, err, c.want, c.err)
		}
	}
}
