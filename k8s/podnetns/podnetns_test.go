package podnetns

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
)

func TestLookup(t *testing.T) {
	one := netip.MustParseAddr("198.18.0.10")
	two := netip.MustParseAddr("198.18.0.11")
	snap := NewSnapshot(map[netip.Addr][]string{
		one: {"/run/netns/a"},
		two: {"/run/netns/b", "/proc/42/ns/net"},
	})
	if got, err := snap.Lookup(one); err != nil || got != "/run/netns/a" {
		t.Errorf("Lookup(%s) = %q, %v; want /run/netns/a", one, got, err)
	}
	// An IPv4 address written as IPv4-in-IPv6 (as some APIs hand it) is the same address.
	if got, err := snap.Lookup(netip.AddrFrom16(one.As16())); err != nil || got != "/run/netns/a" {
		t.Errorf("Lookup(mapped %s) = %q, %v; want /run/netns/a", one, got, err)
	}
	if _, err := snap.Lookup(two); !errors.Is(err, ErrAmbiguous) {
		t.Errorf("Lookup(%s) error = %v, want ErrAmbiguous", two, err)
	}
	if _, err := snap.Lookup(netip.MustParseAddr("198.18.0.12")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup(unknown) error = %v, want ErrNotFound", err)
	}
}

// randomSubnet returns 198.18.X.0/24 with X in 128..254: the lab's
// topologies (which other tests may run at the same time) number their
// nodes' subnets from 1, so a scan of the machine sees no one else's copy
// of these addresses.
func randomSubnet() string {
	var b [1]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("198.18.%d", 128+int(b[0])%127)
}

func addAddr(t *testing.T, ns *netns.NS, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A veth pair with both ends inside: the "dummy" link type needs a
	// kernel module that is not always there.
	for _, args := range [][]string{
		{"link", "add", "p0", "type", "veth", "peer", "name", "p1"},
		{"addr", "add", addr + "/32", "dev", "p0"},
		{"link", "set", "p0", "up"},
		{"link", "set", "p1", "up"},
	} {
		if err := ns.Exec(ctx, "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
}

func TestScanFindsNamedNamespaces(t *testing.T) {
	netnstest.RequireNamespaces(t)
	prefix, subnet := netnstest.Prefix(), randomSubnet()
	a := netnstest.NewNS(t, prefix+"-a")
	b := netnstest.NewNS(t, prefix+"-b")
	c := netnstest.NewNS(t, prefix+"-c")
	addAddr(t, a, subnet+".2")
	addAddr(t, b, subnet+".3")
	addAddr(t, c, subnet+".3") // b's address again

	snap, err := Scanner{}.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := snap.Lookup(netip.MustParseAddr(subnet + ".2")); err != nil || got != a.Path() {
		t.Errorf("Lookup(%s.2) = %q, %v; want %s", subnet, got, err, a.Path())
	}
	_, err = snap.Lookup(netip.MustParseAddr(subnet + ".3"))
	if !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), b.Path()) || !strings.Contains(err.Error(), c.Path()) {
		t.Errorf("Lookup(%s.3) error = %v; want ErrAmbiguous naming %s and %s", subnet, err, b.Path(), c.Path())
	}
	if _, err := snap.Lookup(netip.MustParseAddr(subnet + ".4")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup(%s.4) error = %v; want ErrNotFound", subnet, err)
	}
}

// A namespace with no name, kept alive only by a process in it (as a
// container runtime that does not use /run/netns leaves it), is found
// through /proc/PID/ns/net.
func TestScanFindsProcessNamespaces(t *testing.T) {
	netnstest.RequireNamespaces(t)
	prefix, subnet := netnstest.Prefix(), randomSubnet()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := netnstest.NewNS(t, prefix+"-p")
	addAddr(t, ns, subnet+".5")
	sleeper := ns.Command(ctx, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() })
	// "ip netns exec" enters the namespace after it started: wait for that
	// before taking the name away.
	procNS := fmt.Sprintf("/proc/%d/ns/net", sleeper.Process.Pid)
	for k, err := keyOf(procNS); err != nil || k != mustKey(t, ns.Path()); k, err = keyOf(procNS) {
		if ctx.Err() != nil {
			t.Fatalf("process %d never entered %s", sleeper.Process.Pid, ns.Path())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Unname it: only the process holds the namespace now. (NewNS's
	// cleanup finds it gone and the process is killed above.)
	if err := netns.Cmd(ctx, "ip", "netns", "delete", ns.Name); err != nil {
		t.Fatal(err)
	}
	if err := netns.Cmd(ctx, "ip", "netns", "add", ns.Name); err != nil {
		t.Fatal(err) // a fresh empty namespace under the name, for NewNS's cleanup to remove
	}

	snap, err := Scanner{}.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := snap.Lookup(netip.MustParseAddr(subnet + ".5"))
	if err != nil || got != procNS {
		t.Errorf("Lookup(%s.5) = %q, %v; want %s", subnet, got, err, procNS)
	}
}

// The scanner's own namespace (the host's, for the agent) is never a pod's.
func TestScanSkipsOwnNamespace(t *testing.T) {
	netnstest.RequireNamespaces(t)
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	own, err := keyOf("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	snap, err := Scanner{}.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, ia := range addrs {
		ipNet, ok := ia.(*net.IPNet)
		if !ok {
			continue
		}
		a, _ := netip.AddrFromSlice(ipNet.IP)
		if a = a.Unmap(); a.IsLoopback() || a.IsLinkLocalUnicast() {
			continue
		}
		checked++
		if path, err := snap.Lookup(a); err == nil && mustKey(t, path) == own {
			t.Errorf("host address %s found in %s: the scanner's own namespace must be skipped", a, path)
		}
	}
	if checked == 0 {
		t.Skip("skipping: this machine's namespace has no address but loopback and link-local to check")
	}
}

func mustKey(t *testing.T, path string) nsKey {
	t.Helper()
	k, err := keyOf(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestVerify(t *testing.T) {
	netnstest.RequireNamespaces(t)
	prefix, subnet := netnstest.Prefix(), randomSubnet()
	a := netnstest.NewNS(t, prefix+"-v")
	addAddr(t, a, subnet+".2")
	path := a.Path()

	if err := (Scanner{}).Verify(path, netip.MustParseAddr(subnet+".2")); err != nil {
		t.Errorf("Verify(namespace holding the address) = %v, want nil", err)
	}
	if err := (Scanner{}).Verify(path, netip.MustParseAddr(subnet+".9")); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Verify(another address) = %v, want ErrNotHeld", err)
	}
	if err := (Scanner{}).Verify("/proc/self/ns/net", netip.MustParseAddr("127.0.0.1")); err == nil || !strings.Contains(err.Error(), "own network namespace") {
		t.Errorf("Verify(own namespace) = %v, want a refusal of the node's namespace", err)
	}
	if err := (Scanner{}).Verify(path+"-gone", netip.MustParseAddr(subnet+".2")); err == nil {
		t.Error("Verify(missing path) = nil, want an error")
	}
}
