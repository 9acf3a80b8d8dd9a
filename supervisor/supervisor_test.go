package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
)

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// saveAll returns iptables-save and ip6tables-save of ns without comments
// and counters, so two snapshots compare equal when the rules are equal.
func saveAll(t *testing.T, ns *netns.NS) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := ns.Output(ctx, tool)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			b.WriteString(counters.ReplaceAllString(line, "[0:0]") + "\n")
		}
	}
	return b.String()
}

func TestChainsLayout(t *testing.T) {
	s := New(marks.Layout{Queues: 4, QueueBase: 10})
	var all []string
	for _, c := range s.chains() {
		if !strings.HasPrefix(c.name, ChainPrefix) {
			t.Errorf("chain %s lacks prefix %s", c.name, ChainPrefix)
		}
		for _, r := range c.rules {
			all = append(all, strings.Join(r, " "))
		}
	}
	joined := strings.Join(all, "\n")
	for _, want := range []string{"--queue-balance 10:13", "0x100000/0x300000", "0x200000/0x300000"} {
		if !strings.Contains(joined, want) {
			t.Errorf("rules lack %q:\n%s", want, joined)
		}
	}
	if strings.Contains(joined, "bypass") {
		t.Errorf("rules must fail closed (no --queue-bypass):\n%s", joined)
	}
	if got := New(marks.Layout{}).chains()[0].rules[3]; !strings.Contains(strings.Join(got, " "), "--queue-num 0") {
		t.Errorf("default queue rule = %v", got)
	}
}

