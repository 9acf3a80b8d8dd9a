package enforcer

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/netns"
)

// TestServerAuthorizedAfterACK checks the server side's two-step
// authorization: the ACK that carries a valid proof passes still Pending,
// and the enforcer then marks the connection Authorized in conntrack while
// both sides are still silent, so a client that stays silent is not left
// Pending (where it would depend on the handshake table, which forgets
// after HandshakeTimeout); then the server speaks first and is heard.
func TestServerAuthorizedAfterACK(t *testing.T) {
	l := newLab(t, 1)
	speak := make(chan struct{})
	serveWith(t, l.web, "198.18.7.1:8080", func(c net.Conn) {
		select {
		case <-speak:
		case <-time.After(10 * time.Second):
		}
		_, _ = c.Write([]byte("hello from the server\n"))
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.Copy(io.Discard, c)
	})

	port := 30000 + int(time.Now().UnixNano()%10000)
	var c net.Conn
	err := l.client.Do(func() error {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(fmt.Sprintf("198.18.7.2:%d", port)))}
		var err error
		c, err = d.Dial("tcp", "198.18.7.1:8080")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Nobody has sent a byte: only the enforcer's conntrack update can
	// have made the connection Authorized.
	auth, mask := l.sup.Layout().Authorized, l.sup.Layout().Mask()
	var marks []uint32
	var out []byte
	for deadline := time.Now().Add(2 * time.Second); ; {
		marks, out = conntrackMarks(t, l.web, port)
		if len(marks) == 1 && marks[0]&mask == auth {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server conntrack marks for the silent connection = %#x, want exactly one entry with our bits = Authorized (%#x)\n%s", marks, auth, out)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The server speaks first; the client has sent nothing but the ACK.
	close(speak)
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "hello") {
		t.Fatalf("client read %q, %v: the server's first bytes did not arrive", buf[:n], err)
	}
}

// conntrackMarks lists the marks of ns's conntrack entries of TCP
// connections from source port port, with conntrack's output for
// failure messages.
func conntrackMarks(t *testing.T, ns *netns.NS, port int) ([]uint32, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := ns.Output(ctx, "conntrack", "-L", "-p", "tcp", "--orig-port-src", fmt.Sprint(port))
	if err != nil {
		t.Fatalf("conntrack -L: %v", err)
	}
	var marks []uint32
	for _, f := range strings.Fields(string(out)) {
		var m uint32
		if _, err := fmt.Sscanf(f, "mark=%d", &m); err == nil {
			marks = append(marks, m)
		}
	}
	return marks, out
}
