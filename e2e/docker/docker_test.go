// Package docker tests `bireme docker` on real Docker engines: two dockerd
// instances (scripts/docker-env.sh), each in a network namespace of its
// own with its own data root, exec root and socket, so no other engine on
// the machine is touched; containers from a busybox-static image imported
// locally (no registry) on user-defined bridge networks in 198.19.0.0/16;
// and a third host, a plain namespace under `bireme enforce`, for the
// cross-host case. Host 1 trusts the cluster CA; host 2's keys come from
// another CA, so its containers' identities are forgeries.
//
//	d1 (dockerd, agent dock1)  198.19.200.0/24: web, batch, db, plain, locked, host-net, host-plain
//	  ├── veth 198.19.203.0/30 ── d2 (dockerd, agent dock2, rogue CA) 198.19.202.0/24: web (forged), plain2
//	  └── veth 198.19.204.0/24 ── w  (bireme enforce, node peer): peer/w
//
// plain and host-plain carry no bireme.io/protect label: dock1 leaves
// them alone until the last subtest runs it with --all.
//
// The test needs root, dockerd (docker.io) and busybox-static (scripts/
// install-deps.sh installs both); without them it skips with the reason.
package docker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bireme/bireme/internal/syncbuf"
	"github.com/bireme/bireme/internal/testbin"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

const (
	cluster    = "docker-e2e"
	image      = "local/busybox:bireme"
	identities = "198.19.0.0/16"
)

// engine is one dockerd started by scripts/docker-env.sh.
type engine struct {
	dir  string
	ns   *netns.NS
	host string // DOCKER_HOST
}

