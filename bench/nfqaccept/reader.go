// Package nfqaccept is the floor any NFQUEUE design pays: the same handshake
// packets Bireme queues (SYN, SYN-ACK, the handshake-completing ACK) go to
// userspace and come back with an accept verdict, without any token, parsing
// beyond the TCP flags, or policy. The benchmark installs Bireme's own rules
// (package supervisor) and runs one reader process per node, like one
// enforcer per node.
//
// The reader moves a connection through the supervisor's marks the way the
// enforcer does, by the packet mark that the rules save to the connection:
// an accepted SYN-ACK makes the connection Pending (its completing ACK still
// goes through the queue), an accepted ACK makes it Authorized (everything
// else passes in the kernel): six queue trips per connection. With
// FourTrips, every accepted SYN and SYN-ACK makes it Authorized at once, as
// Bireme's two-message handshake does (the server at the SYN, the client at
// the SYN-ACK), so the ACK is never queued: four trips.
package nfqaccept

import (
	"context"
	"errors"
	"fmt"
	"os"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
)

// Config says which queue to read and in which namespace.
type Config struct {
	// NetNSPath is the namespace holding the queue, e.g. /run/netns/NAME.
	NetNSPath string
	// Queue is the NFQUEUE number the rules send packets to.
	Queue uint16
	// Pending and Authorized are the supervisor's mark bits.
	Pending, Authorized uint32
	// FourTrips marks connections Authorized at their SYN and SYN-ACK
	// verdicts: the floor of the two-message handshake.
	FourTrips bool
}

// Run reads the queue until ctx ends. ready is called once the queue is bound
// (packets sent to it from then on reach this reader).
func Run(ctx context.Context, cfg Config, ready func()) error {
	f, err := os.Open(cfg.NetNSPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", cfg.NetNSPath, err)
	}
	defer f.Close()
	nf, err := nfqueue.Open(&nfqueue.Config{
		NetNS:        int(f.Fd()),
		NfQueue:      cfg.Queue,
		MaxPacketLen: 128, // IP and TCP headers are all a flags check needs
		MaxQueueLen:  4096,
		Copymode:     nfqueue.NfQnlCopyPacket,
	})
	if err != nil {
		return fmt.Errorf("open queue %d in %s: %w", cfg.Queue, cfg.NetNSPath, err)
	}
	defer nf.Close()
	if err := nf.SetOption(netlink.NoENOBUFS, true); err != nil {
		return fmt.Errorf("queue %d: set NoENOBUFS: %w", cfg.Queue, err)
	}
	var verdictErr error
	hook := func(a nfqueue.Attribute) int {
		if a.PacketID == nil {
			return 0
		}
		var pkt []byte
		if a.Payload != nil {
			pkt = *a.Payload
		}
		var err error
		switch stage := Stage(pkt); {
		case cfg.FourTrips:
			err = nf.SetVerdictWithMark(*a.PacketID, nfqueue.NfAccept, int(cfg.Authorized))
		case stage == StageSYNACK:
			err = nf.SetVerdictWithMark(*a.PacketID, nfqueue.NfAccept, int(cfg.Pending))
		case stage == StageACK:
			err = nf.SetVerdictWithMark(*a.PacketID, nfqueue.NfAccept, int(cfg.Authorized))
		default:
			err = nf.SetVerdict(*a.PacketID, nfqueue.NfAccept)
		}
		if err != nil && verdictErr == nil {
			verdictErr = err
		}
		return 0
	}
	errs := make(chan error, 1)
	onErr := func(err error) int {
		if ctx.Err() != nil {
			return 1
		}
		var opErr *netlink.OpError
		if errors.As(err, &opErr) && (opErr.Timeout() || opErr.Temporary()) {
			return 0
		}
		select {
		case errs <- err:
		default:
		}
		return 1
	}
	if err := nf.RegisterWithErrorFunc(ctx, hook, onErr); err != nil {
		return fmt.Errorf("register queue %d: %w", cfg.Queue, err)
	}
	ready()
	select {
	case <-ctx.Done():
	case err := <-errs:
		return fmt.Errorf("read queue %d: %w", cfg.Queue, err)
	}
	if verdictErr != nil {
		return fmt.Errorf("queue %d: verdict: %w", cfg.Queue, verdictErr)
	}
	return nil
}

// Handshake stages of a queued packet.
const (
	StageOther  = iota // SYN, or anything unparsable: accepted as is
	StageSYNACK        // SYN and ACK set
	StageACK           // ACK set, SYN and RST clear: the handshake-completing ACK
)

// Stage classifies pkt (an IPv4 or IPv6 packet) by its TCP flags. The rules
// only queue SYNs, SYN-ACKs and packets of Pending connections in the
// original direction, so an ACK here is the one that completes a handshake.
func Stage(pkt []byte) int {
	flags, ok := tcpFlags(pkt)
	switch {
	case !ok || flags&flagRST != 0:
		return StageOther
	case flags&(flagSYN|flagACK) == flagSYN|flagACK:
		return StageSYNACK
	case flags&(flagSYN|flagACK) == flagACK:
		return StageACK
	default:
		return StageOther
	}
}

const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagACK = 0x10
)

// tcpFlags returns the TCP flags byte of pkt.
func tcpFlags(pkt []byte) (byte, bool) {
	if len(pkt) < 1 {
		return 0, false
	}
	var off int
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 || pkt[9] != 6 {
			return 0, false
		}
		off = int(pkt[0]&0x0f) * 4
		if off < 20 {
			return 0, false
		}
	case 6:
		// Extension headers are not followed: Bireme's rules only queue
		// TCP, and the benchmark's packets carry none.
		if len(pkt) < 40 || pkt[6] != 6 {
			return 0, false
		}
		off = 40
	default:
		return 0, false
	}
	if len(pkt) < off+14 {
		return 0, false
	}
	return pkt[off+13], true
}
