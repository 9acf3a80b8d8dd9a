package topology_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/lab/topology"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
)

func TestBuildRejectsBadSpecs(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec topology.Spec
		want string
	}{
		{"empty prefix", topology.Spec{}, "prefix"},
		{"slash in prefix", topology.Spec{Prefix: "a/b"}, "prefix"},
		{"bad node name", topology.Spec{Prefix: "p", Nodes: []topology.NodeSpec{{Name: "n 1"}}}, "node name"},
		{"duplicate node", topology.Spec{Prefix: "p", Nodes: []topology.NodeSpec{{Name: "n"}, {Name: "n"}}}, "twice"},
		{"duplicate host", topology.Spec{Prefix: "p", Nodes: []topology.NodeSpec{{Name: "n", Hosts: []string{"a"}}, {Name: "m", Hosts: []string{"a"}}}}, "twice"},
		{"reserved host", topology.Spec{Prefix: "p", Nodes: []topology.NodeSpec{{Name: "n", Hosts: []string{"router"}}}}, "reserved"},
		{"bad host name", topology.Spec{Prefix: "p", Nodes: []topology.NodeSpec{{Name: "n", Hosts: []string{"x/a"}}}}, "host name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := topology.Build(context.Background(), tc.spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Build: err %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// serveSource answers every connection with the client address it saw.
func serveSource(t *testing.T, h *topology.Host, port string) {
	t.Helper()
	l, err := h.NS.Listen("tcp", net.JoinHostPort(h.Addr.String(), port))
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
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			_, _ = c.Write([]byte(host + "\n"))
			c.Close()
		}
	}()
}

