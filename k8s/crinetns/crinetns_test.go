package crinetns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// These unit tests use a fake RuntimeService on a unix socket; the real
// runtime is tested in containerd_test.go.

func TestNetNSFromInfo(t *testing.T) {
	dir := t.TempDir()
	nsFile := filepath.Join(dir, "cni-1")
	if err := os.WriteFile(nsFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	proc := filepath.Join(dir, "proc")
	if err := os.MkdirAll(filepath.Join(proc, "42", "ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, "42", "ns", "net"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	spec := func(path string) string {
		return fmt.Sprintf(`{"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":%q}]}}}`, path)
	}
	for name, tc := range map[string]struct {
		info    map[string]string
		want    string
		wantErr string
	}{
		"spec path":             {info: map[string]string{"info": spec(nsFile)}, want: nsFile},
		"spec path gone, pid":   {info: map[string]string{"info": `{"pid":42,` + spec(nsFile + "-gone")[1:]}, want: filepath.Join(proc, "42/ns/net")},
		"pid only":              {info: map[string]string{"info": `{"pid":42}`}, want: filepath.Join(proc, "42/ns/net")},
		"nothing exists":        {info: map[string]string{"info": `{"pid":43,` + spec(nsFile + "-gone")[1:]}, wantErr: "tried"},
		"closed":                {info: map[string]string{"info": `{"pid":42,"netNamespaceClosed":true}`}, wantErr: "closed"},
		"no info":               {info: map[string]string{}, wantErr: `no "info"`},
		"bad json":              {info: map[string]string{"info": `{`}, wantErr: `"info"`},
		"relative path ignored": {info: map[string]string{"info": spec("cni-1")}, wantErr: "no network namespace path"},
		"no path, no pid":       {info: map[string]string{"info": `{"runtimeSpec":{"linux":{"namespaces":[{"type":"network"}]}}}`}, wantErr: "names no network namespace"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := NetNSFromInfo(tc.info, proc)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NetNSFromInfo = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("NetNSFromInfo = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func FuzzNetNSFromInfo(f *testing.F) {
	f.Add(`{"pid":1,"runtimeSpec":{"linux":{"namespaces":[{"type":"network","path":"/proc/1/ns/net"}]}}}`)
	f.Add(`{"netNamespaceClosed":true}`)
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, info string) {
		path, err := NetNSFromInfo(map[string]string{"info": info}, "/nonexistent-proc")
		if err == nil && !filepath.IsAbs(path) {
			t.Fatalf("relative path %q accepted", path)
		}
	})
}

// fakeRuntime answers ListPodSandbox and PodSandboxStatus from its fields.
type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	mu        sync.Mutex
	sandboxes []*runtimeapi.PodSandbox
	info      map[string]string // sandbox ID -> verbose "info"
	node      map[string]bool   // sandbox ID -> on the node's network
	statuses  int
	hang      bool
}

func (f *fakeRuntime) ListPodSandbox(ctx context.Context, _ *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f.mu.Lock()
	hang := f.hang
	f.mu.Unlock()
	if hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	// Ignores the filter on purpose: the client must check the labels.
	return &runtimeapi.ListPodSandboxResponse{Items: f.sandboxes}, nil
}

func (f *fakeRuntime) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statuses++
	mode := runtimeapi.NamespaceMode_POD
	if f.node[req.PodSandboxId] {
		mode = runtimeapi.NamespaceMode_NODE
	}
	return &runtimeapi.PodSandboxStatusResponse{
		Status: &runtimeapi.PodSandboxStatus{Id: req.PodSandboxId, Linux: &runtimeapi.LinuxPodSandboxStatus{
			Namespaces: &runtimeapi.Namespace{Options: &runtimeapi.NamespaceOption{Network: mode}},
		}},
		Info: map[string]string{"info": f.info[req.PodSandboxId]},
	}, nil
}

func serveFake(t *testing.T, f *fakeRuntime) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bcrifake")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "cri.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, f)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Stop(); _ = os.RemoveAll(dir) })
	return sock
}

