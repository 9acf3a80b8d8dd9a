package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/lab"
	"github.com/bireme/bireme/netns/netnstest"
)

// trustDomain is the cluster name every honest node is issued for.
const trustDomain = "e2e"

// clusterSpec says which lab to build: Kubernetes objects from
// testdata/cluster (pods are named uniquely across namespaces, so tests
// call them by name), NAT between the nodes, and the nodes whose keys come
// from a CA the cluster does not trust.
type clusterSpec struct {
	Files          []string
	NAT            bool
	UntrustedNodes []string
	// Cluster is the trust domain of Files' cluster (trustDomain if empty);
	// Members are further clusters (federation).
	Cluster string
	Members []lab.Member
	// FlowsMaxBytes rotates the enforcers' flow files (lab.Options).
	FlowsMaxBytes int64
}

// modelSpec is the model of testdata/cluster/model.yaml.
func modelSpec(nat bool) clusterSpec {
	return clusterSpec{Files: []string{"testdata/cluster/model.yaml"}, NAT: nat}
}

// cluster is a running lab (package lab: namespaces, store, keys, one
// `bireme enforce` per node) whose pods run this test's echo servers
// instead of the lab's: they count accepts, the proof that a denied
// connection never reached the application.
type cluster struct {
	t       testing.TB
	lab     *lab.Lab
	servers map[string]*server // "pod:port"
}

// newCluster builds spec's lab, which returns once every enforcer protects
// all of its pods, and starts an echo server on every declared port. The
// lab, its enforcers and the servers are removed when the test ends.
func newCluster(t testing.TB, spec clusterSpec) *cluster {
	t.Helper()
	netnstest.RequireNamespaces(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := lab.Config{StateDir: filepath.Join(t.TempDir(), "lab"), Binary: biremeBin}
	opts := lab.Options{
		Prefix: netnstest.Prefix(), NAT: spec.NAT, UntrustedNodes: spec.UntrustedNodes,
		Cluster: trustDomain, Poll: 100 * time.Millisecond, NoServers: true, Members: spec.Members,
		FlowsMaxBytes: spec.FlowsMaxBytes,
	}
	if spec.Cluster != "" {
		opts.Cluster = spec.Cluster
	}
	l, err := lab.Up(ctx, cfg, opts, spec.Files...)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := lab.Down(ctx, cfg); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	// Registered after the teardown, so it runs before it, while the logs exist.
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range l.Status().Nodes {
				t.Logf("enforcer %s log:\n%s", n.Name, tailFile(n.Log, 4000))
			}
		}
	})
	c := &cluster{t: t, lab: l, servers: map[string]*server{}}
	for _, ref := range l.Pods() {
		pod, _ := l.Pod(ref)
		for _, port := range pod.Ports {
			c.servers[serverKey(ref, port)] = startServer(t, pod, port)
		}
	}
	return c
}

func serverKey(ref string, port uint16) string { return ref + ":" + strconv.Itoa(int(port)) }

// pod returns the pod called name (in whichever namespace), or the pod
// whose reference ("namespace/name") name is.
func (c *cluster) pod(name string) lab.Target {
	for _, ref := range c.lab.Pods() {
		if ref == name || strings.HasSuffix(ref, "/"+name) {
			pod, _ := c.lab.Pod(ref)
			return pod
		}
	}
	panic("e2e: no pod " + name) // a mistake in the test itself
}

// node returns the status of node.
func (c *cluster) node(name string) lab.NodeStatus {
	for _, n := range c.lab.Status().Nodes {
		if n.Name == name {
			return n
		}
	}
	panic("e2e: no node " + name)
}

func (c *cluster) server(t *testing.T, pod string, port uint16) *server {
	t.Helper()
	s := c.servers[serverKey(c.pod(pod).Ref, port)]
	if s == nil {
		t.Fatalf("no server on %s:%d", pod, port)
	}
	return s
}

// apply applies files to the lab; it returns once the enforcers protect
// exactly the pods they should and have reloaded the store.
func (c *cluster) apply(t *testing.T, files ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.lab.Apply(ctx, files...); err != nil {
		t.Fatalf("lab apply %v: %v", files, err)
	}
}

// metric reads one series of node's enforcer metrics.
func (c *cluster) metric(node, name string, labels map[string]string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.lab.Metric(ctx, node, name, labels)
}

// noRules is what rules returns for a namespace no enforcer has touched:
// the lab's pod namespaces start without a single rule (the NAT lives in
// the node namespaces).
const noRules = ""

// rules returns the iptables and ip6tables rules and non-built-in chains of
// pod's namespace, one per line, sorted: what an enforcer must leave as it
// found. Built-in chains and counters are left out: the kernel keeps a table
// once anything touched it, and that is not a rule of ours.
func (c *cluster) rules(pod string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var lines []string
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := c.pod(pod).NS.Output(ctx, tool)
		if err != nil {
			c.t.Fatalf("%s in %s: %v", tool, pod, err)
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

// queues returns the NFQUEUE queues bound in pod's namespace.
func (c *cluster) queues(pod string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := c.pod(pod).NS.Output(ctx, "cat", "/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		// No file: the module is not loaded, so no queue exists.
		return ""
	}
	return strings.TrimSpace(string(out))
}

// enforcerLog returns the end of node's enforcer log.
func (c *cluster) enforcerLog(node string) string { return tailFile(c.node(node).Log, 3000) }

func tailFile(file string, n int) string {
	data, _ := os.ReadFile(file)
	return tail(string(data), n)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// records returns every flow record node's enforcer wrote so far.
func (c *cluster) records(t *testing.T, node string) []flowlog.Record {
	t.Helper()
	f, err := os.Open(c.node(node).Flows)
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
		t.Logf("flows %s: %v", node, err)
	}
	return recs
}

// server is a TCP echo server in a host namespace that counts accepts: the
// proof that a denied connection never reached the application.
type server struct {
	ln      net.Listener
	accepts atomic.Int64
}

func startServer(t testing.TB, pod lab.Target, port uint16) *server {
	t.Helper()
	ln, err := pod.NS.Listen("tcp", netip.AddrPortFrom(pod.Addr, port).String())
	if err != nil {
		t.Fatalf("listen on %s:%d: %v", pod.Ref, port, err)
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

// dial connects from pod from to pod to on port.
func (c *cluster) dial(from, to string, port uint16, timeout time.Duration) (net.Conn, error) {
	addr := netip.AddrPortFrom(c.pod(to).Addr, port).String()
	return c.pod(from).NS.Dial("tcp", addr, timeout)
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
		recs := c.records(t, node)
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
	for _, r := range c.records(t, node) {
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
