package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
)

// fakeDatapath records what the reconciler asked for; installs of the
// namespaces in failInstall fail.
type fakeDatapath struct {
	mu          sync.Mutex
	calls       []string
	failInstall map[string]bool
	failRemove  map[string]bool
	state       map[string]string // netns -> pod ref
}

func (f *fakeDatapath) Install(_ context.Context, w desired.Workload) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "install "+w.NetNS)
	if f.failInstall[w.NetNS] {
		return errors.New("no such namespace")
	}
	f.state[w.NetNS] = w.Ref
	return nil
}

func (f *fakeDatapath) Update(w desired.Workload) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "update "+w.NetNS)
	f.state[w.NetNS] = w.Ref
	return nil
}

func (f *fakeDatapath) Remove(_ context.Context, w desired.Workload) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "remove "+w.NetNS)
	if f.failRemove[w.NetNS] {
		return errors.New("busy")
	}
	delete(f.state, w.NetNS)
	return nil
}

func TestReconcilerRetriesAndCleansUp(t *testing.T) {
	var logBuf bytes.Buffer
	fd := &fakeDatapath{failInstall: map[string]bool{"/n/b": true}, failRemove: map[string]bool{}, state: map[string]string{}}
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	r := newReconciler(fd, slog.New(slog.NewTextHandler(&logBuf, nil)), m)
	ctx := context.Background()

	steps := []struct {
		name      string
		desired   []desired.Workload
		fix       func()
		wantOK    bool
		wantCalls []string
		wantState map[string]string
	}{
		{
			name:      "b's namespace is missing: a protected, b pending",
			desired:   []desired.Workload{wl("/n/a", "x/a", nil), wl("/n/b", "x/b", nil)},
			wantOK:    false,
			wantCalls: []string{"install /n/a", "install /n/b"},
			wantState: map[string]string{"/n/a": "x/a"},
		},
		{
			name:      "retry while still missing: only b is tried",
			desired:   []desired.Workload{wl("/n/a", "x/a", nil), wl("/n/b", "x/b", nil)},
			wantOK:    false,
			wantCalls: []string{"install /n/b"},
			wantState: map[string]string{"/n/a": "x/a"},
		},
		{
			name:      "namespace appears: b protected",
			desired:   []desired.Workload{wl("/n/a", "x/a", nil), wl("/n/b", "x/b", nil)},
			fix:       func() { fd.failInstall = nil },
			wantOK:    true,
			wantCalls: []string{"install /n/b"},
			wantState: map[string]string{"/n/a": "x/a", "/n/b": "x/b"},
		},
		{
			name:      "a relabelled, b gone",
			desired:   []desired.Workload{wl("/n/a", "x/a", map[string]string{"v": "2"})},
			wantOK:    true,
			wantCalls: []string{"remove /n/b", "update /n/a"},
			wantState: map[string]string{"/n/a": "x/a"},
		},
		{
			name:      "converged: nothing to do",
			desired:   []desired.Workload{wl("/n/a", "x/a", map[string]string{"v": "2"})},
			wantOK:    true,
			wantState: map[string]string{"/n/a": "x/a"},
		},
	}
	for _, s := range steps {
		fd.calls = nil
		if s.fix != nil {
			s.fix()
		}
		r.setDesired(s.desired)
		ok := r.reconcile(ctx)
		sort.Strings(fd.calls) // installs and removals run concurrently
		if ok != s.wantOK || !reflect.DeepEqual(fd.calls, s.wantCalls) || !reflect.DeepEqual(fd.state, s.wantState) {
			t.Fatalf("%s: ok=%v calls=%v state=%v; want ok=%v calls=%v state=%v", s.name, ok, fd.calls, fd.state, s.wantOK, s.wantCalls, s.wantState)
		}
		if got := testutil.ToFloat64(m.workloads); got != float64(len(s.wantState)) {
			t.Errorf("%s: bireme_workloads_protected = %v, want %d", s.name, got, len(s.wantState))
		}
	}
	// The failing install was retried twice but logged once.
	if n := strings.Count(logBuf.String(), "workload protect failed"); n != 1 {
		t.Errorf("install failure logged %d times, want once:\n%s", n, logBuf.String())
	}
	if got := testutil.ToFloat64(m.reconcileErrors); got != 2 {
		t.Errorf("bireme_reconcile_errors_total = %v, want 2", got)
	}
}

