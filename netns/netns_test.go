package netns_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
)

func TestVethDialAcrossNamespaces(t *testing.T) {
	netnstest.RequireNamespaces(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := netnstest.Prefix()
	a := netnstest.NewNS(t, p+"a")
	b := netnstest.NewNS(t, p+"b")
	if err := netns.Veth(ctx, a, p+"a0", b, p+"b0"); err != nil {
		t.Fatal(err)
	}
	if err := a.Exec(ctx, "ip", "addr", "add", "198.18.0.1/30", "dev", p+"a0"); err != nil {
		t.Fatal(err)
	}
	if err := b.Exec(ctx, "ip", "addr", "add", "198.18.0.2/30", "dev", p+"b0"); err != nil {
		t.Fatal(err)
	}
	l, err := b.Listen("tcp4", "198.18.0.2:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := a.Dial("tcp4", "198.18.0.2:7000", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, _ := io.ReadAll(c)
	if string(got) != "hi" {
		t.Fatalf("got %q", got)
	}
	// The host namespace must not see the listener.
	if _, err := netns.Open(p + "missing"); err == nil {
		t.Fatal("opened a namespace that does not exist")
	}
	if names, _ := netns.List(p); len(names) != 2 {
		t.Fatalf("List(%s) = %v", p, names)
	}
}
