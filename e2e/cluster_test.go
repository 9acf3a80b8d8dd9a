package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/lab/topology"
	"github.com/bireme/bireme/netns/netnstest"
	"github.com/bireme/bireme/tokens"
)

// trustDomain is the cluster name every honest node is issued for.
const trustDomain = "e2e"

// podSpec is one workload of a test cluster: a topology host plus the Pod
// object written to the store. Unprotected pods get a host but no Pod
// object with the netns annotation, so no enforcer serves them: they play
// machines outside Bireme (attackers, plain peers).
type podSpec struct {
	Name        string // host name, unique in the cluster; also the pod name
	Namespace   string
	Node        string
	Labels      map[string]string
	Ports       []namedPort // servers are started on each
	Unprotected bool
}

type namedPort struct {
	Name string
	Port uint16
}

type clusterSpec struct {
	NAT        bool
	Nodes      []string // node names, in order
	Namespaces map[string]map[string]string
	Pods       []podSpec
	Policies   string // NetworkPolicy YAML documents
}

// cluster is a running test cluster: a topology, a CA, a store and one
// `bireme enforce` per node.
type cluster struct {
	t       testing.TB
	spec    clusterSpec
	topo    *topology.Topology
	dir     string
	store   string
	ca      *tokens.CA
	caFile  string
	enf     map[string]*enforcerProc
	servers map[string]*server // "pod:port"
	// baseline holds each host's rules (see rules) before any enforcer ran.
	baseline map[string]string
}

// rules returns the iptables and ip6tables rules and non-built-in chains of
// host's namespace, one per line, sorted: what an enforcer must leave as it
// found. Built-in chains and counters are left out: the kernel keeps a table
// once anything touched it, and that is not a rule of ours.
func (c *cluster) rules(host string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var lines []string
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := c.host(host).NS.Output(ctx, tool)
		if err != nil {
			c.t.Fatalf("%s in %s: %v", tool, host, err)
		}
		table := ""
		for _, l := range strings.Split(string(out), "\n") {
			switch {
			case strings.HasPrefix(l, "*"):
				table = l
			case strings.HasPrefix(l, "-A "):
				lines = append(lines, tool+" "+table+" "+l)
			case strings.HasPrefix(l, ":") && strings.Contains(l, " - ["):
				lines = append(lines, tool+" "+table+" "+strings.Fields(l)[0])
			}
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// queues returns the NFQUEUE queues bound in host's namespace.
func (c *cluster) queues(host string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := c.host(host).NS.Output(ctx, "cat", "/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		// No file: the module is not loaded, so no queue exists.
		return ""
	}
	return strings.TrimSpace(string(out))
}

// newCluster builds spec's topology, keys and store, starts a server on
// every declared port and an enforcer on every node, and waits until each
// enforcer protects all of its pods. Everything is removed when the test
// ends.
func newCluster(t testing.TB, spec clusterSpec) *cluster {
	t.Helper()
	netnstest.RequireNamespaces(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	prefix := netnstest.Prefix()
	byNode := map[string][]string{}
	for _, p := range spec.Pods {
		byNode[p.Node] = append(byNode[p.Node], p.Name)
	}
	var nodes []topology.NodeSpec
	for _, n := range spec.Nodes {
		nodes = append(nodes, topology.NodeSpec{Name: n, Hosts: byNode[n]})
	}
	topo, err := topology.Build(ctx, topology.Spec{Prefix: prefix, NAT: spec.NAT, Nodes: nodes})
	if err != nil {
		t.Fatalf("build topology: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := topo.Destroy(ctx); err != nil {
			t.Errorf("destroy topology: %v", err)
		}
	})

	c := &cluster{t: t, spec: spec, topo: topo, dir: t.TempDir(), enf: map[string]*enforcerProc{}, servers: map[string]*server{}}
	c.store = filepath.Join(c.dir, "store")
	if err := os.Mkdir(c.store, 0o755); err != nil {
		t.Fatal(err)
	}
	c.ca, err = tokens.NewCA(trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c.caFile = filepath.Join(c.dir, "ca.crt")
	if err := c.ca.Save(c.caFile, filepath.Join(c.dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	c.writeStore()

	for _, p := range spec.Pods {
		for _, port := range p.Ports {
			c.servers[p.Name+":"+strconv.Itoa(int(port.Port))] = startServer(t, c.topo.Host(p.Name), port.Port)
		}
	}
	c.baseline = map[string]string{}
	for _, p := range spec.Pods {
		c.baseline[p.Name] = c.rules(p.Name)
	}
	for _, n := range spec.Nodes {
		c.enf[n] = c.startEnforcer(n, n, c.ca, c.caFile, c.store)
	}
	// Stop every enforcer at once when the test ends (each takes seconds
	// to remove its rules); registered last, so it runs first.
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, e := range c.enf {
			if e.running() {
				wg.Add(1)
				go func() { defer wg.Done(); _ = e.stop() }()
			}
		}
		wg.Wait()
	})
	for _, n := range spec.Nodes {
		c.enf[n].waitProtected(c.protectedOn(n))
	}
	return c
}

// protectedOn counts the protected pods of node.
func (c *cluster) protectedOn(node string) int {
	n := 0
	for _, p := range c.spec.Pods {
		if p.Node == node && !p.Unprotected {
			n++
		}
	}
	return n
}

func (c *cluster) host(name string) *topology.Host {
	h := c.topo.Host(name)
	if h == nil {
		panic("e2e: no host " + name) // a mistake in the test itself
	}
	return h
}

func (c *cluster) server(t *testing.T, pod string, port uint16) *server {
	t.Helper()
	s := c.servers[pod+":"+strconv.Itoa(int(port))]
	if s == nil {
		t.Fatalf("no server on %s:%d", pod, port)
	}
	return s
}

// writeStore writes the cluster's Namespaces, Pods and policies to the
// store, replacing the file atomically so an enforcer never reads half.
func (c *cluster) writeStore() {
	c.t.Helper()
	var b strings.Builder
	nsNames := make([]string, 0, len(c.spec.Namespaces))
	for ns := range c.spec.Namespaces {
		nsNames = append(nsNames, ns)
	}
	sort.Strings(nsNames)
	for _, ns := range nsNames {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %q\n%s", ns, yamlMap("  ", "labels", c.spec.Namespaces[ns]))
	}
	for _, p := range c.spec.Pods {
		if p.Unprotected {
			continue
		}
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: %q\n  namespace: %q\n%s  annotations:\n    bireme.io/netns: %q\n",
			p.Name, p.Namespace, yamlMap("  ", "labels", p.Labels), c.host(p.Name).NS.Name)
		fmt.Fprintf(&b, "spec:\n  nodeName: %q\n  containers:\n  - name: main\n    image: none\n", p.Node)
		if len(p.Ports) > 0 {
			b.WriteString("    ports:\n")
			for _, port := range p.Ports {
				if port.Name != "" {
					fmt.Fprintf(&b, "    - name: %q\n      containerPort: %d\n", port.Name, port.Port)
				} else {
					fmt.Fprintf(&b, "    - containerPort: %d\n", port.Port)
				}
			}
		}
	}
	if c.spec.Policies != "" {
		b.WriteString("---\n" + c.spec.Policies)
	}
	writeAtomic(c.t, filepath.Join(c.store, "cluster.yaml"), b.String())
}

func writeAtomic(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp~"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func yamlMap(indent, key string, m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%s%s:\n", indent, key)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s  %s: %q\n", indent, k, m[k])
	}
	return b.String()
}

