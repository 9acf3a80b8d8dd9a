// Package crienv is a real CRI runtime for tests: it runs
// scripts/cri-env.sh (a containerd of its own, with its own root, socket
// and CNI bridge on 198.19.240.0/24 in a network namespace of its own) and
// stops it when the test ends, and runs pod sandboxes through CRI as
// kubelet does.
//
// Each test that uses it gives its own /24 of 198.19.240.0/20: tests run
// at once, and an address held by the sandboxes of two runtimes would be
// ambiguous to an address scan.
package crienv

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Env is a running containerd.
type Env struct {
	// Endpoint is its CRI socket, unix:///....
	Endpoint string
	// Runtime is a CRI client on it, closed when the test ends.
	Runtime runtimeapi.RuntimeServiceClient
	// Network is the sandboxes' address range (the CNI bridge's).
	Network netip.Prefix
}

// Start starts containerd, or skips the test with the reason when root,
// namespaces or the packages are missing. The caller has checked for
// root and namespaces (netnstest.RequireNamespaces).
func Start(t *testing.T, network netip.Prefix) *Env {
	t.Helper()
	if network.Bits() != 24 || !network.Addr().Is4() || !netip.MustParsePrefix("198.19.240.0/20").Contains(network.Addr()) {
		t.Fatalf("crienv: network %s: want a /24 of 198.19.240.0/20", network)
	}
	for _, tool := range []string{"containerd", "ctr", "runc", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s not installed (apt-get install -y containerd runc busybox-static containernetworking-plugins, as scripts/install-deps.sh does)", tool)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		if _, err := os.Stat("/opt/cni/bin/bridge"); err != nil {
			t.Skip("skipping: CNI plugins not installed (apt-get install -y containernetworking-plugins, as scripts/install-deps.sh does)")
		}
	}
	script, err := repoScript("cri-env.sh")
	if err != nil {
		t.Fatal(err)
	}
	// Short: the socket path must fit in a sockaddr_un.
	dir, err := os.MkdirTemp("", "bcri")
	if err != nil {
		t.Fatal(err)
	}
	// Unique like the directory MkdirTemp made: no other test's name.
	ns := "bcri-" + filepath.Base(dir)[len("bcri"):]
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, script, "stop", dir).CombinedOutput(); err != nil {
			t.Errorf("cri-env stop: %v\n%s", err, out)
		}
		if log, err := os.ReadFile(filepath.Join(dir, "containerd.log")); err == nil && t.Failed() {
			t.Logf("containerd log (last 4 KiB):\n%s", tail(log, 4096))
		}
		_ = os.RemoveAll(dir)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, script, "start", dir, ns, strings.TrimSuffix(network.Masked().Addr().String(), ".0")).CombinedOutput(); err != nil {
		t.Fatalf("cri-env start: %v\n%s", err, out)
	}
	e := &Env{Endpoint: "unix://" + filepath.Join(dir, "containerd.sock"), Network: network.Masked()}
	conn, err := grpc.NewClient(e.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	// Registered after the stop: runs before it, after the sandboxes'
	// removal (registered later still).
	t.Cleanup(func() { _ = conn.Close() })
	e.Runtime = runtimeapi.NewRuntimeServiceClient(conn)
	return e
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// repoScript finds scripts/NAME in the repository the test runs in.
func repoScript(name string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			path := filepath.Join(dir, "scripts", name)
			_, err := os.Stat(path)
			return path, err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// Sandbox is a pod sandbox run through CRI.
type Sandbox struct {
	ID   string
	IP   netip.Addr
	Path string // its network namespace, as the runtime spec names it
}

// RunSandbox runs a pod sandbox with kubelet's labels for the pod and
// removes it (and its network namespace) when the test ends.
func (e *Env) RunSandbox(t *testing.T, ctx context.Context, namespace, name, uid string) *Sandbox {
	t.Helper()
	logDir := t.TempDir()
	resp, err := e.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: namespace, Uid: uid},
		Hostname: name,
		Labels: map[string]string{
			"io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.name": name, "io.kubernetes.pod.uid": uid,
		},
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER},
		}},
	}})
	if err != nil {
		t.Fatalf("RunPodSandbox %s/%s: %v", namespace, name, err)
	}
	sb := &Sandbox{ID: resp.PodSandboxId}
	st, err := e.Runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.ID, Verbose: true})
	if err == nil {
		sb.Path = specNetNS(st.Info["info"])
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if _, err := e.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.ID}); err != nil {
			t.Errorf("StopPodSandbox %s: %v", sb.ID, err)
		}
		if _, err := e.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.ID}); err != nil {
			t.Errorf("RemovePodSandbox %s: %v", sb.ID, err)
		}
		// The runtime's bind mount under /run/netns is removed even if
		// the runtime failed to: it would outlive containerd.
		if strings.Contains(sb.Path, "/netns/cni-") {
			if _, err := os.Stat(sb.Path); err == nil {
				_ = unix.Unmount(sb.Path, unix.MNT_DETACH)
				_ = os.Remove(sb.Path)
			}
		}
	})
	if err != nil {
		t.Fatalf("PodSandboxStatus %s: %v", sb.ID, err)
	}
	if sb.IP, err = netip.ParseAddr(st.GetStatus().GetNetwork().GetIp()); err != nil {
		t.Fatalf("sandbox %s has no IP from CNI (status network %v): %v", sb.ID, st.GetStatus().GetNetwork(), err)
	}
	return sb
}

// specNetNS is the network namespace path in a verbose status's info,
// read crudely on purpose: the code under test reads it properly.
func specNetNS(info string) string {
	i := strings.Index(info, `"/var/run/netns/cni-`)
	if i < 0 {
		i = strings.Index(info, `"/run/netns/cni-`)
	}
	if i < 0 {
		return ""
	}
	rest := info[i+1:]
	if j := strings.IndexByte(rest, '"'); j > 0 {
		return rest[:j]
	}
	return ""
}
