package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"
)

// Answer is what a lab server writes on every connection: the pod's
// "namespace/name" and a newline. A probe that reads it knows the data path
// works end to end and that it reached the pod it meant to.
func Answer(ref string) string { return ref + "\n" }

// Serve listens on every port (TCP, all addresses of the current network
// namespace) and answers each connection with Answer(ref), until ctx ends.
// ready, if not nil, is called once every listener is open.
func Serve(ctx context.Context, ref string, ports []uint16, ready func()) error {
	if len(ports) == 0 {
		return errors.New("serve: no ports")
	}
	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	var lc net.ListenConfig
	for _, p := range ports {
		l, err := lc.Listen(ctx, "tcp", net.JoinHostPort("", strconv.Itoa(int(p))))
		if err != nil {
			closeAll()
			return fmt.Errorf("serve %s: %w", ref, err)
		}
		listeners = append(listeners, l)
	}
	if ready != nil {
		ready()
	}
	answer := []byte(Answer(ref))
	var wg sync.WaitGroup
	for _, l := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
					_, _ = c.Write(answer)
				}()
			}
		}()
	}
	<-ctx.Done()
	closeAll()
	wg.Wait()
	return nil
}