// enforcerProc is one running `bireme enforce`.
type enforcerProc struct {
	t           testing.TB
	node        string
	args        []string
	flows       string
	logFile     string
	metricsAddr string
	cmd         *exec.Cmd
	done        chan struct{}
	waitErr     error
}

// startEnforcer issues node credentials from ca and starts `bireme enforce`
// for node on store; name names its files (node name for honest nodes). It
// is stopped (SIGTERM, then SIGKILL) when the test ends.
func (c *cluster) startEnforcer(name, node string, ca *tokens.CA, caFile, store string) *enforcerProc {
	t := c.t
	t.Helper()
	creds, err := ca.IssueNode(node, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(c.dir, name+".crt"), filepath.Join(c.dir, name+".key")
	if err := creds.Save(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	e := &enforcerProc{
		t:       t,
		node:    node,
		flows:   filepath.Join(c.dir, name+".flows"),
		logFile: filepath.Join(c.dir, name+".log"),
	}
	e.metricsAddr = freeLocalAddr(t)
	e.args = []string{"enforce",
		"--node", node, "--store", store, "--cluster", ca.TrustDomain,
		"--ca-bundle", caFile, "--cert", certFile, "--key", keyFile,
		"--flows", e.flows, "--metrics-addr", e.metricsAddr, "--poll", "100ms",
	}
	e.start()
	t.Cleanup(func() {
		if e.running() {
			e.stop()
		}
		if t.Failed() {
			log, _ := os.ReadFile(e.logFile)
			t.Logf("enforcer %s log:\n%s", node, tail(string(log), 4000))
		}
	})
	return e
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func freeLocalAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (e *enforcerProc) start() {
	e.t.Helper()
	logf, err := os.OpenFile(e.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	e.cmd = exec.Command(biremeBin, e.args...)
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the test binary
	if err := e.cmd.Start(); err != nil {
		logf.Close()
		e.t.Fatalf("start enforcer %s: %v", e.node, err)
	}
	e.done = make(chan struct{})
	go func() {
		e.waitErr = e.cmd.Wait()
		logf.Close()
		close(e.done)
	}()
}

func (e *enforcerProc) running() bool {
	select {
	case <-e.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and returns the exit error (nil for exit 0); it kills
// the process if it has not exited within 15 s.
func (e *enforcerProc) stop() error {
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
		return e.waitErr
	case <-time.After(15 * time.Second):
		_ = e.cmd.Process.Kill()
		<-e.done
		return fmt.Errorf("enforcer %s did not exit within 15s of SIGTERM", e.node)
	}
}

// kill9 kills the enforcer without letting it clean up.
func (e *enforcerProc) kill9() {
	_ = e.cmd.Process.Kill()
	<-e.done
}

// metric returns the value of the first series of metric name whose
// labels include every one of labels (written as `key="value"`), or an
// error.
func (e *enforcerProc) metric(name string, labels ...string) (float64, error) {
	resp, err := (&http.Client{Timeout: time.Second}).Get("http://" + e.metricsAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if series, _, _ := strings.Cut(f[0], "{"); series != name {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(f[0], l)
		}
		if match {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, fmt.Errorf("no series %s%v", name, labels)
}

// waitProtected waits until the enforcer reports n protected workloads.
func (e *enforcerProc) waitProtected(n int) {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		if !e.running() {
			log, _ := os.ReadFile(e.logFile)
			e.t.Fatalf("enforcer %s exited (%v):\n%s", e.node, e.waitErr, tail(string(log), 4000))
		}
		v, err := e.metric("bireme_workloads_protected")
		if err == nil && v == float64(n) {
			return
		}
		last = err
		if err == nil {
			last = fmt.Errorf("%v protected", v)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("enforcer %s: not protecting %d workloads after 15s: %v", e.node, n, last)
}

// records returns every flow record the enforcer wrote so far.
func (e *enforcerProc) records(t *testing.T) []flowlog.Record {
	t.Helper()
	f, err := os.Open(e.flows)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := flowlog.Read(f)
	if err != nil {
		// The last line may be being written; what came before is whole.
		t.Logf("flows %s: %v", e.node, err)
	}
	return recs
}

// server is a TCP echo server in a host namespace that counts accepts: the
// proof that a denied connection never reached the application.
type server struct {
	ln      net.Listener
	accepts atomic.Int64
}

func startServer(t testing.TB, h *topology.Host, port uint16) *server {
	t.Helper()
	ln, err := h.NS.Listen("tcp", netip.AddrPortFrom(h.Addr, port).String())
	if err != nil {
		t.Fatalf("listen on %s:%d: %v", h.Name, port, err)
	}
	s := &server{ln: ln}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepts.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
				_, _ = io.Copy(conn, conn)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return s
}

// dial connects from host from to pod to on port.
func (c *cluster) dial(from, to string, port uint16, timeout time.Duration) (net.Conn, error) {
	addr := netip.AddrPortFrom(c.host(to).Addr, port).String()
	return c.host(from).NS.Dial("tcp", addr, timeout)
}

// transferSize is what an allowed connection must carry each way, byte-exact.
const transferSize = 10 << 20

// echoCheck sends n random bytes through the echo server and checks that
// exactly the same bytes come back.
func echoCheck(conn net.Conn, n int) error {
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	data := make([]byte, n)
	if _, err := rand.Read(data); err != nil {
		return err
	}
	want := sha256.Sum256(data)
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(data)
		werr <- err
	}()
	h := sha256.New()
	got, err := io.CopyN(h, conn, int64(n))
	if err != nil {
		return fmt.Errorf("read back %d of %d bytes: %w", got, n, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(h.Sum(nil), want[:]) {
		return errors.New("bytes echoed differ from bytes sent")
	}
	return nil
}

// expectAllowed connects from → to:port, moves transferSize bytes both ways
// and checks the server application accepted exactly one more connection.
func (c *cluster) expectAllowed(t *testing.T, from, to string, port uint16) {
	t.Helper()
	s := c.server(t, to, port)
	before := s.accepts.Load()
	conn, err := c.dial(from, to, port, 3*time.Second)
	if err != nil {
		t.Errorf("%s -> %s:%d should connect: %v", from, to, port, err)
		return
	}
	defer conn.Close()
	if err := echoCheck(conn, transferSize); err != nil {
		t.Errorf("%s -> %s:%d: 10 MB both ways: %v", from, to, port, err)
	}
	if got := s.accepts.Load() - before; got != 1 {
		t.Errorf("%s -> %s:%d: server accepted %d connections, want 1", from, to, port, got)
	}
}

// deniedTimeout bounds how long a denied connect may hang before failing.
const deniedTimeout = 1500 * time.Millisecond

// expectDenied checks a connect from → to:port fails within deniedTimeout
// and the server application never accepts it.
func (c *cluster) expectDenied(t *testing.T, from, to string, port uint16) {
	t.Helper()
	s := c.server(t, to, port)
	before := s.accepts.Load()
	start := time.Now()
	conn, err := c.dial(from, to, port, deniedTimeout)
	if err == nil {
		conn.Close()
		t.Errorf("%s -> %s:%d connected; policy denies it", from, to, port)
	} else if took := time.Since(start); took > deniedTimeout+time.Second {
		t.Errorf("%s -> %s:%d: failing took %v", from, to, port, took)
	}
	// A late handshake completion would show up as an accept shortly after.
	time.Sleep(200 * time.Millisecond)
	if got := s.accepts.Load() - before; got != 0 {
		t.Errorf("%s -> %s:%d denied, yet the server application accepted %d connections", from, to, port, got)
	}
}

// flowMatch selects flow records.
type flowMatch struct {
	Direction, Local, Peer, Verdict string // Local/Peer as "ns/pod"; Peer "" matches no identity
	LocalPort                       uint16
}

func (m flowMatch) matches(r flowlog.Record) bool {
	if r.Direction != m.Direction || r.Verdict != m.Verdict || r.Local.Ref() != m.Local || r.Peer.Ref() != m.Peer {
		return false
	}
	if m.LocalPort != 0 && !strings.HasSuffix(r.LocalAddr, ":"+strconv.Itoa(int(m.LocalPort))) {
		return false
	}
	return true
}

// waitFlow waits for a record of node matching m and returns it.
func (c *cluster) waitFlow(t *testing.T, node string, m flowMatch) (flowlog.Record, bool) {
	t.Helper()
	return c.waitRecord(t, node, m.matches)
}

// waitRecord waits up to 3 s for a record of node (an enforcer name) that
// satisfies pred.
func (c *cluster) waitRecord(t *testing.T, node string, pred func(flowlog.Record) bool) (flowlog.Record, bool) {
	t.Helper()
	return c.waitRecordSince(t, node, 0, pred)
}

// waitRecordSince is waitRecord ignoring the first since records.
func (c *cluster) waitRecordSince(t *testing.T, node string, since int, pred func(flowlog.Record) bool) (flowlog.Record, bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		recs := c.enf[node].records(t)
		if since > len(recs) {
			since = len(recs)
		}
		for _, r := range recs[since:] {
			if pred(r) {
				return r, true
			}
		}
		if time.Now().After(deadline) {
			return flowlog.Record{}, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dumpFlows renders node's records for a failure message.
func (c *cluster) dumpFlows(t *testing.T, node string) string {
	var have []string
	for _, r := range c.enf[node].records(t) {
		have = append(have, fmt.Sprintf("%s %s %s %s<-%s(%s) %s policy=%q tokenError=%q %q", r.Direction, r.Stage, r.LocalAddr, r.Local.Ref(), r.Peer.Ref(), r.PeerAddr, r.Verdict, r.Policy, r.TokenError, r.Reason))
	}
	return strings.Join(have, "\n  ")
}

// expectFlow asserts node wrote a record matching m whose policy is policy
// and whose reason contains reason; it returns the record.
func (c *cluster) expectFlow(t *testing.T, node string, m flowMatch, policy, reason string) flowlog.Record {
	t.Helper()
	r, ok := c.waitFlow(t, node, m)
	if !ok {
		t.Errorf("node %s wrote no flow record %+v; it wrote:\n  %s", node, m, c.dumpFlows(t, node))
		return r
	}
	if r.Policy != policy {
		t.Errorf("flow %+v: policy %q, want %q (reason %q)", m, r.Policy, policy, r.Reason)
	}
	if !strings.Contains(r.Reason, reason) {
		t.Errorf("flow %+v: reason %q does not contain %q", m, r.Reason, reason)
	}
	if r.Node != node {
		t.Errorf("flow %+v: node %q, want %q", m, r.Node, node)
	}
	return r
}
