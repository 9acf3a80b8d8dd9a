package agent

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
)

// allMetrics returns a registry holding every metric a node exports, each
// with at least one series (a vector without series is not gathered).
func allMetrics(t *testing.T) (*prometheus.Registry, *Metrics) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	one := func() float64 { return 1 }
	if err := m.RegisterEnforcer(EnforcerStats{
		HandshakesInFlight: one, FlowRecordsDropped: one,
		BulkDrops:  map[string]func() float64{"bad-checksum": one},
		QueueDrops: map[string]func() float64{"queue-full": one, "socket-full": one},
	}); err != nil {
		t.Fatal(err)
	}
	a := &identity.Identity{Cluster: "c", Namespace: "x", Pod: "a"}
	m.Observe(&flowlog.Record{Direction: "ingress", Local: a, Verdict: flowlog.Deny, TokenError: "expired"})
	m.ObserveStage("syn", false, 30*time.Microsecond)
	m.workloads.Set(1)
	m.reconcileErrors.Add(0)
	return reg, m
}

// TestObserveStage: each stage and direction has its own histogram
// series; an unknown stage is ignored.
func TestObserveStage(t *testing.T) {
	reg, m := allMetrics(t)
	m.ObserveStage("synack", true, 2*time.Millisecond)
	m.ObserveStage("synack", true, 3*time.Millisecond)
	m.ObserveStage("bogus", true, time.Second)
	// Every stage and direction exists from the start, so that rates
	// and quantiles have series before the first handshake.
	if n := testutil.CollectAndCount(m.stageSeconds); n != len(stages)*2 {
		t.Fatalf("%d stage series, want %d", n, len(stages)*2)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	samples := map[string]uint64{}
	for _, f := range families {
		if f.GetName() != "bireme_handshake_stage_seconds" {
			continue
		}
		for _, s := range f.GetMetric() {
			var key []string
			for _, l := range s.GetLabel() {
				key = append(key, l.GetName()+"="+l.GetValue())
			}
			samples[strings.Join(key, ",")] = s.GetHistogram().GetSampleCount()
		}
	}
	if samples["direction=egress,stage=synack"] != 2 || samples["direction=ingress,stage=syn"] != 1 || samples["direction=egress,stage=ack"] != 0 {
		t.Fatalf("stage samples %v", samples)
	}
}

// metricName finds the metric names in a PromQL expression.
var metricName = regexp.MustCompile(`\bbireme_[a-z_]+\b`)

// TestDashboardMetricsExist: every metric the Grafana dashboard queries is
// one a node exports (histogram series by their _bucket, _sum and _count
// names), and every metric a node exports is on the dashboard.
func TestDashboardMetricsExist(t *testing.T) {
	reg, _ := allMetrics(t)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, f := range families {
		exported[f.GetName()] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				exported[f.GetName()+s] = true
			}
		}
	}
	b, err := os.ReadFile("../deploy/grafana/bireme.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	used := map[string]bool{}
	check := func(where, expr string) {
		for _, name := range metricName.FindAllString(expr, -1) {
			if !exported[name] {
				t.Errorf("%s queries %s, which no node exports", where, name)
			}
			used[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")] = true
		}
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			check("panel "+p.Title, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		check("variable", v.Definition)
	}
	for _, f := range families {
		if !used[f.GetName()] {
			t.Errorf("the dashboard shows no panel of %s", f.GetName())
		}
	}
}