// seenAs connects from -> to and returns the source address the server saw.
func seenAs(t *testing.T, from, to *topology.Host) netip.Addr {
	t.Helper()
	c, err := from.NS.Dial("tcp", netip.AddrPortFrom(to.Addr, 8080).String(), 2*time.Second)
	if err != nil {
		t.Fatalf("%s -> %s: %v", from.Name, to.Name, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("%s -> %s: read: %v", from.Name, to.Name, err)
	}
	return netip.MustParseAddr(strings.TrimSpace(line))
}

func build(t *testing.T, spec topology.Spec) *topology.Topology {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topo, err := topology.Build(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := topo.Destroy(ctx); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	return topo
}

func TestReachability(t *testing.T) {
	netnstest.RequireNamespaces(t)
	for _, nat := range []bool{false, true} {
		t.Run(map[bool]string{false: "routed", true: "nat"}[nat], func(t *testing.T) {
			prefix := netnstest.Prefix()
			topo := build(t, topology.Spec{Prefix: prefix, NAT: nat, Nodes: []topology.NodeSpec{
				{Name: "n1", Hosts: []string{"a", "b"}},
				{Name: "n2", Hosts: []string{"c"}},
			}})
			a, b, c := topo.Host("a"), topo.Host("b"), topo.Host("c")
			for _, h := range []*topology.Host{a, b, c} {
				if !netip.MustParsePrefix("198.18.0.0/15").Contains(h.Addr) {
					t.Fatalf("host %s has address %s outside 198.18.0.0/15", h.Name, h.Addr)
				}
				if h.NS.Name != prefix+"-"+h.Name {
					t.Errorf("host %s namespace %q, want %q", h.Name, h.NS.Name, prefix+"-"+h.Name)
				}
				serveSource(t, h, "8080")
			}
			n1 := topo.Node("n1")
			for _, tc := range []struct {
				from, to *topology.Host
				want     netip.Addr
			}{
				{a, b, a.Addr}, // same node: never translated
				{b, a, b.Addr},
				{a, c, map[bool]netip.Addr{false: a.Addr, true: n1.Addr}[nat]},
				{c, a, map[bool]netip.Addr{false: c.Addr, true: topo.Node("n2").Addr}[nat]},
			} {
				if got := seenAs(t, tc.from, tc.to); got != tc.want {
					t.Errorf("%s -> %s: server saw %s, want %s", tc.from.Name, tc.to.Name, got, tc.want)
				}
				if got := topo.SourceAddr(tc.from, tc.to.Node); got != tc.want {
					t.Errorf("SourceAddr(%s, %s) = %s, want %s", tc.from.Name, tc.to.Node, got, tc.want)
				}
			}
		})
	}
}

func TestAddRemoveRestoreDestroy(t *testing.T) {
	netnstest.RequireNamespaces(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := netnstest.Prefix()
	topo := build(t, topology.Spec{Prefix: prefix, Nodes: []topology.NodeSpec{{Name: "n1", Hosts: []string{"a"}}}})

	if _, err := topo.AddHost(ctx, "n1", "a"); err == nil {
		t.Error("AddHost of an existing host succeeded")
	}
	if _, err := topo.AddHost(ctx, "nope", "z"); err == nil {
		t.Error("AddHost on a missing node succeeded")
	}
	if _, err := topo.AddNode(ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	d, err := topo.AddHost(ctx, "n2", "d")
	if err != nil {
		t.Fatal(err)
	}
	serveSource(t, d, "8080")
	if got := seenAs(t, topo.Host("a"), d); got != topo.Host("a").Addr {
		t.Errorf("a -> d seen as %s", got)
	}

	// A later process picks the topology up from its saved state.
	again, err := topology.Restore(topo.State())
	if err != nil {
		t.Fatal(err)
	}
	if got := again.Host("d"); got == nil || got.Addr != d.Addr || got.Node != "n2" {
		t.Fatalf("restored host d = %+v", got)
	}
	if err := again.RemoveHost(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if netns.Exists(d.NS.Name) {
		t.Errorf("namespace %s still exists after RemoveHost", d.NS.Name)
	}
	// The old listener still holds the removed namespace open; the name and
	// address must be reusable at once all the same.
	d2, err := again.AddHost(ctx, "n2", "d")
	if err != nil {
		t.Fatalf("re-adding d while the old namespace is still held: %v", err)
	}
	if d2.Addr != d.Addr {
		t.Fatalf("re-added d got %s, want the freed %s", d2.Addr, d.Addr)
	}
	serveSource(t, d2, "8081")
	c, err := topo.Host("a").NS.Dial("tcp", netip.AddrPortFrom(d2.Addr, 8081).String(), 2*time.Second)
	if err != nil {
		t.Fatalf("a -> re-added d: %v", err)
	}
	c.Close()
	if err := again.RemoveHost(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if err := again.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if left, _ := netns.List(prefix + "-"); len(left) != 0 {
		t.Errorf("namespaces left after Destroy: %v", left)
	}
	if _, err := topology.Restore(topo.State()); err == nil {
		t.Error("Restore of a destroyed topology succeeded")
	}
}

func TestFailedBuildCleansUp(t *testing.T) {
	netnstest.RequireNamespaces(t)
	prefix := netnstest.Prefix()
	t.Cleanup(func() { _ = topology.DestroyPrefix(context.Background(), prefix) })
	// Cancel the build as soon as its router exists: it then fails halfway,
	// with some namespaces made and others not.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		for ctx.Err() == nil && !netns.Exists(topology.RouterName(prefix)) {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	hosts := make([]string, 30)
	for i := range hosts {
		hosts[i] = fmt.Sprintf("h%d", i)
	}
	_, err := topology.Build(ctx, topology.Spec{Prefix: prefix, Nodes: []topology.NodeSpec{{Name: "n1", Hosts: hosts}}})
	if err == nil {
		t.Fatal("Build succeeded although it was cancelled")
	}
	if left, _ := netns.List(prefix + "-"); len(left) != 0 {
		t.Errorf("namespaces left after a failed build: %v", left)
	}
}

func TestBuildRefusesExistingPrefix(t *testing.T) {
	netnstest.RequireNamespaces(t)
	prefix := netnstest.Prefix()
	netnstest.NewNS(t, prefix+"-a")
	_, err := topology.Build(context.Background(), topology.Spec{Prefix: prefix, Nodes: []topology.NodeSpec{{Name: "n1", Hosts: []string{"b"}}}})
	if err == nil || !strings.Contains(err.Error(), "already exist") {
		t.Fatalf("Build over an existing namespace: err %v", err)
	}
	if left, _ := netns.List(prefix + "-"); len(left) != 1 {
		t.Errorf("namespaces after the refused build: %v (want only %s-a)", left, prefix)
	}
}
