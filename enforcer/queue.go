package enforcer

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"
)

// Netfilter hooks a queued packet can come from (NF_INET_*).
const (
	hookLocalIn  = 1
	hookLocalOut = 3
)

// queue is one NFQUEUE queue in one workload's namespace. One goroutine
// reads it (nfqueue.go) and decides its packets one at a time, so the
// scratch buffer is reused without locking.
type queue struct {
	e    *Enforcer
	wl   *workload
	num  uint16
	sock *nfqSocket
	done chan struct{} // closed when the reader has returned
	buf  []byte        // rewritten packets are built here
}

// verdict is what to tell the kernel about one packet.
type verdict struct {
	accept bool
	packet []byte // replacement packet, nil to keep the original
	mark   uint32 // mark bits to set (Authorized or Pending), 0 for none
	// authorize asks to mark the connection key (original direction)
	// Authorized in conntrack once the verdict has been given: see
	// ingressACK for why the server's ACK cannot carry that mark itself.
	// A value, not a pointer, so no packet's key escapes to the heap.
	authorize bool
	key       connKey
	// hold keeps the packet without a verdict until the handshake of key
	// decides (see conn.held); dropHeld drops what was held for key.
	hold     bool
	dropHeld bool
}

var drop = verdict{}

// openQueue opens queue num inside wl's namespace and starts reading it
// until ctx ends or the queue is closed.
func (e *Enforcer) openQueue(ctx context.Context, wl *workload, num uint16) (*queue, error) {
	sock, err := openNFQ(wl.netns, num)
	if err != nil {
		return nil, err
	}
	q := &queue{e: e, wl: wl, num: num, sock: sock, done: make(chan struct{}),
		buf: make([]byte, 0x10000+tokenOptSpace)}
	go func() {
		defer close(q.done)
		q.sock.serve(q.handle, func(err error) {
			e.log.Warn("queue error", "netns", wl.netns, "queue", num, "err", err)
		})
	}()
	go func() {
		select {
		case <-ctx.Done():
			_ = q.sock.close()
		case <-q.done:
		}
	}()
	return q, nil
}

func (q *queue) close() error {
	err := q.sock.close()
	<-q.done
	if err != nil {
		return fmt.Errorf("close queue %d of %s: %w", q.num, q.wl.netns, err)
	}
	return nil
}

// handle is called by the reader for every queued packet: it decides and
// sends the verdict. A panic while deciding drops the packet and is
// logged; it never takes the enforcer down.
func (q *queue) handle(a *queuedPacket) {
	v := drop
	func() {
		defer func() {
			if r := recover(); r != nil {
				q.e.log.Error("panic on packet, dropped", "netns", q.wl.netns, "panic", r, "stack", string(debug.Stack()))
				v = drop
			}
		}()
		if a.payload == nil {
			return
		}
		v = q.process(a.payload, a.hook == hookLocalOut)
	}()
	if v.hold {
		if q.wl.conns.hold(v.key, heldPacket{q: q, id: a.id, mark: a.mark}) {
			return // the verdict comes with the handshake's (heldPacket.release)
		}
		v = drop
	}
	if !v.authorize && !v.dropHeld {
		// Written with the other verdicts of this read (nfqSocket.serve).
		_ = q.giveLater(a.id, a.mark, v.accept, v.mark, v.packet)
		return
	}
	// What follows needs the kernel to have processed this verdict.
	if q.give(a.id, a.mark, v.accept, v.mark, v.packet) != nil {
		return
	}
	if v.authorize && q.wl.marker != nil {
		// The kernel processed the accepted packet inside the verdict
		// call, so the connection's socket exists by now.
		k := v.key
		if err := q.wl.marker.set(k.remote, k.local, q.e.cfg.Layout.Authorized); err != nil {
			// The connection stays Pending: its next packet from the
			// client is queued and authorized by ingressACK instead.
			q.e.log.Warn("authorize in conntrack failed", "netns", q.wl.netns, "err", err)
		}
	}
	if v.authorize || v.dropHeld {
		// After the ACK's own verdict, so that the held data reaches the
		// socket the ACK created.
		for _, p := range q.wl.conns.takeHeld(v.key) {
			p.release(v.authorize)
		}
	}
}

// give sends the verdict on packet id, queued with mark pktMark: accept,
// with our mark bits set to mark (0 leaves the mark alone) and the packet
// replaced when packet is not nil, or drop. It may run on any goroutine;
// verdicts queued by giveLater are written with it, before it.
func (q *queue) give(id, pktMark uint32, accept bool, mark uint32, packet []byte) error {
	return q.sendVerdict(id, pktMark, accept, mark, packet, false)
}

// giveLater is give for the reader: the verdict joins the batch the reader
// writes once it has decided every packet of its read.
func (q *queue) giveLater(id, pktMark uint32, accept bool, mark uint32, packet []byte) error {
	return q.sendVerdict(id, pktMark, accept, mark, packet, true)
}

func (q *queue) sendVerdict(id, pktMark uint32, accept bool, mark uint32, packet []byte, later bool) error {
	if mark != 0 {
		// Keep the packet's other mark bits; BIREME-SAVE copies ours to
		// the connection.
		mark |= pktMark &^ q.e.mask
	}
	var err error
	if later {
		err = q.sock.queueVerdict(id, accept, mark, mark != 0, packet)
	} else {
		err = q.sock.verdict(id, accept, mark, mark != 0, packet)
	}
	if err != nil && accept {
		// A packet without a verdict would wait in the kernel until the
		// socket closes: drop it instead (its sender retransmits).
		err = q.sock.verdict(id, false, 0, false, nil)
	}
	if err != nil && !q.sock.closed.Load() {
		q.e.log.Warn("verdict failed", "netns", q.wl.netns, "queue", q.num, "err", err)
	}
	return err
}

// release gives a held packet its verdict: accepted as Authorized (the
// handshake completed) or dropped.
func (p heldPacket) release(accept bool) {
	var mark uint32
	if accept {
		mark = p.q.e.cfg.Layout.Authorized
	}
	_ = p.q.give(p.id, p.mark, accept, mark, nil)
}

// process decides one packet. Outgoing packets leave the workload
// (egress.go); incoming ones arrive at it (ingress.go); non-TCP packets
// open a flow (nontcp.go).
func (q *queue) process(b []byte, outgoing bool) verdict {
	var start time.Time
	if q.e.cfg.OnStage != nil {
		start = time.Now()
	}
	var p packet
	if err := parsePacket(b, &p); err != nil {
		if err == errNotTCP {
			// Queued by the supervisor's non-TCP chains: the first
			// packet of a UDP, SCTP, ICMP or other flow (nontcp.go).
			v := q.newFlow(b, outgoing)
			q.timed("new", outgoing, start)
			return v
		}
		q.e.log.Debug("unparsable packet dropped", "netns", q.wl.netns, "err", err)
		return drop
	}
	var v verdict
	switch {
	case outgoing:
		v = q.egress(&p)
	case !q.checksumOK(&p): // see checksumOK for why only incoming packets
		return drop
	default:
		v = q.ingress(&p)
	}
	if !start.IsZero() {
		stage := stageACK
		if p.flags&flagSYN != 0 {
			stage = stageSYN
			if p.flags&flagACK != 0 {
				stage = stageSYNACK
			}
		}
		q.timed(stage, outgoing, start)
	}
	return v
}

// timed reports how long deciding a packet of stage took (Config.OnStage).
func (q *queue) timed(stage string, outgoing bool, start time.Time) {
	if !start.IsZero() {
		q.e.cfg.OnStage(stage, outgoing, time.Since(start))
	}
}
