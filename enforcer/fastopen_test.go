package enforcer

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/bireme/bireme/netns"
)

// Linux socket options for TCP Fast Open (linux/tcp.h); the syscall
// package does not name them.
const (
	tcpFastOpen        = 23  // TCP_FASTOPEN: the listener's Fast Open queue length
	tcpFastOpenConnect = 30  // TCP_FASTOPEN_CONNECT: the first write goes in the SYN
	fastOpenBoth       = "3" // net.ipv4.tcp_fastopen: client and server enabled
)

// setIntOption returns a Control function for net.Dialer and
// net.ListenConfig that sets a TCP socket option.
func setIntOption(opt, value int) func(_, _ string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, opt, value)
		})
		return errors.Join(err, serr)
	}
}

// fastOpenSend connects from ns to dst with TCP Fast Open and writes data:
// in the SYN when the kernel has a cookie for dst, else (it then asks for
// one) once the handshake is done.
func fastOpenSend(ctx context.Context, ns *netns.NS, dst string, data []byte) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Control: setIntOption(tcpFastOpenConnect, 1)}
		var err error
		c, err = d.DialContext(ctx, "tcp4", dst) // returns before the SYN is even sent
		return err
	})
	if err != nil {
		return nil, err
	}
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(data); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// A Fast Open client gets nothing to the server application before its
// proof: with the handshake's final ACK held back, the server's accept()
// returns nothing, though the client holds a cookie the server would honour
// and sends data in its SYN. Stripping the Fast Open option and the data
// behind the token (strip) is what keeps the server's kernel from making a
// socket at the SYN. Once the ACK may pass, the connection completes and
// the data arrives, after the proof.
func TestFastOpenWaitsForProof(t *testing.T) {
	l := newLab(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, ns := range []*netns.NS{l.web, l.client} {
		if err := ns.Exec(ctx, "sysctl", "-q", "-w", "net.ipv4.tcp_fastopen="+fastOpenBoth); err != nil {
			t.Fatal(err)
		}
	}
	var ln *net.TCPListener
	err := l.web.Do(func() error {
		lc := net.ListenConfig{Control: setIntOption(tcpFastOpen, 16)}
		l, err := lc.Listen(ctx, "tcp4", "198.18.7.1:8080")
		if err == nil {
			ln = l.(*net.TCPListener)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const dst = "198.18.7.1:8080"
	// accept waits for a connection and its first bytes. errNoConnection
	// says that accept() itself got nothing.
	errNoConnection := errors.New("no connection accepted")
	accept := func(wait time.Duration) (string, error) {
		_ = ln.SetDeadline(time.Now().Add(wait))
		c, err := ln.AcceptTCP()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return "", errNoConnection
		} else if err != nil {
			return "", err
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}

	// A first connection, which on a path that passes Fast Open options
	// gets the client a cookie.
	first, err := fastOpenSend(ctx, l.client, dst, []byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := accept(10 * time.Second); err != nil || got != "first" {
		t.Fatalf("first connection: %q, %v", got, err)
	}
	first.Close()

	// Hold back the client's ACKs (and data) before they reach the
	// server's queue: its handshake cannot complete.
	holdACK := []string{"-w", "-t", "raw", "-I", "PREROUTING", "-p", "tcp", "-s", "198.18.7.2",
		"--tcp-flags", "SYN,ACK,RST", "ACK", "-j", "DROP"}
	if err := l.web.Exec(ctx, "iptables", holdACK...); err != nil {
		t.Fatal(err)
	}
	second, err := fastOpenSend(ctx, l.client, dst, []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	// Bounded wait for what must not happen: the server's kernel answers
	// the SYN within milliseconds, and with Fast Open would hand over the
	// socket at once.
	if got, err := accept(2 * time.Second); err != errNoConnection {
		t.Fatalf("the server application got a connection (read %q, %v) before the client's proof", got, err)
	}

	holdACK[3] = "-D"
	if err := l.web.Exec(ctx, "iptables", holdACK...); err != nil {
		t.Fatal(err)
	}
	// The server retransmits its SYN-ACK, the client's ACK carries the
	// proof again, and the client resends the data the SYN could not hold.
	if got, err := accept(15 * time.Second); err != nil || got != "secret" {
		t.Fatalf("after the proof: %q, %v", got, err)
	}
}
