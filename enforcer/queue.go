package enforcer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Netfilter hooks a queued packet can come from (NF_INET_*).
const (
	hookLocalIn  = 1
	hookLocalOut = 3
)

// queue is one NFQUEUE queue in one workload's namespace. The library
// delivers its packets one at a time on one goroutine, so the scratch
// buffer is reused without locking.
type queue struct {
	e   *Enforcer
	wl  *workload
	num uint16
	nfq *nfqueue.Nfqueue
	buf []byte // rewritten packets are built here
}

// verdict is what to tell the kernel about one packet.
type verdict struct {
	accept bool
	packet []byte // replacement packet, nil to keep the original
	mark   uint32 // mark bits to set (Authorized or Pending), 0 for none
}

var drop = verdict{}

// openQueue opens queue num inside wl's namespace and starts reading it.
func (e *Enforcer) openQueue(ctx context.Context, wl *workload, num uint16) (*queue, error) {
	f, err := os.Open(wl.netns)
	if err != nil {
		return nil, fmt.Errorf("open netns: %w", err)
	}
	defer f.Close() // the netlink socket keeps its namespace
	nfq, err := nfqueue.Open(&nfqueue.Config{
		NetNS:        int(f.Fd()),
		NfQueue:      num,
		MaxPacketLen: 0xffff,
		MaxQueueLen:  4096,
		Copymode:     nfqueue.NfQnlCopyPacket,
		AfFamily:     unix.AF_UNSPEC,
		// No NfQaCfgFlagFailOpen: a full queue drops, it never lets a
		// handshake through unchecked.
	})
	if err != nil {
		return nil, fmt.Errorf("open nfqueue: %w", err)
	}
	// Under a burst, losing a notification must not stop the reader.
	_ = nfq.SetOption(netlink.NoENOBUFS, true)
	q := &queue{e: e, wl: wl, num: num, nfq: nfq, buf: make([]byte, 0x10000+tokenOptSpace)}
	err = nfq.RegisterWithErrorFunc(ctx, q.handle, func(err error) int {
		if ctx.Err() != nil {
			return 1
		}
		var opErr *netlink.OpError
		if errors.As(err, &opErr) && (opErr.Timeout() || opErr.Temporary()) {
			return 0
		}
		e.log.Warn("queue read error", "netns", wl.netns, "queue", num, "err", err)
		return 0
	})
	if err != nil {
		nfq.Close()
		return nil, fmt.Errorf("register nfqueue: %w", err)
	}
	return q, nil
}

func (q *queue) close() error {
	if err := q.nfq.Close(); err != nil {
		return fmt.Errorf("close queue %d of %s: %w", q.num, q.wl.netns, err)
	}
	return nil
}

// handle is called by the library for every queued packet: it decides
// and sends the verdict. A panic while deciding drops the packet and is
// logged; it never takes the enforcer down.
func (q *queue) handle(a nfqueue.Attribute) int {
	if a.PacketID == nil {
		return 0
	}
	id := *a.PacketID
	v := drop
	func() {
		defer func() {
			if r := recover(); r != nil {
				q.e.log.Error("panic on packet, dropped", "netns", q.wl.netns, "panic", r, "stack", string(debug.Stack()))
				v = drop
			}
		}()
		if a.Payload == nil || a.Hook == nil {
			return
		}
		v = q.process(*a.Payload, *a.Hook == hookLocalOut)
	}()
	var err error
	switch {
	case !v.accept:
		err = q.nfq.SetVerdict(id, nfqueue.NfDrop)
	case v.packet == nil && v.mark == 0:
		err = q.nfq.SetVerdict(id, nfqueue.NfAccept)
	default:
		var opts [2]nfqueue.VerdictOption
		o := opts[:0]
		if v.mark != 0 {
			var old uint32
			if a.Mark != nil {
				old = *a.Mark
			}
			// Keep the packet's other mark bits; BIREME-SAVE copies
			// ours to the connection.
			o = append(o, nfqueue.WithMark(old&^q.e.cfg.Rules.Mask()|v.mark))
		}
		if v.packet != nil {
			o = append(o, nfqueue.WithAlteredPacket(v.packet))
		}
		err = q.nfq.SetVerdictWithOption(id, nfqueue.NfAccept, o...)
	}
	if err != nil {
		q.e.log.Warn("verdict failed", "netns", q.wl.netns, "queue", q.num, "err", err)
	}
	return 0
}

// process decides one packet. Outgoing packets leave the workload
// (egress.go); incoming ones arrive at it (ingress.go).
func (q *queue) process(b []byte, outgoing bool) verdict {
	var p packet
	if err := parsePacket(b, &p); err != nil {
		q.e.log.Debug("unparsable packet dropped", "netns", q.wl.netns, "err", err)
		return drop
	}
	if outgoing {
		return q.egress(&p)
	}
	return q.ingress(&p)
}
