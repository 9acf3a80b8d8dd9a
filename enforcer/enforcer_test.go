package enforcer

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bireme/bireme/internal/syncbuf"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
	"github.com/bireme/bireme/supervisor"
	"github.com/bireme/bireme/tokens"
)

// testPolicy: in namespace prod, web accepts app=client on port 8080, and
// the non-enforced address 198.18.8.2 (an ipBlock); nothing else.
const testPolicy = `
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: prod, labels: {app: other}}
spec: {containers: [{name: c}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
    - ipBlock: {cidr: 198.18.8.2/32}
    ports: [{port: 8080}]
`

// lab is two protected workloads (web and client) joined by a veth, a
// third unprotected namespace (legacy, no enforcer) joined to web, and one
// Enforcer serving both protected ones.
type lab struct {
	web, client, legacy *netns.NS
	ids                 map[string]*identity.Identity
	enf                 *Enforcer
	sup                 *supervisor.Supervisor
	flows               *syncBuffer
	newEnforcer         func() *Enforcer
}

// syncBuffer receives an enforcer's flow records.
type syncBuffer struct {
	syncbuf.Buffer
	flush func() // waits for the enforcer's queued flow records; may be nil
}

func (s *syncBuffer) records(t *testing.T) []flowlog.Record {
	if s.flush != nil {
		s.flush()
	}
	rs, err := flowlog.Read(bytes.NewReader(s.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// newLab builds the lab with the given number of queues per workload.
// IPv6 addresses come from 2001:2::/48, the IPv6 benchmarking range
// (RFC 5180), the counterpart of 198.18.0.0/15.
func newLab(t testing.TB, queues uint16) *lab { return newLabWith(t, queues, nil) }

// newLabWith is newLab whose enforcer uses the tokens engine eng (nil: a
// fresh one of trust domain lab, node node1).
func newLabWith(t testing.TB, queues uint16, eng *tokens.Engine) *lab {
	netnstest.RequireNamespaces(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := netnstest.Prefix()
	l := &lab{
		web:    netnstest.NewNS(t, p+"-web"),
		client: netnstest.NewNS(t, p+"-cli"),
		legacy: netnstest.NewNS(t, p+"-leg"),
		flows:  &syncBuffer{},
	}
	links := []struct {
		a, b         *netns.NS
		aIf, bIf     string
		aAddr, bAddr []string
	}{
		{l.web, l.client, p + "w0", p + "c0", []string{"198.18.7.1/24", "2001:2:0:7::1/64"}, []string{"198.18.7.2/24", "2001:2:0:7::2/64"}},
		{l.web, l.legacy, p + "w1", p + "l0", []string{"198.18.8.1/24"}, []string{"198.18.8.2/24", "198.18.8.3/24"}},
	}
	for _, k := range links {
		if err := netns.Veth(ctx, k.a, k.aIf, k.b, k.bIf); err != nil {
			t.Fatal(err)
		}
		for _, end := range []struct {
			ns    *netns.NS
			dev   string
			addrs []string
		}{{k.a, k.aIf, k.aAddr}, {k.b, k.bIf, k.bAddr}} {
			for _, a := range end.addrs {
				args := []string{"addr", "add", a, "dev", end.dev}
				if strings.Contains(a, ":") {
					args = append(args, "nodad") // usable at once
				}
				if err := end.ns.Exec(ctx, "ip", args...); err != nil {
					t.Fatal(err)
				}
			}
		}
	}

	objs, err := k8s.Decode("store.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := k8s.Compile(objs)
	if err != nil {
		t.Fatal(err)
	}
	l.ids = map[string]*identity.Identity{}
	for _, pod := range objs.Pods {
		l.ids[pod.Name] = k8s.IdentityOf("lab", objs.Namespace(pod.Namespace), pod)
	}

	if eng == nil {
		eng = newTokenEngine(t, "lab", "node1")
	}
	placement := fixedPlacement{}
	for _, pod := range objs.Pods {
		placement[pod.Namespace+"/"+pod.Name] = "node1"
	}
	layout := marks.Layout{Queues: queues}
	l.sup = supervisor.New(layout)
	// newEnforcer starts an enforcer attached to both workloads and
	// (re)installs the rules, as the agent does at every start.
	l.newEnforcer = func() *Enforcer {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		enf, err := New(Config{Node: "node1", Tokens: eng, Policy: pol, Placement: placement, Flows: flowlog.NewWriter(l.flows),
			HandshakeTimeout: 5 * time.Second, Layout: layout})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = enf.Close() })
		l.flows.flush = enf.flows.flush
		for _, w := range []struct {
			ns  *netns.NS
			pod string
		}{{l.web, "web"}, {l.client, "client"}} {
			if err := enf.Attach(ctx, Workload{Identity: l.ids[w.pod], NetNS: w.ns.Path()}); err != nil {
				t.Fatal(err)
			}
			if err := l.sup.Protect(ctx, w.ns.Path()); err != nil {
				t.Fatal(err)
			}
			path := w.ns.Path()
			t.Cleanup(func() { _ = l.sup.Unprotect(context.Background(), path) })
		}
		return enf
	}
	l.enf = l.newEnforcer()
	return l
}

// server listens in ns and echoes; accepted counts the connections the
// application saw.
type server struct {
	ln       net.Listener
	accepted atomic.Int64
}

// serve runs an echo server on addr in ns until the test ends.
func serve(t testing.TB, ns *netns.NS, addr string) *server {
	t.Helper()
	return serveWith(t, ns, addr, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// serveWith accepts on addr in ns until the test ends and runs handle
// for each connection, closing it afterwards.
func serveWith(t testing.TB, ns *netns.NS, addr string, handle func(net.Conn)) *server {
	t.Helper()
	ln, err := ns.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return s
}

// dialFrom connects from ns, optionally from a given local address.
func dialFrom(ns *netns.NS, local, remote string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		if local != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		}
		var err error
		c, err = d.Dial("tcp", remote)
		return err
	})
	return c, err
}

// echoBytes sends n random bytes and reads them back (the write and the
// read run concurrently, so both directions carry n bytes at once).
func echoBytes(c net.Conn, n int) error {
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	data := make([]byte, n)
	_, _ = rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		werr <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("%d bytes came back different", n)
	}
	return nil
}

func findRecord(rs []flowlog.Record, dir, stage, verdict string) *flowlog.Record {
	for i := range rs {
		if rs[i].Direction == dir && rs[i].Stage == stage && rs[i].Verdict == verdict {
			return &rs[i]
		}
	}
	return nil
}

func TestEnforcerInNamespaces(t *testing.T) {
	l := newLab(t, 1)
	srv := serve(t, l.web, "198.18.7.1:8080")
	srv8081 := serve(t, l.web, "198.18.7.1:8081")
	srvLegacy := serve(t, l.web, "198.18.8.1:8080")

	// Runs in order: later steps change the lab.
	t.Run("allowed pair moves 10 MB both ways", func(t *testing.T) {
		c, err := dialFrom(l.client, "", "198.18.7.1:8080", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echoBytes(c, 10<<20); err != nil {
			t.Fatal(err)
		}
		rs := l.flows.records(t)
		in := findRecord(rs, "ingress", "syn", "allow")
		out := findRecord(rs, "egress", "synack", "allow")
		if in == nil || out == nil {
			t.Fatalf("missing allow records: %+v", rs)
		}
		if in.Peer == nil || in.Peer.Pod != "client" || in.Local.Pod != "web" || in.Policy != "prod/web" {
			t.Errorf("ingress record: %+v", in)
		}
		if out.Peer == nil || out.Peer.Pod != "web" || out.PeerAddr != "198.18.7.1:8080" {
			t.Errorf("egress record: %+v", out)
		}
	})

	t.Run("many concurrent connections", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := dialFrom(l.client, "", "198.18.7.1:8080", 5*time.Second)
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				errs <- echoBytes(c, 1000)
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("denied port fails and the server never accepts", func(t *testing.T) {
		start := time.Now()
		c, err := dialFrom(l.client, "", "198.18.7.1:8081", 2*time.Second)
		if err == nil {
			c.Close()
			t.Fatal("connection to a port no rule allows succeeded")
		}
		if time.Since(start) > 3*time.Second {
			t.Errorf("denied dial took %v", time.Since(start))
		}
		if n := srv8081.accepted.Load(); n != 0 {
			t.Errorf("server application accepted %d denied connections", n)
		}
		if r := findRecord(l.flows.records(t), "ingress", "syn", "deny"); r == nil || !strings.Contains(r.Reason, "denied") {
			t.Errorf("no deny record: %+v", r)
		}
	})

	t.Run("peer without enforcer allowed only by ipBlock", func(t *testing.T) {
		before := srvLegacy.accepted.Load()
		c, err := dialFrom(l.legacy, "198.18.8.2", "198.18.8.1:8080", 3*time.Second)
		if err != nil {
			t.Fatalf("ipBlock peer refused: %v", err)
		}
		if err := echoBytes(c, 100000); err != nil {
			t.Error(err)
		}
		c.Close()
		if c, err := dialFrom(l.legacy, "198.18.8.3", "198.18.8.1:8080", 2*time.Second); err == nil {
			c.Close()
			t.Error("peer without identity outside the ipBlock was allowed")
		}
		if got := srvLegacy.accepted.Load() - before; got != 1 {
			t.Errorf("server accepted %d connections, want 1", got)
		}
	})

	t.Run("identity change denies new connections", func(t *testing.T) {
		l.enf.Update(Workload{Identity: l.ids["other"], NetNS: l.client.Path()})
		defer l.enf.Update(Workload{Identity: l.ids["client"], NetNS: l.client.Path()})
		before := srv.accepted.Load()
		if c, err := dialFrom(l.client, "", "198.18.7.1:8080", 2*time.Second); err == nil {
			c.Close()
			t.Error("app=other was allowed")
		}
		if srv.accepted.Load() != before {
			t.Error("server application saw the denied connection")
		}
	})

	t.Run("lost handshake ACK is recovered", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Drop, before anything else sees it, every non-SYN packet that
		// carries our option: the ACK with the client's proof.
		rule := []string{"-t", "raw", "PREROUTING", "-p", "tcp", "-m", "tcp", "!", "--tcp-flags", "SYN", "SYN", "--tcp-option", "253", "-j", "DROP"}
		add := append([]string{rule[0], rule[1], "-I"}, rule[2:]...)
		del := append([]string{rule[0], rule[1], "-D"}, rule[2:]...)
		if err := l.web.Exec(ctx, "iptables", add...); err != nil {
			t.Fatal(err)
		}
		removed := false
		defer func() {
			if !removed {
				_ = l.web.Exec(context.Background(), "iptables", del...)
			}
		}()
		c, err := dialFrom(l.client, "", "198.18.7.1:8080", 5*time.Second)
		if err != nil {
			t.Fatal(err) // the client's kernel completes at once
		}
		defer c.Close()
		time.Sleep(300 * time.Millisecond) // the ACK is gone by now
		out, err := l.web.Output(ctx, "iptables", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n")
		if err != nil {
			t.Fatal(err)
		}
		dropped := false
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[2] == "DROP" && f[0] != "0" {
				dropped = true
			}
		}
		if !dropped {
			t.Fatalf("the test rule dropped nothing:\n%s", out)
		}
		if err := l.web.Exec(ctx, "iptables", del...); err != nil {
			t.Fatal(err)
		}
		removed = true
		// The server's SYN-ACK retransmission (after ~1s) makes the
		// client send its proof again; the data follows.
		if err := echoBytes(c, 10000); err != nil {
			t.Fatalf("connection did not recover from the lost ACK: %v", err)
		}
	})

	t.Run("fail closed, authorized connection keeps flowing", func(t *testing.T) {
		live, err := dialFrom(l.client, "", "198.18.7.1:8080", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		if err := echoBytes(live, 1000); err != nil {
			t.Fatal(err)
		}
		if err := l.enf.Close(); err != nil {
			t.Fatal(err)
		}
		if c, err := dialFrom(l.client, "", "198.18.7.1:8080", 2*time.Second); err == nil {
			c.Close()
			t.Error("new connection succeeded with the enforcer closed")
		}
		if err := echoBytes(live, 1<<20); err != nil {
			t.Errorf("authorized connection cut when the enforcer stopped: %v", err)
		}
	})
}

// TestEnforcerRestartIPv6TwoQueues: two queues per workload, IPv4 and IPv6
// connections, and an enforcer restart (stop, start, Attach, Protect again)
// that keeps live connections and serves new ones.
func TestEnforcerRestartIPv6TwoQueues(t *testing.T) {
	l := newLab(t, 2)
	serve(t, l.web, "198.18.7.1:8080")
	srv6 := serve(t, l.web, "[2001:2:0:7::1]:8080")
	deny6 := serve(t, l.web, "[2001:2:0:7::1]:8081")

	live4, err := dialFrom(l.client, "", "198.18.7.1:8080", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer live4.Close()
	live6, err := dialFrom(l.client, "", "[2001:2:0:7::1]:8080", 5*time.Second)
	if err != nil {
		t.Fatalf("IPv6 allowed pair: %v", err)
	}
	defer live6.Close()
	for _, c := range []net.Conn{live4, live6} {
		if err := echoBytes(c, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	if c, err := dialFrom(l.client, "", "[2001:2:0:7::1]:8081", 2*time.Second); err == nil {
		c.Close()
		t.Error("IPv6 connection to a denied port succeeded")
	}
	if deny6.accepted.Load() != 0 {
		t.Error("server application saw a denied IPv6 connection")
	}
	if err := l.enf.Close(); err != nil {
		t.Fatal(err)
	}
	l.enf = l.newEnforcer()
	for _, c := range []net.Conn{live4, live6} {
		if err := echoBytes(c, 1<<20); err != nil {
			t.Errorf("live connection across the restart: %v", err)
		}
	}
	before := srv6.accepted.Load()
	c, err := dialFrom(l.client, "", "[2001:2:0:7::1]:8080", 5*time.Second)
	if err != nil {
		t.Fatalf("new connection after restart: %v", err)
	}
	defer c.Close()
	if err := echoBytes(c, 1000); err != nil {
		t.Error(err)
	}
	if srv6.accepted.Load() != before+1 {
		t.Error("new connection not accepted by the server")
	}
}
