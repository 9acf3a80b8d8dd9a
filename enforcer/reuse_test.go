package enforcer

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/bireme/bireme/netns"
)

// TestReusedTupleRedoesHandshake checks that a new connection on the tuple
// of an earlier, authorized one is judged afresh: the conntrack entry the
// old connection left behind (closed, or even still ESTABLISHED, both
// carrying the Authorized mark) must not wave the new SYN or the new
// handshake-completing ACK through. Clients reuse ports at high
// connection rates, and conntrack may reopen an old entry for a new SYN.
func TestReusedTupleRedoesHandshake(t *testing.T) {
	l := newLab(t, 1)
	srv := serve(t, l.web, "198.18.7.1:8080")
	auth := l.sup.Layout().Authorized
	port := 40000 + int(time.Now().UnixNano()%20000)
	local := fmt.Sprintf("198.18.7.2:%d", port)
	key := connKey{local: netip.MustParseAddrPort("198.18.7.1:8080"), remote: netip.MustParseAddrPort(local)}
	serverConns := func() *connTable {
		l.enf.mu.Lock()
		defer l.enf.mu.Unlock()
		return l.enf.workloads[l.web.Path()].conns
	}()

	// connect opens a connection from the fixed client port, moves a few
	// bytes, and aborts it (RST): no TIME_WAIT socket keeps the port, so
	// the next connect may take it at once.
	connect := func(t *testing.T) error {
		t.Helper()
		var c net.Conn
		err := l.client.Do(func() error {
			d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(local))}
			var err error
			c, err = d.Dial("tcp", "198.18.7.1:8080")
			return err
		})
		if err != nil {
			return err
		}
		defer func() {
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}()
		return echoBytes(c, 100)
	}
	// staleMark says whether ns holds a conntrack entry of the tuple with
	// the Authorized bit.
	staleMark := func(t *testing.T, ns *netns.NS) bool {
		t.Helper()
		marks, _ := conntrackMarks(t, ns, port)
		for _, m := range marks {
			if m&auth != 0 {
				return true
			}
		}
		return false
	}
	// replaceWithEstablished puts an ESTABLISHED, Authorized entry for
	// the tuple in ns, as a connection that vanished without FIN or RST
	// (a rebooted peer) leaves behind.
	replaceWithEstablished := func(t *testing.T, ns *netns.NS) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = ns.Exec(ctx, "conntrack", "-D", "-p", "tcp", "--orig-port-src", fmt.Sprint(port))
		if err := ns.Exec(ctx, "conntrack", "-I", "-p", "tcp", "-s", "198.18.7.2", "-d", "198.18.7.1",
			"--sport", fmt.Sprint(port), "--dport", "8080", "--state", "ESTABLISHED", "--timeout", "120",
			"--mark", fmt.Sprint(auth)); err != nil {
			t.Fatalf("conntrack -I: %v", err)
		}
	}
	// freshlyVerified checks that the server's handshake state for the
	// tuple is a new one (not prev) whose client proof was verified.
	freshlyVerified := func(t *testing.T, prev *conn) *conn {
		t.Helper()
		c := serverConns.get(key)
		if c == nil || c == prev {
			t.Fatalf("the server enforcer saw no new SYN on the reused tuple (state %p, previous %p)", c, prev)
		}
		if c.server == nil || c.peer == nil || c.peer.Pod != "client" {
			t.Fatalf("new handshake has no verified client token: %+v", c)
		}
		if !c.authorized || c.verified == nil {
			t.Fatalf("the new connection reached the server without its client proof being verified: %+v", c)
		}
		return c
	}

	if err := connect(t); err != nil {
		t.Fatalf("first connection: %v", err)
	}
	first := freshlyVerified(t, nil)
	for _, ns := range []*netns.NS{l.client, l.web} {
		if !staleMark(t, ns) {
			t.Fatalf("no Authorized conntrack entry left for the tuple in %s: the test would prove nothing", ns.Name)
		}
	}

	t.Run("closed entry", func(t *testing.T) {
		before := srv.accepted.Load()
		if err := connect(t); err != nil {
			t.Fatalf("second connection on the same tuple: %v", err)
		}
		first = freshlyVerified(t, first)
		if srv.accepted.Load() != before+1 {
			t.Fatalf("server accepted %d connections, want 1", srv.accepted.Load()-before)
		}
	})

	t.Run("established entry", func(t *testing.T) {
		replaceWithEstablished(t, l.client)
		replaceWithEstablished(t, l.web)
		before := srv.accepted.Load()
		if err := connect(t); err != nil {
			t.Fatalf("connection over a stale ESTABLISHED entry: %v", err)
		}
		first = freshlyVerified(t, first)
		if srv.accepted.Load() != before+1 {
			t.Fatalf("server accepted %d connections, want 1", srv.accepted.Load()-before)
		}
	})

	t.Run("tokenless SYN over an established entry is dropped", func(t *testing.T) {
		// The client's rules go and its enforcer lets go of it: its SYN
		// carries no token, and 198.18.7.2 is in no ipBlock.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := l.sup.Unprotect(ctx, l.client.Path()); err != nil {
			t.Fatal(err)
		}
		if err := l.enf.Detach(l.client.Path()); err != nil {
			t.Fatal(err)
		}
		replaceWithEstablished(t, l.web)
		before := srv.accepted.Load()
		if err := connect(t); err == nil {
			t.Fatal("a client without token connected over a stale Authorized entry")
		}
		if n := srv.accepted.Load() - before; n != 0 {
			t.Fatalf("the server application accepted %d connections from a client without token", n)
		}
	})
}
