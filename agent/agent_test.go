package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/internal/syncbuf"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

// recordingDatapath is a Datapath safe for the agent's goroutines and the
// test's: it keeps the installed workloads by namespace path.
type recordingDatapath struct {
	mu    sync.Mutex
	state map[string]desired.Workload
}

func (d *recordingDatapath) Install(_ context.Context, w desired.Workload) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.state[w.NetNS] = w
	return nil
}

func (d *recordingDatapath) Update(w desired.Workload) error {
	return d.Install(context.Background(), w)
}

func (d *recordingDatapath) Remove(_ context.Context, w desired.Workload) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.state, w.NetNS)
	return nil
}

// snapshot returns "netns=ref app=LABEL" per installed workload, sorted.
func (d *recordingDatapath) snapshot() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for path, w := range d.state {
		out = append(out, fmt.Sprintf("%s=%s app=%s", filepath.Base(path), w.Ref, w.Identity.Labels["app"]))
	}
	sort.Strings(out)
	return out
}

// chanSource is a desired.Source driven by the test: every state sent on
// states is delivered; it returns err at start when set.
type chanSource struct {
	states chan desired.State
	err    error
}

func (s *chanSource) Run(ctx context.Context, update func(desired.State)) error {
	if s.err != nil {
		return s.err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case st, ok := <-s.states:
			if !ok {
				return nil // the source ends on its own
			}
			update(st)
		}
	}
}

