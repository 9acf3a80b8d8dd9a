package crinetns

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
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/bireme/bireme/k8s/podnetns"
	"github.com/bireme/bireme/netns/netnstest"
)

// This test runs a real containerd (scripts/cri-env.sh: its own root,
// state, socket and CNI bridge in a network namespace of its own), runs
// a pod sandbox through CRI as kubelet does, and checks that the lookup
// finds the sandbox's namespace, that the namespace holds the address the
// runtime gave the sandbox, and that it does not hold another address (the
// check apisource makes against status.podIP on every reconcile).

// criEnv starts containerd with scripts/cri-env.sh and stops it when the
// test ends, whether it passed or not.
func criEnv(t *testing.T) string {
	t.Helper()
	netnstest.RequireNamespaces(t)
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
	ns := netnstest.Prefix() + "-cri"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, script, "stop", dir).CombinedOutput(); err != nil {
			t.Errorf("cri-env stop: %v\n%s", err, out)
		}
		if log, err := os.ReadFile(filepath.Join(dir, "containerd.log")); err == nil && t.Failed() {
			t.Logf("containerd log:\n%s", log)
		}
		_ = os.RemoveAll(dir)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, script, "start", dir, ns).CombinedOutput(); err != nil {
		t.Fatalf("cri-env start: %v\n%s", err, out)
	}
	return "unix://" + filepath.Join(dir, "containerd.sock")
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

// runSandbox runs a pod sandbox with kubelet's labels and removes it when
// the test ends; it returns the sandbox ID and the address CNI gave it.
func runSandbox(t *testing.T, ctx context.Context, rt runtimeapi.RuntimeServiceClient, namespace, name, uid string) (string, netip.Addr) {
	t.Helper()
	logDir := t.TempDir()
	resp, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: namespace, Uid: uid},
		Hostname: name,
		Labels: map[string]string{
			LabelPodNamespace: namespace, LabelPodName: name, LabelPodUID: uid,
		},
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER},
		}},
	}})
	if err != nil {
		t.Fatalf("RunPodSandbox %s/%s: %v", namespace, name, err)
	}
	id := resp.PodSandboxId
	var nsPath string
	if vst, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true}); err == nil {
		nsPath, _ = NetNSFromInfo(vst.Info, "/proc")
	}
	t.Cleanup(func() {
		// The runtime's bind mount under /run/netns is removed even if
		// the runtime failed to: it outlives containerd.
		defer func() {
			if strings.Contains(nsPath, "/netns/cni-") {
				if _, err := os.Stat(nsPath); err == nil {
					_ = unix.Unmount(nsPath, unix.MNT_DETACH)
					_ = os.Remove(nsPath)
				}
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Errorf("StopPodSandbox %s: %v", id, err)
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Errorf("RemovePodSandbox %s: %v", id, err)
		}
	})
	st, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id})
	if err != nil {
		t.Fatalf("PodSandboxStatus %s: %v", id, err)
	}
	ip, err := netip.ParseAddr(st.GetStatus().GetNetwork().GetIp())
	if err != nil {
		t.Fatalf("sandbox %s has no IP from CNI (status network %v): %v", id, st.GetStatus().GetNetwork(), err)
	}
	return id, ip
}

func sameNamespace(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func TestContainerdSandboxNamespace(t *testing.T) {
	endpoint := criEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	c, err := Dial(Config{Endpoint: endpoint, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() }) // after the sandboxes' removal, registered later
	v, err := c.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("runtime: %s", v)

	_, ipA := runSandbox(t, ctx, c.rt, "ns-a", "pod-a", "uid-a")
	_, ipB := runSandbox(t, ctx, c.rt, "ns-a", "pod-b", "uid-b")
	if !netip.MustParsePrefix("198.19.240.0/24").Contains(ipA) || ipA == ipB {
		t.Fatalf("sandbox addresses %s and %s: want two addresses of the CNI range 198.19.240.0/24", ipA, ipB)
	}

	pathA, err := c.PodNetNS(ctx, "ns-a", "pod-a", "uid-a")
	if err != nil {
		t.Fatalf("PodNetNS(pod-a): %v", err)
	}
	pathB, err := c.PodNetNS(ctx, "ns-a", "pod-b", "uid-b")
	if err != nil {
		t.Fatalf("PodNetNS(pod-b): %v", err)
	}
	t.Logf("pod-a %s in %s, pod-b %s in %s", ipA, pathA, ipB, pathB)
	if sameNamespace(t, pathA, pathB) {
		t.Fatalf("two sandboxes, one namespace: %s and %s", pathA, pathB)
	}

	verify := podnetns.Scanner{}
	// The namespace the runtime names holds the sandbox's address...
	if err := verify.Verify(pathA, ipA); err != nil {
		t.Errorf("Verify(pod-a's namespace, its IP %s) = %v, want nil", ipA, err)
	}
	// ...and a pod whose status.podIP is not that address is refused.
	if err := verify.Verify(pathA, ipB); !errors.Is(err, podnetns.ErrNotHeld) {
		t.Errorf("Verify(pod-a's namespace, pod-b's IP %s) = %v, want ErrNotHeld", ipB, err)
	}
	// It is the namespace the address scan finds for that address.
	snap, err := verify.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if scanned, err := snap.Lookup(ipA); err != nil || !sameNamespace(t, scanned, pathA) {
		t.Errorf("scan found %q (%v) for %s; CRI found %s", scanned, err, ipA, pathA)
	}

	// Labels must all match: a pod of the same name with another UID (a
	// pod deleted and made again) or in another namespace has no sandbox.
	for _, k := range [][3]string{{"ns-a", "pod-a", "uid-other"}, {"ns-b", "pod-a", "uid-a"}, {"ns-a", "pod-c", "uid-a"}} {
		if p, err := c.PodNetNS(ctx, k[0], k[1], k[2]); !errors.Is(err, ErrNoSandbox) {
			t.Errorf("PodNetNS(%v) = %q, %v; want ErrNoSandbox", k, p, err)
		}
	}

	// A cached path is served again; a stopped sandbox is no longer found.
	if again, err := c.PodNetNS(ctx, "ns-a", "pod-a", "uid-a"); err != nil || again != pathA {
		t.Errorf("PodNetNS(pod-a) again = %q, %v; want %s", again, err, pathA)
	}
	list, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{LabelPodUID: "uid-b"}}})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("list pod-b's sandbox: %v, %v", list, err)
	}
	if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: list.Items[0].Id}); err != nil {
		t.Fatal(err)
	}
	if p, err := c.PodNetNS(ctx, "ns-a", "pod-b", "uid-b"); !errors.Is(err, ErrNoSandbox) {
		t.Errorf("PodNetNS(stopped pod-b) = %q, %v; want ErrNoSandbox", p, err)
	}
}