func script(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(wd, "..", "..", "scripts", "docker-env.sh")
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// docker runs the docker CLI against the engine.
func (e *engine) docker(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.host)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (e *engine) mustDocker(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := e.docker(ctx, args...)
	if err != nil {
		t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

// serve is the command of a container serving its name on port 80 (and
// an echo service on port 81).
func serve(name string) []string {
	return []string{"sh", "-c", fmt.Sprintf("mkdir -p /tmp/w && echo %s > /tmp/w/index.html && (nc -ll -p 81 -e cat &) && exec httpd -f -p 80 -h /tmp/w", name)}
}

// run starts a detached container on network net with labels; a failure
// fails the test without stopping it (the caller checks t.Failed).
func (e *engine) run(t *testing.T, name, net string, labels map[string]string, extra []string, cmd []string) {
	t.Helper()
	args := []string{"run", "-d", "--name", name, "--hostname", name}
	if net != "" {
		args = append(args, "--network", net)
	}
	for k, v := range labels {
		args = append(args, "--label", k+"="+v)
	}
	args = append(args, extra...)
	args = append(args, image)
	args = append(args, cmd...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Errorf, not Fatalf: containers are started from several goroutines.
	if out, err := e.docker(ctx, args...); err != nil {
		t.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func (e *engine) ip(t *testing.T, name, net string) string {
	t.Helper()
	return e.mustDocker(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, net), name)
}

func (e *engine) pid(t *testing.T, name string) int {
	t.Helper()
	var pid int
	fmt.Sscan(e.mustDocker(t, "inspect", "-f", "{{.State.Pid}}", name), &pid)
	if pid <= 0 {
		t.Fatalf("container %s has no pid", name)
	}
	return pid
}

// fetch asks server (an address) for its page on port 80 from inside
// container client; it returns the page (or the failure) and whether it
// connected. (busybox's wget crashes resolving in a static build; nc does
// not resolve a literal address.)
func (e *engine) fetch(ctx context.Context, client, server string) (string, bool) {
	out, err := e.docker(ctx, "exec", client, "sh", "-c", httpGet(server, 3))
	if err != nil || !strings.Contains(out, "200 OK") {
		return out, false
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return strings.TrimSpace(lines[len(lines)-1]), true
}

// httpGet is a shell command fetching http://addr/ with nc, bounded to
// timeout seconds of silence (SYN retransmissions included).
func httpGet(addr string, timeout int) string {
	return fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w %d %s 80`, timeout, addr)
}

// protected returns labels opting a container into namespace x.
func protected(app string) map[string]string {
	return map[string]string{"bireme.io/protect": "true", "bireme.io/namespace": "x", "app": app}
}

// agent is one bireme process (docker or enforce) with its log.
type agent struct {
	cmd     *exec.Cmd
	log     *syncbuf.Buffer
	metrics string
	done    chan error
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start runs bin with args plus --metrics-addr, until stop or the test ends.
func start(t *testing.T, bin string, args ...string) *agent {
	t.Helper()
	a := &agent{log: &syncbuf.Buffer{}, metrics: freePort(t), done: make(chan error, 1)}
	a.cmd = exec.Command(bin, append(args, "--metrics-addr", a.metrics)...)
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	t.Cleanup(func() { a.stop(t) })
	return a
}

// stop sends SIGTERM and waits: the agent exits 0, leaving its rules.
func (a *agent) stop(t *testing.T) {
	t.Helper()
	if a.cmd.ProcessState != nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-a.done:
		if err != nil {
			t.Errorf("%s exited with %v; log:\n%s", a.cmd.Args[1], err, a.log.String())
		}
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
		t.Errorf("%s did not stop within 30 s", a.cmd.Args[1])
	}
}

// logLines is how many lines of the agent's log so far hold every one of
// parts.
func (a *agent) logLines(parts ...string) int {
	found := 0
	for _, line := range strings.Split(a.log.String(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			found++
		}
	}
	return found
}

// waitLog waits until n lines of the agent's log hold every one of parts.
func (a *agent) waitLog(t *testing.T, timeout time.Duration, n int, parts ...string) {
	t.Helper()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if a.logLines(parts...) >= n {
			return
		}
	}
	t.Fatalf("%s: not %d log lines with %q within %v; log:\n%s", a.cmd.Args[1], n, parts, timeout, a.log.String())
}

// waitProtected waits until the agent is ready with n workloads protected.
func (a *agent) waitProtected(t *testing.T, n int) {
	t.Helper()
	want := fmt.Sprintf("bireme_workloads_protected %d", n)
	var last string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		select {
		case err := <-a.done:
			t.Fatalf("%s exited: %v; log:\n%s", a.cmd.Args[1], err, a.log.String())
		default:
		}
		ready, err := http.Get("http://" + a.metrics + "/readyz")
		if err != nil {
			continue
		}
		ready.Body.Close()
		resp, err := http.Get("http://" + a.metrics + "/metrics")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "bireme_workloads_protected ") {
				last = sc.Text()
			}
		}
		resp.Body.Close()
		if ready.StatusCode == http.StatusOK && last == want {
			return
		}
	}
	t.Fatalf("%s: want %q and ready; last %q; log:\n%s", a.cmd.Args[1], want, last, a.log.String())
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// pair is one probe: client container on an engine to a server address.
type pair struct {
	on             *engine
	client, server string
	target         string // address
	want           bool
	page           string // expected page when allowed
}

// probeAll runs the probes in parallel and reports each wrong outcome.
func probeAll(t *testing.T, what string, pairs []pair) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]string, len(pairs))
	for i, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, ok := p.on.fetch(ctx, p.client, p.target)
			switch {
			case ok != p.want:
				errs[i] = fmt.Sprintf("%s -> %s: connected=%v, want %v (%s)", p.client, p.server, ok, p.want, out)
			case ok && p.page != "" && out != p.page:
				errs[i] = fmt.Sprintf("%s -> %s: page %q, want %q", p.client, p.server, out, p.page)
			}
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			t.Errorf("%s: %s", what, e)
		}
	}
}

// serveHTTP serves index (from the new directory root) on port 80 in ns
// until the test ends.
func serveHTTP(t *testing.T, ns *netns.NS, root, index string) {
	t.Helper()
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "index.html"), index)
	srv := ns.Command(context.Background(), "busybox", "httpd", "-f", "-p", "80", "-h", root)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
}

// expectFlow fails t unless file holds a flow record whose JSON holds
// every one of subs; the error says format and shows the file.
func expectFlow(t *testing.T, file string, subs []string, format string, args ...any) {
	t.Helper()
	if len(flowsWith(t, file, subs...)) == 0 {
		data, _ := os.ReadFile(file)
		t.Errorf(format+":\n%s", append(args, data)...)
	}
}

// flowsWith returns the flow records of file whose JSON holds every one of subs.
func flowsWith(t *testing.T, file string, subs ...string) []string {
	t.Helper()
	data, _ := os.ReadFile(file)
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		ok := line != ""
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

func TestDockerHosts(t *testing.T) {
	netnstest.RequireNamespaces(t)
	for _, tool := range []string{"dockerd", "docker", "busybox", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s not installed (scripts/install-deps.sh installs docker.io and busybox-static)", tool)
		}
	}
	bin, err := testbin.Bireme()
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	prefix := netnstest.Prefix()
	nsD1 := netnstest.NewNS(t, prefix+"-d1")
	nsD2 := netnstest.NewNS(t, prefix+"-d2")
	nsW := netnstest.NewNS(t, prefix+"-w")
	// fed/f: a workload of another trust domain (fed), its node on a link
	// of d1's, federated with dock1's cluster by bundle.
	nsF := netnstest.NewNS(t, prefix+"-f")
	work := t.TempDir()

	// The runtime each engine runs containers with: runc behind
	// `bireme docker runc`, whose hook fences protected containers.
	runtimeFor := func(name, dockerHost string) string {
		p := filepath.Join(work, "runtime-"+name)
		writeFile(t, p, fmt.Sprintf("#!/bin/sh\nexec %s docker runc --docker-host %s -- \"$@\"\n", bin, dockerHost))
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The engines, started side by side, then their images.
	var d1, d2 *engine
	{
		var wg sync.WaitGroup
		var mu sync.Mutex
		startBoth := func(ns *netns.NS, name string, into **engine) {
			defer wg.Done()
			dir := filepath.Join(work, name)
			rt := runtimeFor(name, "unix://"+dir+"/docker.sock")
			e := &engine{dir: dir, ns: ns, host: "unix://" + dir + "/docker.sock"}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, "bash", script(t), "start", dir, ns.Name, rt).CombinedOutput()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("start dockerd %s: %v: %s", name, err, out)
				return
			}
			*into = e
		}
		t.Cleanup(func() {
			for _, dir := range []string{filepath.Join(work, "d1"), filepath.Join(work, "d2")} {
				ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
				if out, err := exec.CommandContext(ctx, "bash", script(t), "stop", dir).CombinedOutput(); err != nil {
					t.Errorf("stop dockerd: %v: %s", err, out)
				}
				cancel()
			}
		})
		wg.Add(2)
		go startBoth(nsD1, "d1", &d1)
		go startBoth(nsD2, "d2", &d2)
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		wg.Add(2)
		for _, e := range []*engine{d1, d2} {
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
				defer cancel()
				if out, err := exec.CommandContext(ctx, "bash", script(t), "image", e.dir, image).CombinedOutput(); err != nil {
					t.Errorf("import image: %v: %s", err, out)
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
	}
	t.Logf("two engines with the image in %v", time.Since(began).Round(time.Millisecond))

	// Links: d1 routes between its containers, d2's and w.
	ctx := context.Background()
	// Created in the test's namespace before they move: unique names.
	if err := netns.Veth(ctx, nsD1, prefix+"a", nsD2, prefix+"b"); err != nil {
		t.Fatal(err)
	}
	if err := netns.Veth(ctx, nsD1, prefix+"c", nsW, prefix+"d"); err != nil {
		t.Fatal(err)
	}
	if err := netns.Veth(ctx, nsD1, prefix+"e", nsF, prefix+"f"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ns   *netns.NS
		args []string
	}{
		{nsD1, []string{"addr", "add", "198.19.203.1/30", "dev", prefix + "a"}},
		{nsD2, []string{"addr", "add", "198.19.203.2/30", "dev", prefix + "b"}},
		{nsD1, []string{"addr", "add", "198.19.204.1/24", "dev", prefix + "c"}},
		{nsW, []string{"addr", "add", "198.19.204.2/24", "dev", prefix + "d"}},
		{nsD1, []string{"route", "add", "198.19.202.0/24", "via", "198.19.203.2"}},
		{nsD2, []string{"route", "add", "default", "via", "198.19.203.1"}},
		{nsW, []string{"route", "add", "default", "via", "198.19.204.1"}},
		{nsD1, []string{"addr", "add", "198.19.205.1/24", "dev", prefix + "e"}},
		{nsF, []string{"addr", "add", "198.19.205.2/24", "dev", prefix + "f"}},
		{nsF, []string{"route", "add", "default", "via", "198.19.205.1"}},
	} {
		if err := c.ns.Exec(ctx, "ip", c.args...); err != nil {
			t.Fatal(err)
		}
	}
	d1.mustDocker(t, "network", "create", "--subnet", "198.19.200.0/24", "--gateway", "198.19.200.1", "bnet")
	d2.mustDocker(t, "network", "create", "--subnet", "198.19.202.0/24", "--gateway", "198.19.202.1", "bnet")

	// Keys: the cluster CA for dock1 and peer, another CA for dock2.
	keys := filepath.Join(work, "keys")
	mustRun(t, bin, "keys", "init-ca", "--trust-domain", cluster, "--out", keys+"/ca")
	mustRun(t, bin, "keys", "init-ca", "--trust-domain", cluster, "--out", keys+"/rogue-ca")
	mustRun(t, bin, "keys", "issue-node", "--ca-dir", keys+"/ca", "--node", "dock1", "--out", keys+"/dock1")
	mustRun(t, bin, "keys", "issue-node", "--ca-dir", keys+"/ca", "--node", "peer", "--out", keys+"/peer")
	mustRun(t, bin, "keys", "issue-node", "--ca-dir", keys+"/rogue-ca", "--node", "dock2", "--out", keys+"/dock2")
	// Cluster fed: its own CA and trust domain. It trusts dock1's cluster
	// from the start (its bundle exported and imported as operators do);
	// dock1 trusts fed only when the subtest imports fed's bundle.
	mustRun(t, bin, "keys", "init-ca", "--trust-domain", "fed", "--out", keys+"/fed-ca")
	mustRun(t, bin, "keys", "issue-node", "--ca-dir", keys+"/fed-ca", "--node", "fnode", "--out", keys+"/fnode")
	bundlesDock1, bundlesFed := filepath.Join(work, "bundles-dock1"), filepath.Join(work, "bundles-fed")
	for _, d := range []string{bundlesDock1, bundlesFed} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustRun(t, bin, "keys", "bundle", "export", "--ca-dir", keys+"/ca", "--out", filepath.Join(work, cluster+".json"))
	mustRun(t, bin, "keys", "bundle", "import", "--trust-domain", cluster, "--in", filepath.Join(work, cluster+".json"), "--dir", bundlesFed, "--cluster", "fed")
	mustRun(t, bin, "keys", "bundle", "export", "--ca-dir", keys+"/fed-ca", "--out", filepath.Join(work, "fed.json"))

	// Policies. dock1: x/db admits only app=web; x/locked may connect
	// only to app=web; the pods of namespace default (plain, unlabelled:
	// protected only with --all) admit only x/web; peer/w runs on node peer. w's store: peer/w admits
	// only x/web, which runs on dock1.
	const namespaces = `apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: peer}
`
	policyDir := filepath.Join(work, "policy-dock1")
	if err := os.MkdirAll(policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(policyDir, "policy.yaml"), namespaces+`---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: locked-egress, namespace: x}
spec:
  podSelector: {matchLabels: {app: locked}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: web}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-from-web, namespace: default}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: web}}}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: w, namespace: peer, labels: {app: w}}