// testCA makes a CA for trustDomain and a token engine for node signed by
// it, trusting only that CA.
func testCA(t *testing.T, trustDomain, node string) (*tokens.CA, *tokens.Engine) {
	t.Helper()
	ca, err := tokens.NewCA(trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := ca.IssueNode(node, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := tokens.NewTrustBundle(ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := tokens.NewEngine(tokens.Config{Credentials: creds, Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	return ca, eng
}

func workload(netns, pod, app string) desired.Workload {
	return desired.Workload{Ref: "x/" + pod, NetNS: "/run/netns/" + netns,
		Identity: &identity.Identity{Cluster: "c1", Namespace: "x", Pod: pod, Labels: map[string]string{"app": app}}}
}

// TestRunFollowsSource runs the agent on a source the test drives and a
// recording datapath (no root needed): workloads are installed, updated and
// released, policy and trust bundles go in force, and stopping leaves the
// installed workloads protected (fail closed).
func TestRunFollowsSource(t *testing.T) {
	ownCA, eng := testCA(t, "c1", "n1")
	otherCA, otherNode := testCA(t, "c2", "m1")
	src := &chanSource{states: make(chan desired.State)}
	dp := &recordingDatapath{state: map[string]desired.Workload{}}
	live := policy.NewLive(nil)
	placement := NewLivePlacement()
	reg := prometheus.NewRegistry()
	metrics, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf syncbuf.Buffer
	a, err := New(Config{Source: src, Datapath: dp, Policy: live, Placement: placement, Tokens: eng, Metrics: metrics,
		Poll: 20 * time.Millisecond, Log: slog.New(slog.NewTextHandler(&logBuf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	waitFor := func(what string, want []string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			got := dp.snapshot()
			if reflect.DeepEqual(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: installed %v, want %v\nlog:\n%s", what, got, want, logBuf.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	allowAll, err := policy.Compile(policy.Objects{})
	if err != nil {
		t.Fatal(err)
	}
	if _, known := placement.NodeOf("x", "a"); known {
		t.Error("a pod is placed before the source delivered a placement")
	}
	src.states <- desired.State{Workloads: []desired.Workload{workload("ns-a", "a", "web"), workload("ns-b", "b", "db")}, Policy: allowAll,
		Placement: desired.Placement{"x/a": "n1", "x/b": "n1", "y/c": "n2"}}
	waitFor("start", []string{"ns-a=x/a app=web", "ns-b=x/b app=db"})
	if live.Engine() != allowAll {
		t.Error("the source's policy is not in force")
	}
	if node, known := placement.NodeOf("y", "c"); node != "n2" || !known {
		t.Errorf("placement of y/c = %q, %v; want the source's n2", node, known)
	}
	// The gauge is set once the whole reconcile is done, just after the
	// datapath saw the installs.
	for deadline := time.Now().Add(2 * time.Second); metricValue(t, reg, "bireme_workloads_protected") != 2; {
		if time.Now().After(deadline) {
			t.Fatalf("bireme_workloads_protected = %v, want 2", metricValue(t, reg, "bireme_workloads_protected"))
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A state without policy or trust keeps those in force.
	src.states <- desired.State{Workloads: []desired.Workload{workload("ns-a", "a", "api")}}
	waitFor("a relabelled, b gone", []string{"ns-a=x/a app=api"})
	if live.Engine() != allowAll {
		t.Error("a state without policy replaced the policy in force")
	}
	if node, _ := placement.NodeOf("y", "c"); node != "n2" {
		t.Error("a state without placement replaced the placement in force")
	}

	// A trust bundle goes in force: a peer of the other CA is refused
	// before and accepted after.
	conn := tokens.Endpoints{Client: netip.MustParseAddrPort("198.18.1.2:40000"), Server: netip.MustParseAddrPort("198.18.2.2:80")}
	syn, _, err := otherNode.NewSYN(&identity.Identity{Cluster: "c2", Namespace: "y", Pod: "p"}, conn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eng.ConsumeSYN(syn, conn); err == nil {
		t.Fatal("a peer of an untrusted CA was accepted")
	}
	both, err := tokens.NewTrustBundle(ownCA.Cert, otherCA.Cert)
	if err != nil {
		t.Fatal(err)
	}
	src.states <- desired.State{Workloads: []desired.Workload{workload("ns-a", "a", "api")}, Trust: both}
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		syn, _, err := otherNode.NewSYN(&identity.Identity{Cluster: "c2", Namespace: "y", Pod: "p"}, conn)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := eng.ConsumeSYN(syn, conn); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("trust bundle not in force: %v", err)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v, want nil after a clean stop", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if got, want := dp.snapshot(), []string{"ns-a=x/a app=api"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after stop: installed %v; want %v left in place", got, want)
	}
	if !strings.Contains(logBuf.String(), "rules left in place") {
		t.Errorf("stop not logged:\n%s", logBuf.String())
	}
}

// TestRunSourceFails: a source that cannot start, or stops on its own, ends
// Run with its error, leaving what was installed protected.
func TestRunSourceFails(t *testing.T) {
	_, eng := testCA(t, "c1", "n1")
	run := func(src desired.Source, dp *recordingDatapath) error {
		a, err := New(Config{Source: src, Datapath: dp, Policy: policy.NewLive(nil), Placement: NewLivePlacement(), Tokens: eng, Poll: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return a.Run(ctx)
	}
	dp := &recordingDatapath{state: map[string]desired.Workload{}}
	if err := run(&chanSource{err: errors.New("load store: Bad_Name")}, dp); err == nil || !strings.Contains(err.Error(), "source: load store: Bad_Name") {
		t.Errorf("Run = %v; want the source's error", err)
	}

	states := make(chan desired.State, 1)
	states <- desired.State{Workloads: []desired.Workload{workload("ns-a", "a", "web")}}
	close(states)
	if err := run(&chanSource{states: states}, dp); err == nil || !strings.Contains(err.Error(), "stopped before its context ended") {
		t.Errorf("Run = %v; want an error for a source that stopped", err)
	}
	if got, want := dp.snapshot(), []string{"ns-a=x/a app=web"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after the source stopped: installed %v; want %v left in place", got, want)
	}
}

// A source that returns the moment its context ends (as an informer-based
// one does) races the agent's own look at the context: stopping must be
// a clean stop, never "source stopped" and never a hang, whichever wins.
func TestRunStopsWithAPromptSource(t *testing.T) {
	_, eng := testCA(t, "c1", "n1")
	for i := 0; i < 50; i++ {
		src := &chanSource{states: make(chan desired.State)}
		a, err := New(Config{Source: src, Datapath: &recordingDatapath{state: map[string]desired.Workload{}},
			Policy: policy.NewLive(nil), Placement: NewLivePlacement(), Tokens: eng, Poll: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		time.Sleep(time.Millisecond)
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("stop %d: Run = %v; want nil", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("stop %d: Run did not return", i)
		}
	}
}

func TestNewRefusesIncompleteConfig(t *testing.T) {
	_, eng := testCA(t, "c1", "n1")
	good := Config{Source: &chanSource{}, Datapath: &recordingDatapath{}, Policy: policy.NewLive(nil), Placement: NewLivePlacement(), Tokens: eng}
	for name, change := range map[string]func(*Config){
		"no source":     func(c *Config) { c.Source = nil },
		"no datapath":   func(c *Config) { c.Datapath = nil },
		"no policy":     func(c *Config) { c.Policy = nil },
		"no placement":  func(c *Config) { c.Placement = nil },
		"no tokens":     func(c *Config) { c.Tokens = nil },
		"negative poll": func(c *Config) { c.Poll = -time.Second },
	} {
		cfg := good
		change(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	if _, err := New(good); err != nil {
		t.Errorf("good config: %v", err)
	}
}

// metricValue returns the value of the unlabelled gauge name in reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			return mf.Metric[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