func sandbox(id, ns, name, uid string, ready bool, created int64) *runtimeapi.PodSandbox {
	st := runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	if ready {
		st = runtimeapi.PodSandboxState_SANDBOX_READY
	}
	return &runtimeapi.PodSandbox{Id: id, State: st, CreatedAt: created,
		Labels: map[string]string{LabelPodNamespace: ns, LabelPodName: name, LabelPodUID: uid}}
}

func TestPodNetNSWithAFakeRuntime(t *testing.T) {
	dir := t.TempDir()
	paths := map[string]string{}
	for _, id := range []string{"old", "new", "stopped", "other", "hostnet"} {
		paths[id] = filepath.Join(dir, id)
		if err := os.WriteFile(paths[id], nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	info := map[string]string{}
	for id, p := range paths {
		info[id] = fmt.Sprintf(`{"runtimeSpec":{"linux":{"namespaces":[{"type":"network","path":%q}]}}}`, p)
	}
	f := &fakeRuntime{info: info, node: map[string]bool{"hostnet": true}, sandboxes: []*runtimeapi.PodSandbox{
		sandbox("old", "x", "a", "u1", true, 1),
		sandbox("new", "x", "a", "u1", true, 2),
		sandbox("stopped", "x", "a", "u1", false, 3),
		sandbox("other", "x", "b", "u2", true, 1),
		sandbox("hostnet", "x", "h", "u3", true, 1),
	}}
	c, err := Dial(Config{Endpoint: "unix://" + serveFake(t, f), Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx := context.Background()

	// The newest ready sandbox of the pod, whatever else the runtime lists.
	if p, err := c.PodNetNS(ctx, "x", "a", "u1"); err != nil || p != paths["new"] {
		t.Errorf("PodNetNS(x/a) = %q, %v; want %s", p, err, paths["new"])
	}
	// Served from the cache: no second status call.
	if p, err := c.PodNetNS(ctx, "x", "a", "u1"); err != nil || p != paths["new"] {
		t.Errorf("PodNetNS(x/a) again = %q, %v", p, err)
	}
	if f.statuses != 1 {
		t.Errorf("%d status calls for two lookups of one sandbox; want 1 (cached)", f.statuses)
	}
	// A cached path that vanished is asked for again.
	if err := os.Remove(paths["new"]); err != nil {
		t.Fatal(err)
	}
	if p, err := c.PodNetNS(ctx, "x", "a", "u1"); err == nil {
		t.Errorf("PodNetNS(x/a) after its namespace went = %q; want an error", p)
	}
	// Every label must match: the runtime ignoring the filter does not
	// hand over pod b's sandbox for another UID.
	for _, k := range [][3]string{{"x", "b", "u9"}, {"y", "b", "u2"}, {"x", "c", "u2"}} {
		if p, err := c.PodNetNS(ctx, k[0], k[1], k[2]); !errors.Is(err, ErrNoSandbox) {
			t.Errorf("PodNetNS(%v) = %q, %v; want ErrNoSandbox", k, p, err)
		}
	}
	if p, err := c.PodNetNS(ctx, "x", "h", "u3"); err == nil || !strings.Contains(err.Error(), "node's network") {
		t.Errorf("PodNetNS(host network sandbox) = %q, %v; want a refusal", p, err)
	}
	// A hung runtime fails within the timeout.
	f.mu.Lock()
	f.hang = true
	f.mu.Unlock()
	start := time.Now()
	if _, err := c.PodNetNS(ctx, "x", "b", "u2"); err == nil {
		t.Error("PodNetNS on a hung runtime succeeded")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("hung runtime held the lookup %v", d)
	}
}

func TestDialEndpoints(t *testing.T) {
	for ep, ok := range map[string]bool{"unix:///run/x.sock": true, "/run/x.sock": true, "": false, "tcp://1.2.3.4:1": false, "x.sock": false} {
		c, err := Dial(Config{Endpoint: ep})
		if (err == nil) != ok {
			t.Errorf("Dial(%q) error = %v, want ok=%v", ep, err, ok)
		}
		if c != nil {
			_ = c.Close()
		}
	}
}