spec: {nodeName: peer, containers: [{name: main, image: none}]}
`)
	rogueDir := filepath.Join(work, "policy-dock2")
	if err := os.MkdirAll(rogueDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(rogueDir, "ns.yaml"), namespaces)
	wStore := filepath.Join(work, "store-peer")
	if err := os.MkdirAll(wStore, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(wStore, "store.yaml"), namespaces+fmt.Sprintf(`---
apiVersion: v1
kind: Pod
metadata: {name: w, namespace: peer, labels: {app: w}, annotations: {bireme.io/netns: %s}}
spec: {nodeName: peer, containers: [{name: main, image: none, ports: [{name: http, containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {nodeName: dock1, containers: [{name: main, image: none}]}
---
apiVersion: v1
kind: Pod
metadata: {name: batch, namespace: x, labels: {app: batch}}
spec: {nodeName: dock1, containers: [{name: main, image: none}]}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: default}
spec: {nodeName: dock1, containers: [{name: main, image: none}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: w-from-web, namespace: peer}
spec:
  podSelector: {matchLabels: {app: w}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: web}}}]}]
`, nsW.Name))

	// peer/w: a server in w's namespace, under `bireme enforce`.
	serveHTTP(t, nsW, filepath.Join(work, "www-w"), "peer/w\n")

	// fed/f: admits x/web of cluster docker-e2e only, by naming the
	// cluster (a selector without bireme.io/cluster matches fed's own
	// workloads only).
	fedStore := filepath.Join(work, "store-fed")
	if err := os.MkdirAll(fedStore, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(fedStore, "store.yaml"), fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: pay}
---
apiVersion: v1
kind: Pod
metadata: {name: f, namespace: pay, labels: {app: f}, annotations: {bireme.io/netns: %s}}
spec: {nodeName: fnode, containers: [{name: main, image: none, ports: [{name: http, containerPort: 80}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: f-from-web, namespace: pay}
spec:
  podSelector: {matchLabels: {app: f}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {bireme.io/cluster: %s, kubernetes.io/metadata.name: x}}, podSelector: {matchLabels: {app: web}}}]}]
`, nsF.Name, cluster))
	serveHTTP(t, nsF, filepath.Join(work, "www-f"), "fed/f\n")

	nodeArgs := func(dir string) []string {
		return []string{"--cluster", cluster, "--ca-bundle", keys + "/ca/ca.crt",
			"--cert", dir + "/node.crt", "--key", dir + "/node.key", "--identity-networks", identities, "--poll", "100ms"}
	}
	flows1 := filepath.Join(work, "flows-dock1.jsonl")
	flowsW := filepath.Join(work, "flows-peer.jsonl")
	flowsF := filepath.Join(work, "flows-fed.jsonl")
	dock1Args := append([]string{"docker", "--docker-host", d1.host, "--host", "dock1", "--policy-dir", policyDir, "--flows", flows1,
		"--trust-bundles", bundlesDock1}, nodeArgs(keys+"/dock1")...)
	fed := start(t, bin, "enforce", "--node", "fnode", "--store", fedStore, "--flows", flowsF, "--cluster", "fed",
		"--ca-bundle", keys+"/fed-ca/ca.crt", "--cert", keys+"/fnode/node.crt", "--key", keys+"/fnode/node.key",
		"--identity-networks", identities, "--poll", "100ms", "--trust-bundles", bundlesFed)
	peer := start(t, bin, append([]string{"enforce", "--node", "peer", "--store", wStore, "--flows", flowsW}, nodeArgs(keys+"/peer")...)...)
	// dock2 trusts its own CA: its agent runs, but nobody else trusts it.
	dock2 := start(t, bin, "docker", "--docker-host", d2.host, "--host", "dock2", "--policy-dir", rogueDir, "--flows", filepath.Join(work, "flows-dock2.jsonl"),
		"--cluster", cluster, "--ca-bundle", keys+"/rogue-ca/ca.crt", "--cert", keys+"/dock2/node.crt", "--key", keys+"/dock2/node.key",
		"--identity-networks", identities, "--poll", "100ms")
	dock1 := start(t, bin, dock1Args...)

	// Containers.
	// Started side by side: a container start takes seconds on a busy
	// machine.
	var wg sync.WaitGroup
	for _, run := range []func(){
		func() { d1.run(t, "web", "bnet", protected("web"), nil, serve("x/web")) },
		func() { d1.run(t, "batch", "bnet", protected("batch"), nil, serve("x/batch")) },
		func() { d1.run(t, "db", "bnet", protected("db"), nil, serve("x/db")) },
		func() { d1.run(t, "plain", "bnet", nil, nil, serve("plain")) },
		func() {
			d1.run(t, "host-net", "", map[string]string{"bireme.io/protect": "true"}, []string{"--network", "host"}, []string{"sleep", "100000"})
		},
		func() {
			d1.run(t, "host-plain", "", nil, []string{"--network", "host"}, []string{"sleep", "100000"})
		},
		func() { d2.run(t, "web", "bnet", protected("web"), nil, serve("forged x/web")) },
		func() { d2.run(t, "plain2", "bnet", nil, nil, serve("plain2")) },
	} {
		wg.Add(1)
		go func() { defer wg.Done(); run() }()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	ip := map[string]string{}
	for _, name := range []string{"web", "batch", "db", "plain"} {
		ip[name] = d1.ip(t, name, "bnet")
	}
	ip["w"] = "198.19.204.2"
	peer.waitProtected(t, 1)
	fed.waitProtected(t, 1)
	dock2.waitProtected(t, 1)
	dock1.waitProtected(t, 3)
	t.Logf("containers protected at %v", time.Since(began).Round(time.Millisecond))

	if !strings.Contains(dock1.log.String(), "--network host shares the host's network namespace") {
		t.Errorf("host-network container: no refusal logged:\n%s", dock1.log.String())
	}

	t.Run("policy", func(t *testing.T) {
		probeAll(t, "dock1", []pair{
			{d1, "web", "db", ip["db"], true, "x/db"},
			{d1, "batch", "db", ip["db"], false, ""},
			{d1, "web", "batch", ip["batch"], true, "x/batch"},
			{d1, "db", "web", ip["web"], true, "x/web"},
			{d1, "plain", "db", ip["db"], false, ""},
			// plain is not protected without --all: default-from-web is
			// not enforced there.
			{d1, "batch", "plain", ip["plain"], true, "plain"},
			// Cross-host: w's enforcer admits dock1's x/web by its identity.
			{d1, "web", "peer/w", ip["w"], true, "peer/w"},
			{d1, "batch", "peer/w", ip["w"], false, ""},
			// The forged x/web on dock2 (keys from another CA) is refused;
			// its host reaches dock1 (plain2 -> plain connects).
			{d2, "web", "dock1 x/db", ip["db"], false, ""},
			{d2, "web", "peer/w", ip["w"], false, ""},
			{d2, "plain2", "dock1 plain", ip["plain"], true, "plain"},
		})
		expectFlow(t, flowsW, []string{`"verdict":"allow"`, `"direction":"ingress"`, `"peer":{"cluster":"docker-e2e","namespace":"x","pod":"web"`}, "peer's flow records show no connection admitted from x/web of dock1")
		expectFlow(t, flows1, []string{"unknown-ca"}, "dock1's flow records show no refusal of the forged identity (unknown-ca)")
	})
	if t.Failed() {
		t.Logf("dock1 log:\n%s", dock1.log.String())
		t.FailNow()
	}

	t.Run("status and explain", func(t *testing.T) {
		out := mustRun(t, bin, "docker", "status", "--docker-host", d1.host, "--host", "dock1", "-o", "json")
		var rows []struct{ Container, Identity, Status string }
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("status: %v: %s", err, out)
		}
		got := map[string]string{}
		for _, r := range rows {
			got[r.Identity] = r.Status
		}
		for _, id := range []string{"x/web", "x/batch", "x/db"} {
			if got[id] != "protected" {
				t.Errorf("status of %s: %q; all: %s", id, got[id], out)
			}
		}
		if !strings.HasPrefix(got["default/host-net"], "refused") {
			t.Errorf("status of the host-network container: %q", got["default/host-net"])
		}
		// Without --all, the unlabelled containers are not the agent's:
		// not listed, not protected, and host-plain not even refused.
		for _, id := range []string{"default/plain", "default/host-plain"} {
			if s, ok := got[id]; ok {
				t.Errorf("status without --all lists unlabelled %s (%q); all: %s", id, s, out)
			}
		}
		if strings.Contains(dock1.log.String(), "container=host-plain") {
			t.Errorf("dock1 without --all logged a status for the unlabelled host-plain:\n%s", dock1.log.String())
		}
		x := mustRun(t, bin, "policy", "explain", "-f", policyDir, "--docker-host", d1.host, "--host", "dock1",
			"--cluster", cluster, "--from", "x/batch", "--to", "x/db", "--port", "80")
		if !strings.Contains(x, "verdict: denied") || !strings.Contains(x, "db-from-web") {
			t.Errorf("explain x/batch -> x/db:\n%s", x)
		}
	})

	// The admin tier on a Docker host: an Admin Deny that db-from-web
	// cannot override, in a file beside the NetworkPolicies; removed,
	// db-from-web decides again.
	t.Run("admin tier", func(t *testing.T) {
		admin := filepath.Join(policyDir, "admin.yaml")
		writeFile(t, admin, `apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: freeze-db}
spec:
  tier: Admin
  priority: 5
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}
  ingress:
  - {name: no-web, action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}]}
`)
		// The agent logs each policy set it puts in force: before this
		// file, one without cluster policies.
		dock1.waitLog(t, 10*time.Second, 1, "network policies in force", "clusterPolicies=1")
		probeAll(t, "Admin deny in force", []pair{
			{d1, "web", "db", ip["db"], false, ""},
			{d1, "web", "batch", ip["batch"], true, "x/batch"},
		})
		expectFlow(t, flows1, []string{`"verdict":"deny"`, "freeze-db", `"tier":"admin"`}, "dock1's flow records name no Admin tier denial by freeze-db")
		x := mustRun(t, bin, "policy", "explain", "-f", policyDir, "--docker-host", d1.host, "--host", "dock1",
			"--cluster", cluster, "--from", "x/web", "--to", "x/db", "--port", "80")
		if !strings.Contains(x, "verdict: denied") || !strings.Contains(x, "freeze-db") {
			t.Errorf("explain x/web -> x/db under the Admin deny:\n%s", x)
		}
		if err := os.Remove(admin); err != nil {
			t.Fatal(err)
		}
		dock1.waitLog(t, 10*time.Second, 2, "network policies in force", "clusterPolicies=0")
		probeAll(t, "Admin deny removed", []pair{{d1, "web", "db", ip["db"], true, "x/db"}})
	})

	// The other tiers on a Docker host: an Admin Pass that hands web's
	// connections to db-from-web ahead of an Admin Deny of every other
	// client of db, and a Baseline default-deny of batch that a
	// NetworkPolicy then opens for web. Removed, nothing of them stays.
	t.Run("pass and baseline tiers", func(t *testing.T) {
		// Files appear whole (renamed into place; the loader skips
		// dot-files), so that no half-written file is ever in force.
		writeWhole := func(path, content string) {
			t.Helper()
			tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
			writeFile(t, tmp, content)
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}
		tiers := filepath.Join(policyDir, "tiers.yaml")
		writeWhole(tiers, `apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: web-to-db-decided-by-x}
spec:
  tier: Admin
  priority: 1
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}
  ingress:
  - {name: web, action: Pass, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}]}
---
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: db-closed}
spec:
  tier: Admin
  priority: 5
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}
  ingress:
  - {name: everyone-else, action: Deny, from: [{namespaces: {}}]}
---
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: batch-closed}
spec:
  tier: Baseline
  priority: 10
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: batch}}}}
  ingress:
  - {name: default-deny, action: Deny, from: [{namespaces: {}}]}
`)
		dock1.waitLog(t, 10*time.Second, 1, "network policies in force", "policies=3", "clusterPolicies=3")
		probeAll(t, "Admin Pass and Deny, Baseline deny", []pair{
			{d1, "web", "db", ip["db"], true, "x/db"},
			{d1, "batch", "db", ip["db"], false, ""},
			{d1, "web", "batch", ip["batch"], false, ""},
			{d1, "db", "web", ip["web"], true, "x/web"},
		})
		for _, want := range [][]string{
			{`"verdict":"allow"`, `"tier":"networkpolicy"`, "x/db-from-web", "passed by ClusterNetworkPolicy web-to-db-decided-by-x"},
			{`"verdict":"deny"`, `"tier":"admin"`, "denied by ClusterNetworkPolicy db-closed"},
			{`"verdict":"deny"`, `"tier":"baseline"`, "denied by ClusterNetworkPolicy batch-closed (Baseline tier"},
		} {
			expectFlow(t, flows1, want, "dock1's flow records have none with %q", want)
		}
		x := mustRun(t, bin, "policy", "explain", "-f", policyDir, "--docker-host", d1.host, "--host", "dock1",
			"--cluster", cluster, "--from", "x/web", "--to", "x/db", "--port", "80")
		if !strings.Contains(x, "verdict: allowed") || !strings.Contains(x, "passed by ClusterNetworkPolicy web-to-db-decided-by-x") {
			t.Errorf("explain x/web -> x/db under the Pass:\n%s", x)
		}

		open := filepath.Join(policyDir, "batch-from-web.yaml")
		writeWhole(open, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: batch-from-web, namespace: x}
spec:
  podSelector: {matchLabels: {app: batch}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
`)
		dock1.waitLog(t, 10*time.Second, 1, "network policies in force", "policies=4", "clusterPolicies=3")
		probeAll(t, "a NetworkPolicy opens the Baseline", []pair{
			{d1, "web", "batch", ip["batch"], true, "x/batch"},
			{d1, "db", "batch", ip["batch"], false, ""},
		})
		expectFlow(t, flows1, []string{`"verdict":"allow"`, `"tier":"networkpolicy"`, "allowed by x/batch-from-web"}, "dock1's flow records show no admission by x/batch-from-web")

		before := dock1.logLines("network policies in force", "policies=3", "clusterPolicies=0")
		for _, f := range []string{open, tiers} {
			if err := os.Remove(f); err != nil {
				t.Fatal(err)
			}
		}
		dock1.waitLog(t, 10*time.Second, before+1, "network policies in force", "policies=3", "clusterPolicies=0")
		probeAll(t, "tiers removed", []pair{
			{d1, "web", "db", ip["db"], true, "x/db"},
			{d1, "web", "batch", ip["batch"], true, "x/batch"},
			{d1, "db", "batch", ip["batch"], true, "x/batch"},
			{d1, "batch", "db", ip["db"], false, ""},
		})
	})

	// Federation on a Docker host: dock1 takes fed's bundle in its
	// --trust-bundles directory (re-read at each poll, no restart). Before,
	// fed's answers are refused (unknown-ca); with it, fed/f admits x/web
	// by its cluster, and x/web carries the verified cluster label;
	// removed, new connections are refused again at once.
	t.Run("a federated cluster by bundle", func(t *testing.T) {
		fedAddr := "198.19.205.2"
		probeAll(t, "no trust in fed", []pair{{d1, "web", "fed/f", fedAddr, false, ""}})
		expectFlow(t, flows1, []string{`"verdict":"deny"`, "unknown-ca", fedAddr + ":80"}, "dock1's flow records show no refusal of fed's answer (unknown-ca)")
		mustRun(t, bin, "keys", "bundle", "import", "--trust-domain", "fed", "--in", filepath.Join(work, "fed.json"), "--dir", bundlesDock1, "--cluster", cluster)
		dock1.waitLog(t, 10*time.Second, 1, "trust changed", "trust_domains="+cluster+",fed")
		probeAll(t, "fed trusted", []pair{
			{d1, "web", "fed/f", fedAddr, true, "fed/f"},
			{d1, "batch", "fed/f", fedAddr, false, ""},
		})
		expectFlow(t, flowsF, []string{`"verdict":"allow"`, `"direction":"ingress"`, `"peer":{"cluster":"` + cluster + `","namespace":"x","pod":"web"`, "bireme.io/cluster=" + cluster}, "fed's flow records show no admission of x/web of cluster %s by its cluster label", cluster)
		mustRun(t, bin, "keys", "bundle", "remove", "--trust-domain", "fed", "--dir", bundlesDock1)
		dock1.waitLog(t, 10*time.Second, 1, "trust changed", "revoked=fed")
		before := len(flowsWith(t, flows1, `"verdict":"deny"`, "unknown-ca", fedAddr+":80"))
		probeAll(t, "fed's bundle removed", []pair{{d1, "web", "fed/f", fedAddr, false, ""}})
		if n := len(flowsWith(t, flows1, `"verdict":"deny"`, "unknown-ca", fedAddr+":80")); n == before {
			t.Errorf("no new unknown-ca refusal of fed after its bundle was removed (%d before and after)", n)
		}
	})

	// Docker cannot relabel a running container: labels change by
	// recreating it, and the same name comes back as another identity. A
	// policy file that does not validate is logged and changes nothing:
	// the last good set stays in force.
	t.Run("recreated with other labels, a broken policy file", func(t *testing.T) {
		d1.run(t, "temp", "bnet", protected("batch"), nil, serve("x/temp"))
		if t.Failed() {
			t.FailNow()
		}
		dock1.waitProtected(t, 4)
		probeAll(t, "temp as app=batch", []pair{{d1, "temp", "db", ip["db"], false, ""}})
		d1.mustDocker(t, "rm", "-f", "temp")
		dock1.waitProtected(t, 3)
		d1.run(t, "temp", "bnet", protected("web"), nil, serve("x/temp"))
		if t.Failed() {
			t.FailNow()
		}
		dock1.waitProtected(t, 4)
		probeAll(t, "temp recreated as app=web", []pair{{d1, "temp", "db", ip["db"], true, "x/db"}})
		d1.mustDocker(t, "rm", "-f", "temp")
		dock1.waitProtected(t, 3)

		// Were it loaded, it would let app=batch into x/db.
		broken := filepath.Join(policyDir, "broken.yaml")
		writeFile(t, broken, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: Db_From_Batch, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: batch}}}]}]
`)
		dock1.waitLog(t, 10*time.Second, 1, "policy store rejected; keeping the previous policy set", "Db_From_Batch")
		probeAll(t, "broken policy file rejected", []pair{
			{d1, "batch", "db", ip["db"], false, ""},
			{d1, "web", "db", ip["db"], true, "x/db"},
		})
		if err := os.Remove(broken); err != nil {
			t.Fatal(err)
		}
	})

	// A container that connects the moment it starts: through the hook,
	// its namespace is fenced before its process runs, so its first SYN
	// waits for the enforcer and is then decided by its egress policy
	// (plain: denied; x/web: allowed). Again after a restart (a new
	// process, a new namespace).
	probe := fmt.Sprintf(`if { %s; } 2>/dev/null | grep -q '200 OK'; then echo LEAK; else echo BLOCKED; fi; `+
		`if { %s; } 2>/dev/null | grep -q '200 OK'; then echo A-OK; else echo A-FAIL; fi; exec sleep 100000`, httpGet(ip["plain"], 6), httpGet(ip["web"], 6))
	waitLogs := func(name string, n int) string {
		t.Helper()
		var logs string
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
			logs = d1.mustDocker(t, "logs", name)
			if strings.Count(logs, "A-") >= n {
				break
			}
		}
		return logs
	}
	t.Run("start and restart fenced before the process runs", func(t *testing.T) {
		d1.run(t, "locked", "bnet", protected("locked"), nil, []string{"sh", "-c", probe})
		if t.Failed() {
			t.FailNow()
		}
		if logs := waitLogs("locked", 1); logs != "BLOCKED\nA-OK" {
			t.Errorf("first start: %q, want BLOCKED then A-OK", logs)
		}
		d1.mustDocker(t, "restart", "-t", "1", "locked")
		if logs := waitLogs("locked", 2); logs != "BLOCKED\nA-OK\nBLOCKED\nA-OK" {
			t.Errorf("after a restart: %q, want BLOCKED, A-OK twice", logs)
		}
		// A restarted server is protected again in its new namespace.
		d1.mustDocker(t, "restart", "-t", "1", "db")
		dock1.waitProtected(t, 4)
		probeAll(t, "after db's restart", []pair{
			{d1, "web", "db", ip["db"], true, "x/db"},
			{d1, "batch", "db", ip["db"], false, ""},
		})
		// The window the hook closes: the same container under plain runc
		// is protected only once the agent sees its start event, after
		// its first connection left unchecked.
		d1.run(t, "locked-nohook", "bnet", protected("locked"), []string{"--runtime", "runc"}, []string{"sh", "-c", probe})
		logs := waitLogs("locked-nohook", 1)
		if !strings.HasPrefix(logs, "LEAK") {
			t.Errorf("without the hook the first connection was expected to leave before protection; got %q", logs)
		}
		d1.mustDocker(t, "rm", "-f", "locked-nohook")
		dock1.waitProtected(t, 4)
	})

	t.Run("agent restart keeps connections and fails closed", func(t *testing.T) {
		// A connection from x/web to x/db's echo port, made through the
		// enforcer, from inside a's namespace.
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", d1.pid(t, "web")))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var conn net.Conn
		if err := netns.DoFD(int(f.Fd()), func() error {
			var err error
			conn, err = net.DialTimeout("tcp", ip["db"]+":81", 5*time.Second)
			return err
		}); err != nil {
			t.Fatalf("web -> db:81: %v", err)
		}
		defer conn.Close()
		echo := func(msg string) error {
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Write([]byte(msg + "\n")); err != nil {
				return err
			}
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil {
				return err
			}
			if strings.TrimSpace(line) != msg {
				return fmt.Errorf("echo %q, want %q", line, msg)
			}
			return nil
		}
		if err := echo("before"); err != nil {
			t.Fatal(err)
		}
		dock1.stop(t)
		if err := echo("while stopped"); err != nil {
			t.Errorf("established connection cut when the agent stopped: %v", err)
		}
		probeAll(t, "agent stopped (fail closed)", []pair{{d1, "web", "db", ip["db"], false, ""}})
		dock1 = start(t, bin, dock1Args...)
		dock1.waitProtected(t, 4)
		if err := echo("after"); err != nil {
			t.Errorf("established connection cut by the agent's restart: %v", err)
		}
		probeAll(t, "agent restarted", []pair{
			{d1, "web", "db", ip["db"], true, "x/db"},
			{d1, "batch", "db", ip["db"], false, ""},
		})
	})

	t.Run("uninstall", func(t *testing.T) {
		dock1.stop(t)
		out := mustRun(t, bin, "uninstall", "--docker-host", d1.host)
		if !strings.Contains(out, "rules removed") {
			t.Errorf("uninstall: %s", out)
		}
		status := mustRun(t, bin, "docker", "status", "--docker-host", d1.host, "--host", "dock1")
		if strings.Contains(status, " protected") && !strings.Contains(status, "NOT protected") {
			t.Errorf("status after uninstall:\n%s", status)
		}
		for _, name := range []string{"web", "batch", "db", "locked"} {
			pid := d1.pid(t, name)
			rules := mustRun(t, "nsenter", "-t", fmt.Sprint(pid), "-n", "iptables-save")
			if strings.Contains(rules, "BIREME-") {
				t.Errorf("container %s keeps Bireme rules after uninstall:\n%s", name, rules)
			}
		}
		probeAll(t, "uninstalled", []pair{{d1, "batch", "db", ip["db"], true, "x/db"}})
	})

	// --all: every container is protected, labelled or not (the runtime
	// wrapper here has no --all, so the agent takes the unlabelled ones
	// over once it runs). plain becomes default/plain, under
	// default-from-web, and its connections carry that identity, to this
	// host's containers and to peer; host-plain, on the host's network,
	// is refused, not protected.
	t.Run("all containers", func(t *testing.T) {
		all := start(t, bin, append(append([]string{}, dock1Args...), "--all")...)
		// web, batch, db, locked and plain.
		all.waitProtected(t, 5)
		all.waitLog(t, 10*time.Second, 1, "container status", "container=host-plain", "refused: --network host shares the host's network namespace")
		out := mustRun(t, bin, "docker", "status", "--docker-host", d1.host, "--host", "dock1", "--all", "-o", "json")
		var rows []struct{ Container, Identity, Status string }
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("status --all: %v: %s", err, out)
		}
		got := map[string]string{}
		for _, r := range rows {
			got[r.Identity] = r.Status
		}
		if got["default/plain"] != "protected" {
			t.Errorf("status --all of the unlabelled plain: %q; all: %s", got["default/plain"], out)
		}
		if s := got["default/host-plain"]; !strings.HasPrefix(s, "refused: --network host") {
			t.Errorf("status --all of the unlabelled host-network container: %q; all: %s", s, out)
		}
		probeAll(t, "--all", []pair{
			// default-from-web is enforced at plain now (batch -> plain
			// connected without --all).
			{d1, "batch", "plain", ip["plain"], false, ""},
			{d1, "web", "plain", ip["plain"], true, "plain"},
			// plain's connections carry default/plain.
			{d1, "plain", "batch", ip["batch"], true, "x/batch"},
			{d1, "plain", "db", ip["db"], false, ""},
			{d1, "plain", "peer/w", ip["w"], false, ""},
		})
		plain := `{"cluster":"` + cluster + `","namespace":"default","pod":"plain"`
		for _, want := range [][]string{
			{`"verdict":"deny"`, `"direction":"ingress"`, `"local":` + plain, `"peer":{"cluster":"` + cluster + `","namespace":"x","pod":"batch"`, "default/default-from-web"},
			{`"verdict":"allow"`, `"direction":"ingress"`, `"local":` + plain, `"peer":{"cluster":"` + cluster + `","namespace":"x","pod":"web"`, "default/default-from-web"},
			{`"verdict":"allow"`, `"direction":"ingress"`, `"pod":"batch"`, `"peer":` + plain},
			{`"verdict":"deny"`, `"direction":"ingress"`, `"pod":"db"`, `"peer":` + plain, "x/db-from-web"},
		} {
			expectFlow(t, flows1, want, "dock1's flow records have none with %q", want)
		}
		expectFlow(t, flowsW, []string{`"verdict":"deny"`, `"direction":"ingress"`, `"peer":` + plain, "peer/w-from-web"}, "peer's flow records show no refusal of default/plain by peer/w-from-web")
		if t.Failed() {
			t.Logf("agent --all log:\n%s", all.log.String())
		}
	})
	t.Logf("done in %v", time.Since(began).Round(time.Millisecond))
}
