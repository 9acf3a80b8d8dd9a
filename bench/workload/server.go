package workload

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Bounds on one served connection, so a stuck client cannot pin a goroutine
// for the rest of the run.
const (
	echoDeadline = 30 * time.Second
	bulkDeadline = 10 * time.Minute
)

// Serve answers connections on ln until ctx ends, then closes ln and waits
// for the connections in progress. With tlsConf non-nil every connection is
// first taken through a TLS handshake.
func Serve(ctx context.Context, ln net.Listener, tlsConf *tls.Config) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			if tlsConf != nil {
				c = tls.Server(c, tlsConf)
			}
			_ = handle(c)
		}()
	}
}

// handle serves one connection; errors only end that connection.
func handle(c net.Conn) error {
	if err := c.SetDeadline(time.Now().Add(echoDeadline)); err != nil {
		return err
	}
	var req [1]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return err
	}
	switch req[0] {
	case ReqEcho:
		if _, err := c.Write([]byte{RespEcho}); err != nil {
			return err
		}
		// Let the client close first, as a client of a request/response
		// protocol does: the TIME_WAIT state then stays on the client side,
		// whose port reuse the benchmark configures.
		_, err := c.Read(req[:])
		if err == io.EOF {
			return nil
		}
		return err
	case ReqBulk:
		if err := c.SetDeadline(time.Now().Add(bulkDeadline)); err != nil {
			return err
		}
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return err
		}
		n := int64(binary.BigEndian.Uint64(hdr[:]))
		if _, err := io.CopyN(io.Discard, c, n); err != nil {
			return fmt.Errorf("bulk: %w", err)
		}
		_, err := c.Write([]byte{RespBulk})
		return err
	default:
		return errors.New("unknown request")
	}
}
