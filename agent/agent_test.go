package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bireme/bireme/internal/syncbuf"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bireme/bireme/tokens"
)

// recordingDatapath is a Datapath safe for the agent's goroutine and the
// test's: it keeps the installed workloads by namespace path.
type recordingDatapath struct {
	mu     sync.Mutex
	state  map[string]Workload
	closed bool
}

func (d *recordingDatapath) Install(_ context.Context, w Workload) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.state[w.NetNS] = w
	return nil
}

func (d *recordingDatapath) Update(w Workload) error { return d.Install(context.Background(), w) }

func (d *recordingDatapath) Remove(_ context.Context, w Workload) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.state, w.NetNS)
	return nil
}

func (d *recordingDatapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

// snapshot returns "netns=ns/pod app=LABEL" per installed workload, sorted.
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

// testKeys writes a CA and node credentials for node into dir.
func testKeys(t *testing.T, dir, trustDomain, node string) (caFile, certFile, keyFile string) {
	t.Helper()
	ca, err := tokens.NewCA(trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(dir, "ca.crt")
	if err := ca.Save(caFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	creds, err := ca.IssueNode(node, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key")
	if err := creds.Save(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	return caFile, certFile, keyFile
}

func storePod(name, node, netns, app string) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: x
  labels: {app: %s}
  annotations: {bireme.io/netns: %s}
spec:
  nodeName: %s
  containers: [{name: main, image: none}]
`, name, app, netns, node)
}

func writeStore(t *testing.T, dir string, docs ...string) {
	t.Helper()
	tmp := filepath.Join(dir, ".store.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(strings.Join(docs, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "store.yaml")); err != nil {
		t.Fatal(err)
	}
}

// TestRunFollowsStore runs the agent on a file store with a recording
// datapath (no root needed) and changes the store under it.
func TestRunFollowsStore(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	if err := os.Mkdir(store, 0o755); err != nil {
		t.Fatal(err)
	}
	caFile, certFile, keyFile := testKeys(t, dir, "c1", "n1")
	ns := "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"
	writeStore(t, store, ns, storePod("a", "n1", "ns-a", "web"), storePod("b", "n1", "ns-b", "db"), storePod("c", "n2", "ns-c", "web"))

	dp := &recordingDatapath{state: map[string]Workload{}}
	reg := prometheus.NewRegistry()
	var logBuf syncbuf.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Node: "n1", Cluster: "c1", StoreDir: store, Poll: 20 * time.Millisecond,
			CertFile: certFile, KeyFile: keyFile, CABundle: []string{caFile},
			Metrics: reg, Log: slog.New(slog.NewTextHandler(&logBuf, nil)),
			testDatapath: dp,
		})
	}()

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
	waitFor("start", []string{"ns-a=x/a app=web", "ns-b=x/b app=db"})
	// The gauge is set once the whole reconcile is done, just after the
	// datapath saw the installs.
	for deadline := time.Now().Add(2 * time.Second); metricValue(t, reg, "bireme_workloads_protected") != 2; {
		if time.Now().After(deadline) {
			t.Fatalf("bireme_workloads_protected = %v, want 2", metricValue(t, reg, "bireme_workloads_protected"))
		}
		time.Sleep(10 * time.Millisecond)
	}

	writeStore(t, store, ns, storePod("a", "n1", "ns-a", "api"), storePod("c", "n2", "ns-c", "web"))
	waitFor("a relabelled, b gone", []string{"ns-a=x/a app=api"})

	// An invalid store keeps the last good set.
	writeStore(t, store, ns, storePod("a", "n1", "ns-a", "web"), "---\napiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name, namespace: x}\n")
	time.Sleep(200 * time.Millisecond)
	waitFor("invalid store", []string{"ns-a=x/a app=api"})

	writeStore(t, store, ns, storePod("a", "n1", "ns-a", "api"), storePod("d", "n1", "/proc/1/ns/net", "web"))
	waitFor("d added by path", []string{"net=x/d app=web", "ns-a=x/a app=api"})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v, want nil after a clean stop", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if got := dp.snapshot(); len(got) != 0 || !dp.closed {
		t.Errorf("after stop: installed %v, closed %v; want nothing installed and the datapath closed", got, dp.closed)
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

func TestRunRefusesBadStart(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	if err := os.Mkdir(store, 0o755); err != nil {
		t.Fatal(err)
	}
	caFile, certFile, keyFile := testKeys(t, dir, "c1", "n1")
	good := Config{Node: "n1", Cluster: "c1", StoreDir: store, CertFile: certFile, KeyFile: keyFile, CABundle: []string{caFile}}
	badStore := filepath.Join(dir, "bad")
	if err := os.Mkdir(badStore, 0o755); err != nil {
		t.Fatal(err)
	}
	writeStore(t, badStore, "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name, namespace: x}\n")

	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no node", func(c *Config) { c.Node = "" }, "missing [node]"},
		{"no CA bundle", func(c *Config) { c.CABundle = nil }, "ca-bundle"},
		{"store missing", func(c *Config) { c.StoreDir = filepath.Join(dir, "nope") }, "store"},
		{"store is a file", func(c *Config) { c.StoreDir = caFile }, "not a directory"},
		{"wrong cluster", func(c *Config) { c.Cluster = "other" }, `trust domain "c1"`},
		{"key missing", func(c *Config) { c.KeyFile = filepath.Join(dir, "nope.key") }, "credentials"},
		{"CA file missing", func(c *Config) { c.CABundle = []string{filepath.Join(dir, "nope.crt")} }, "CA bundle"},
		{"invalid store", func(c *Config) { c.StoreDir = badStore }, "Bad_Name"},
		{"too many queues", func(c *Config) { c.Queues = 5000 }, "queues"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			cfg.testDatapath = &recordingDatapath{state: map[string]Workload{}}
			tt.change(&cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := Run(ctx, cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Run = %v; want an error mentioning %q", err, tt.want)
			}
		})
	}
}