// TestMetricsObserve: each decision the enforcer reports through its
// callback is counted by verdict, direction, reduced reason and tier; the
// enforcer's gauges are read at scrape time.
func TestMetricsObserve(t *testing.T) {
	reg := prometheus.NewRegistry()
	inFlight := 3.0
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterEnforcer(EnforcerStats{HandshakesInFlight: func() float64 { return inFlight }}); err != nil {
		t.Fatal(err)
	}
	a := &identity.Identity{Cluster: "c", Namespace: "x", Pod: "a"}
	records := []flowlog.Record{
		{Time: time.Now(), Direction: "ingress", Local: a, Peer: a, Verdict: flowlog.Allow, Policy: "x/allow", Reason: "allowed by x/allow ingress rule 0"},
		{Time: time.Now(), Direction: "ingress", Local: a, Verdict: flowlog.Deny, TokenError: "unknown-ca", Reason: "token: unknown CA"},
		{Time: time.Now(), Direction: "egress", Local: a, Peer: a, Verdict: flowlog.Allow, Reason: "allowed: no policy selects x/a for egress"},
		{Time: time.Now(), Direction: "ingress", Local: a, Peer: a, Verdict: flowlog.Deny, SelectedBy: []string{"x/deny-all"}, Reason: "denied: selected by x/deny-all and no rule allows"},
		{Time: time.Now(), Direction: "ingress", Local: a, Verdict: flowlog.Deny, TokenError: "unknown-ca", Reason: "token: unknown CA"},
		{Time: time.Now(), Direction: "egress", Local: a, Peer: a, Verdict: flowlog.Deny, Policy: "deny-db", Tier: "admin", Reason: "denied by admin policy deny-db"},
	}
	for i := range records {
		m.Observe(&records[i])
	}
	for _, c := range []struct {
		labels []string
		want   float64
	}{
		{[]string{"allow", "ingress", "policy-rule", "networkpolicy"}, 1},
		{[]string{"deny", "ingress", "unknown-ca", "none"}, 2},
		{[]string{"allow", "egress", "not-selected", "none"}, 1},
		{[]string{"deny", "ingress", "no-rule-allows", "networkpolicy"}, 1},
		{[]string{"deny", "egress", "policy-rule", "admin"}, 1},
	} {
		if got := testutil.ToFloat64(m.decisions.WithLabelValues(c.labels...)); got != c.want {
			t.Errorf("bireme_decisions_total%v = %v, want %v", c.labels, got, c.want)
		}
	}
	if got := testutil.ToFloat64(m.tokenFailures.WithLabelValues("unknown-ca")); got != 2 {
		t.Errorf("bireme_token_failures_total{unknown-ca} = %v, want 2", got)
	}
	expected := fmt.Sprintf("# HELP bireme_handshakes_in_flight Handshake states the enforcer holds: handshakes in progress, and handshakes completed less than the handshake timeout (10s) ago.\n# TYPE bireme_handshakes_in_flight gauge\nbireme_handshakes_in_flight %v\n", inFlight)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected), "bireme_handshakes_in_flight"); err != nil {
		t.Error(err)
	}
	if err := m.RegisterEnforcer(EnforcerStats{HandshakesInFlight: func() float64 { return 0 }}); err == nil {
		t.Error("a second enforcer's gauges registered over the first's")
	}
}

func TestReconcilerNoticesReplacedNamespaces(t *testing.T) {
	fd := &fakeDatapath{failRemove: map[string]bool{}, state: map[string]string{}}
	r := newReconciler(fd, slog.New(slog.DiscardHandler), nil)
	ids := map[string]nsID{"/n/a": {1, 10}, "/n/b": {1, 11}, "/n/c": {1, 12}}
	r.stat = func(path string) (nsID, error) {
		id, ok := ids[path]
		if !ok {
			return nsID{}, errors.New("no such file")
		}
		return id, nil
	}
	ctx := context.Background()
	r.setDesired([]desired.Workload{wl("/n/a", "x/a", nil), wl("/n/b", "x/b", nil), wl("/n/c", "x/c", nil)})
	if !r.reconcile(ctx) {
		t.Fatal("first reconcile did not converge")
	}
	fd.calls = nil
	if r.dropVanished(ctx) {
		t.Fatalf("nothing changed, yet dropVanished dropped (calls %v)", fd.calls)
	}

	delete(ids, "/n/a")       // namespace deleted
	ids["/n/b"] = nsID{1, 99} // deleted and made again under the same name
	if !r.dropVanished(ctx) {
		t.Fatal("dropVanished missed a deleted and a replaced namespace")
	}
	sort.Strings(fd.calls)
	if want := []string{"remove /n/a", "remove /n/b"}; !reflect.DeepEqual(fd.calls, want) {
		t.Errorf("calls %v, want %v", fd.calls, want)
	}
	fd.calls = nil
	r.reconcile(ctx)
	sort.Strings(fd.calls)
	if want := []string{"install /n/a", "install /n/b"}; !reflect.DeepEqual(fd.calls, want) {
		t.Errorf("after the drop, reconcile called %v, want %v", fd.calls, want)
	}
	if got := r.nsIDs["/n/b"]; got != (nsID{1, 99}) {
		t.Errorf("replaced namespace recorded as %v, want the new one", got)
	}
}

// TestMetricsBulkDrops: the enforcer's counts of drops whose records are
// rate-limited are exported, one series per kind.
func TestMetricsBulkDrops(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterEnforcer(EnforcerStats{BulkDrops: map[string]func() float64{
		"bad-checksum":     func() float64 { return 2 },
		"over-node-budget": func() float64 { return 7 },
	}}); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "bireme_bulk_drops_total"); err != nil || n != 2 {
		t.Fatalf("%d series of bireme_bulk_drops_total, want 2 (%v)", n, err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, s := range mf.GetMetric() {
			if mf.GetName() == "bireme_bulk_drops_total" {
				got[s.GetLabel()[0].GetValue()] = s.GetCounter().GetValue()
			}
		}
	}
	if got["bad-checksum"] != 2 || got["over-node-budget"] != 7 {
		t.Errorf("bireme_bulk_drops_total = %v", got)
	}
}
