package enforcer

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/netns/netnstest"
	"github.com/bireme/bireme/policy"
)

// The pieces EndConnections is made of, on a real TCP connection in a
// namespace: the open entry is seen as open, deleted, and the socket
// aborted, so the peer's read ends; an entry of a closed connection is not
// taken for an open one.
func TestEndConnectionPieces(t *testing.T) {
	netnstest.RequireNamespaces(t)
	ns := netnstest.NewNS(t, netnstest.Prefix()+"-rv")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := ns.Exec(ctx, "ip", "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	// Loopback is tracked only once a rule asks for conntrack.
	if err := ns.Exec(ctx, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	ln, err := ns.Listen("tcp", "127.0.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := ns.Dial("tcp", "127.0.0.1:8080", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	src := netip.MustParseAddrPort(client.LocalAddr().String())
	dst := netip.MustParseAddrPort("127.0.0.1:8080")

	m, err := openCTEntry(ns.Path(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if !m.established() {
			t.Error("an open connection's entry is not seen as established")
		}
		if err := m.remove(); err != nil {
			t.Errorf("remove: %v", err)
		}
		if err := m.remove(); !errors.Is(err, errNoEntry) {
			t.Errorf("second remove: %v, want no entry", err)
		}
		if m.established() {
			t.Error("a removed entry is seen as established")
		}
		if err := destroySocket(ns.Path(), dst, src); err != nil {
			t.Logf("destroy socket (kernel without CONFIG_INET_DIAG_DESTROY?): %v", err)
			return
		}
		_ = client.SetReadDeadline(time.Now().Add(3 * time.Second))
		// The aborted server socket answers with a reset.
		if _, err := io.ReadAll(client); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("the client's read after the server socket was aborted: %v, want a reset", err)
		}
	}()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("ending the connection hangs")
	}
}

// foreignConns remembers connections with foreign peers only, forgets a
// tuple reused by a local peer, and hands a domain's connections over once.
func TestForeignConns(t *testing.T) {
	f := newForeignConns(2)
	key := func(p uint16) foreignKey {
		return foreignKey{netns: "/n", src: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), p), dst: netip.MustParseAddrPort("198.18.0.2:80")}
	}
	peer := func(c string) *identity.Identity { return &identity.Identity{Cluster: c, Namespace: "x", Pod: "p"} }
	log := func(string) {}
	f.note(key(1), foreignConn{dir: policy.Ingress, peer: peer("a")}, "a", log)
	if f.size.Load() != 0 {
		t.Fatal("a local peer was remembered")
	}
	f.note(key(1), foreignConn{peer: peer("b")}, "a", log)
	f.note(key(2), foreignConn{peer: peer("c")}, "a", log)
	f.note(key(1), foreignConn{peer: peer("a")}, "a", log) // port reused by a local peer
	f.note(key(3), foreignConn{peer: peer("b"), since: time.Now()}, "a", log)
	if got := f.take("b"); len(got) != 1 {
		t.Fatalf("b's connections: %v", got)
	}
	if got := f.take("b"); len(got) != 0 {
		t.Fatalf("b's connections handed over twice: %v", got)
	}
	f.forgetNetns("/n")
	if f.size.Load() != 0 {
		t.Fatal("forgetNetns left connections")
	}
}
