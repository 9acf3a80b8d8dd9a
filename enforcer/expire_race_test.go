package enforcer

import (
	"sync"
	"testing"
	"time"
)

// TestExpireRacesNoHandshake runs the cleanup goroutine's expire while the
// queue goroutine completes handshakes, as the enforcer does. It finds
// nothing without the race detector: run it with -race, where it failed
// when the server's ACK set conn fields that expire read without a common
// lock.
func TestExpireRacesNoHandshake(t *testing.T) {
	p := newPair(t, 0)
	later := time.Now().Add(p.e.cfg.HandshakeTimeout + time.Second)
	done := make(chan struct{})
	var cleanup sync.WaitGroup
	cleanup.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
				p.e.expire(p.srv.wl, later)
			}
		}
	})
	for port := range uint16(300) {
		// Whether the handshake survives the cleanup is up to timing;
		// what matters is that the two goroutines touch the same conns.
		ack := p.proofACK(t, 1000+port)
		if ack.packet != nil {
			pass(p.srv, ack.packet, false)
		}
	}
	close(done)
	cleanup.Wait()
}