// TestProtectIdempotentAndUnprotectRestores installs twice (same rules),
// then removes, and checks that the namespace's rules, including rules of
// another owner in the same built-in chains, are exactly as before.
func TestProtectIdempotentAndUnprotectRestores(t *testing.T) {
	netnstest.RequireNamespaces(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ns := netnstest.NewNS(t, netnstest.Prefix()+"-sv")
	// Someone else's rules, which must survive untouched.
	for _, tool := range []string{"iptables", "ip6tables"} {
		for _, args := range [][]string{
			{"-t", "mangle", "-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "ACCEPT"},
			{"-t", "filter", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT"},
			{"-t", "filter", "-N", "OTHER-CHAIN"},
		} {
			if err := ns.Exec(ctx, tool, args...); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := saveAll(t, ns)

	s := New(marks.Layout{})
	t.Cleanup(func() { _ = s.Unprotect(context.Background(), ns.Path()) })
	if err := s.Protect(ctx, ns.Path()); err != nil {
		t.Fatal(err)
	}
	once := saveAll(t, ns)
	if !strings.Contains(once, ":BIREME-INPUT") || !strings.Contains(once, "-A OUTPUT -p tcp -m comment --comment bireme -j BIREME-SAVE") {
		t.Fatalf("rules not installed in the namespace:\n%s", once)
	}
	if strings.Count(once, "-j NFQUEUE") != 14 { // (2 in BIREME-INPUT + 3 in BIREME-OUTPUT + 1 in each NONTCP chain) x 2 families
		t.Errorf("want 7 NFQUEUE rules per family, got:\n%s", once)
	}
	for _, want := range []string{"-A INPUT ! -p tcp -m comment --comment bireme -j BIREME-NONTCP-IN",
		"-A OUTPUT ! -p tcp -m comment --comment bireme -j BIREME-NONTCP-OUT",
		"-A INPUT ! -p tcp -m comment --comment bireme -j BIREME-SAVE"} {
		if strings.Count(once, want) != 2 { // both families
			t.Errorf("want %q in both families, got:\n%s", want, once)
		}
	}
	if err := s.Protect(ctx, ns.Path()); err != nil {
		t.Fatal(err)
	}
	if twice := saveAll(t, ns); twice != once {
		t.Errorf("second Protect changed the rules:\nonce:\n%s\ntwice:\n%s", once, twice)
	}
	// A second supervisor (a restarted agent) finds the same state.
	if err := New(marks.Layout{}).Protect(ctx, ns.Path()); err != nil {
		t.Fatal(err)
	}
	if again := saveAll(t, ns); again != once {
		t.Errorf("restarted Protect changed the rules:\n%s", again)
	}
	if err := s.Unprotect(ctx, ns.Path()); err != nil {
		t.Fatal(err)
	}
	if after := saveAll(t, ns); after != before {
		t.Errorf("Unprotect did not restore the rules:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err := s.Unprotect(ctx, ns.Path()); err != nil {
		t.Errorf("Unprotect of an unprotected namespace: %v", err)
	}
}

// TestProtectFailsClosedAndKeepsExistingConnections protects a server
// namespace with no enforcer reading the queue: a connection established
// before keeps carrying data both ways, a new one cannot be made.
func TestProtectFailsClosedAndKeepsExistingConnections(t *testing.T) {
	netnstest.RequireNamespaces(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, cli := echoPair(ctx, t, 5)
	old, err := cli.Dial("tcp", "198.18.5.1:7000", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	echo := func(c net.Conn, msg string) error {
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if !bytes.Equal(buf, []byte(msg)) {
			return fmt.Errorf("echo %q, got %q", msg, buf)
		}
		return nil
	}
	if err := echo(old, "before"); err != nil {
		t.Fatal(err)
	}

	s := New(marks.Layout{QueueBase: 3})
	t.Cleanup(func() { _ = s.Unprotect(context.Background(), srv.Path()) })
	if err := s.Protect(ctx, srv.Path()); err != nil {
		t.Fatal(err)
	}
	if err := echo(old, "after protection"); err != nil {
		t.Errorf("pre-existing connection cut by Protect: %v", err)
	}
	if c, err := cli.Dial("tcp", "198.18.5.1:7000", 2*time.Second); err == nil {
		c.Close()
		t.Error("new connection succeeded with no enforcer reading the queue (must fail closed)")
	}
	if udpArrives(t, srv, cli, "198.18.5.1:7002") {
		t.Error("a UDP datagram passed with no enforcer reading the queue (non-TCP must fail closed too)")
	}
	// Loopback inside the protected namespace is not enforced.
	ll, err := srv.Listen("tcp", "127.0.0.1:7001")
	if err != nil {
		t.Fatal(err)
	}
	defer ll.Close()
	go func() {
		if c, err := ll.Accept(); err == nil {
			c.Close()
		}
	}()
	if c, err := srv.Dial("tcp", "127.0.0.1:7001", 2*time.Second); err != nil {
		t.Errorf("loopback connection blocked: %v", err)
	} else {
		c.Close()
	}
	if err := s.Unprotect(ctx, srv.Path()); err != nil {
		t.Fatal(err)
	}
	if c, err := cli.Dial("tcp", "198.18.5.1:7000", 2*time.Second); err != nil {
		t.Errorf("new connection after Unprotect: %v", err)
	} else {
		c.Close()
	}
	if !udpArrives(t, srv, cli, "198.18.5.1:7002") {
		t.Error("UDP datagram lost after Unprotect")
	}
}

// udpArrives sends one datagram from a fresh socket in cli (a new flow) to
// addr in srv and reports whether it arrived within 2 seconds.
func udpArrives(t *testing.T, srv, cli *netns.NS, addr string) bool {
	t.Helper()
	var pc net.PacketConn
	if err := srv.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := cli.Dial("udp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("datagram")); err != nil {
		return false
	}
	_ = pc.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 16)
	_, _, err = pc.ReadFrom(buf)
	return err == nil
}

// TestChainReplacedInOneStep: a chain that must change (an upgrade with new
// rules, or someone edited it) is replaced in one transaction. When the new
// rules are refused, the old ones stay in force rather than an empty or
// half-written chain, which would return every packet unchecked.
func TestChainReplacedInOneStep(t *testing.T) {
	netnstest.RequireNamespaces(t)
	ns := netnstest.NewNS(t, netnstest.Prefix()+"-r")
	s := New(marks.Layout{})
	old := chainSpec{"mangle", "BIREME-TEST", [][]string{
		{"-p", "tcp", "-j", "RETURN"},
		{"-j", "DROP"},
	}}
	broken := chainSpec{"mangle", "BIREME-TEST", [][]string{
		{"-p", "udp", "-j", "RETURN"},
		{"-m", "no-such-match", "-j", "ACCEPT"},
		{"-j", "DROP"},
	}}
	var before, after []string
	err := inNetNS(ns.Path(), func() error {
		ipts, err := s.tables()
		if err != nil {
			return err
		}
		ipt := ipts[0]
		if err := ensureChain(ipt, old); err != nil {
			return fmt.Errorf("first install: %w", err)
		}
		if before, err = ipt.List(old.table, old.name); err != nil {
			return err
		}
		if err := ensureChain(ipt, broken); err == nil {
			return fmt.Errorf("a chain with an invalid rule was accepted")
		}
		after, err = ipt.List(old.table, old.name)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("a refused replacement changed the chain:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
}

// TestTakeoverAdoptsNothing: protection that starts on a namespace adopts
// the connections established before it, but a later Protect on the same
// namespace (a restarted or upgraded enforcer taking over) must not adopt a
// connection made while our rules were not in force: here another tool
// flushed the built-in chains, removing our jumps but not our chains, and
// a client connected in that gap. After the takeover the gap connection
// carries no data; the one adopted at the first install still does.
func TestTakeoverAdoptsNothing(t *testing.T) {
	netnstest.RequireNamespaces(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, cli := echoPair(ctx, t, 6)
	dial := func() net.Conn {
		t.Helper()
		c, err := cli.Dial("tcp", "198.18.6.1:7000", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	before := dial()

	s := New(marks.Layout{QueueBase: 3})
	t.Cleanup(func() { _ = s.Unprotect(context.Background(), srv.Path()) })
	if err := s.Protect(ctx, srv.Path()); err != nil {
		t.Fatal(err)
	}
	if err := echo(before, "adopted at the first install"); err != nil {
		t.Fatalf("connection established before the first Protect: %v", err)
	}
	for _, tool := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"mangle", "filter"} {
			// Every chain of the table is emptied, ours too, but ours
			// still exist: Bireme had protected this namespace.
			if err := srv.Exec(ctx, tool, "-t", table, "-F"); err != nil {
				t.Fatal(err)
			}
		}
	}
	gap := dial()
	if err := echo(gap, "in the gap"); err != nil {
		t.Fatalf("connection in the gap (no rules in force): %v", err)
	}

	if err := s.Protect(ctx, srv.Path()); err != nil {
		t.Fatal(err)
	}
	if err := echo(gap, "after the takeover"); err == nil {
		t.Error("a connection made while the rules were not in force was adopted as authorized by the takeover")
	}
	if err := echo(before, "after the takeover"); err != nil {
		t.Errorf("connection adopted at the first install, after the takeover: %v", err)
	}
}

// echoPair makes a server and a client namespace joined by a veth pair on
// 198.18.<subnet>.0/24 (server .1, client .2), with a TCP echo server on
// 198.18.<subnet>.1:7000 in the server's, until the test ends.
func echoPair(ctx context.Context, t *testing.T, subnet int) (srv, cli *netns.NS) {
	t.Helper()
	p := netnstest.Prefix()
	srv = netnstest.NewNS(t, p+"-s")
	cli = netnstest.NewNS(t, p+"-c")
	if err := netns.Veth(ctx, srv, p+"s0", cli, p+"c0"); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		ns        *netns.NS
		dev, host string
	}{{srv, p + "s0", "1"}, {cli, p + "c0", "2"}} {
		addr := fmt.Sprintf("198.18.%d.%s/24", subnet, x.host)
		if err := x.ns.Exec(ctx, "ip", "addr", "add", addr, "dev", x.dev); err != nil {
			t.Fatal(err)
		}
	}
	l, err := srv.Listen("tcp", fmt.Sprintf("198.18.%d.1:7000", subnet))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return srv, cli
}

// echo writes msg on c and expects it back within 3 seconds.
func echo(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if !bytes.Equal(buf, []byte(msg)) {
		return fmt.Errorf("echo %q, got %q", msg, buf)
	}
	return nil
}
