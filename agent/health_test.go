package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/policy"
)

// flakyDatapath refuses installs while failing is set.
type flakyDatapath struct {
	recordingDatapath
	failing atomic.Bool
}

func (d *flakyDatapath) Install(ctx context.Context, w desired.Workload) error {
	if d.failing.Load() {
		return errors.New("namespace not ready")
	}
	return d.recordingDatapath.Install(ctx, w)
}

// probe returns the status code of GET http://addr/path.
func probe(t *testing.T, addr, path string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestProbesFollowReconcile: /healthz answers from the start; /readyz only
// once the source's state is applied, not while a workload fails to
// install, and again as soon as it does.
func TestProbesFollowReconcile(t *testing.T) {
	_, eng := testCA(t, "c1", "n1")
	src := &chanSource{states: make(chan desired.State)}
	dp := &flakyDatapath{recordingDatapath: recordingDatapath{state: map[string]desired.Workload{}}}
	dp.failing.Store(true)
	health := &Health{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := freeLoopbackAddr(t)
	served, err := ServeMetrics(ctx, addr, prometheus.NewRegistry(), health)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("metrics server: %v", err)
		}
	}()
	a, err := New(Config{Source: src, Datapath: dp, Policy: policy.NewLive(nil), Placement: NewLivePlacement(),
		Tokens: eng, Health: health, Poll: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	if got := probe(t, addr, "/healthz"); got != http.StatusOK {
		t.Errorf("/healthz before any state = %d, want 200", got)
	}
	// Several polls with no state: the agent has nothing to apply yet and
	// must not call itself ready.
	time.Sleep(50 * time.Millisecond)
	if got := probe(t, addr, "/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz before any state = %d, want 503", got)
	}

	src.states <- desired.State{Workloads: []desired.Workload{workload("ns-a", "a", "web")}}
	for i := 0; i < 5; i++ { // install retried at every poll, and failing
		time.Sleep(20 * time.Millisecond)
		if health.Ready() {
			t.Fatal("ready while the workload's install fails")
		}
	}
	if got := probe(t, addr, "/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz while an install fails = %d, want 503", got)
	}

	dp.failing.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for !health.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("not ready after the install succeeded")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := probe(t, addr, "/readyz"); got != http.StatusOK {
		t.Errorf("/readyz once applied = %d, want 200", got)
	}
	if got := fmt.Sprint(dp.snapshot()); got != "[ns-a=x/a app=web]" {
		t.Errorf("installed %s", got)
	}
}
