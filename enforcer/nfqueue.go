package enforcer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bireme/bireme/netns"
)

// This file speaks the NFQUEUE netlink protocol directly (nfnetlink_queue,
// include/uapi/linux/netfilter/nfnetlink_queue.h). The generic library
// (go-nfqueue over mdlayher/netlink) allocated a receive buffer,
// attribute structs and verdict slices for every packet; a handshake
// crosses the queue up to six times before the server's application sees
// it. Here each queue has one receive and one verdict buffer, reused;
// attributes are parsed in place and a verdict is one write: no
// allocation per packet (docs/performance.md, change 1).
//
// The socket is non-blocking and its reader goroutine waits in the Go
// netpoller. A reader that blocks in recvfrom on its own thread was tried
// and was slower: with two CPUs (GOMAXPROCS 2) and one reader per workload
// namespace, the blocked readers held both Ps until the runtime's monitor
// took them back, which stalled every other goroutine for up to
// milliseconds.

// Netlink and nfnetlink_queue constants.
const (
	nfnlSubsysQueue = 3 // NFNL_SUBSYS_QUEUE

	nfqnlMsgPacket  = 0 // NFQNL_MSG_PACKET: kernel -> us
	nfqnlMsgVerdict = 1 // NFQNL_MSG_VERDICT: us -> kernel
	nfqnlMsgConfig  = 2 // NFQNL_MSG_CONFIG

	nfqaPacketHdr  = 1  // NFQA_PACKET_HDR: be32 id, be16 hw protocol, u8 hook
	nfqaVerdictHdr = 2  // NFQA_VERDICT_HDR: be32 verdict, be32 id
	nfqaMark       = 3  // NFQA_MARK: be32
	nfqaPayload    = 10 // NFQA_PAYLOAD: the packet from its network header

	nfqaCfgCmd      = 1 // NFQA_CFG_CMD: u8 command, u8 pad, be16 pf
	nfqaCfgParams   = 2 // NFQA_CFG_PARAMS: be32 copy range, u8 copy mode
	nfqaCfgQueueMax = 3 // NFQA_CFG_QUEUE_MAXLEN: be32

	nfqnlCfgCmdBind = 1 // NFQNL_CFG_CMD_BIND
	nfqnlCopyPacket = 2 // NFQNL_COPY_PACKET

	nfDrop   = 0 // NF_DROP
	nfAccept = 1 // NF_ACCEPT

	nlmsgHdrLen = 16 // struct nlmsghdr
	nfgenHdrLen = 4  // struct nfgenmsg
	nlaHdrLen   = 4  // struct nlattr
	nlaTypeMask = 0x3fff

	// queueMaxLen is how many packets the kernel holds for us before it
	// drops new ones (no fail-open flag: a full queue drops, it never lets a
	// handshake through unchecked).
	queueMaxLen = 4096
	// copyRange asks for whole packets.
	copyRange = 0xffff
	// configTimeout bounds the wait for the kernel to acknowledge a
	// configuration message.
	configTimeout = 5 * time.Second
	// socketBuffer is the receive buffer asked for: a burst of handshakes
	// waits here rather than being lost.
	socketBuffer = 4 << 20
)

// queuedPacket is one packet the kernel handed us. Its slices point into
// the reader's buffer and are only valid until the next read.
type queuedPacket struct {
	id      uint32
	hook    uint8
	mark    uint32
	hasMark bool
	payload []byte
}

// nfqSocket is a netlink socket bound to one NFQUEUE queue in one network
// namespace. One goroutine reads; verdict may be called from any (a packet
// held for its handshake is dropped by the expiry timer), and so may close.
type nfqSocket struct {
	file   *os.File // owns the descriptor; closing it wakes a waiting read
	raw    syscall.RawConn
	queue  uint16
	closed atomic.Bool
	seq    uint32

	rbuf []byte // receive buffer, reused

	wmu  sync.Mutex // guards wbuf and werr: a message is built and sent whole
	wbuf []byte     // verdict message buffer, reused
	werr error

	// The callbacks handed to raw, made once so a read or write does not
	// allocate a closure, and their results.
	readFn, writeFn func(fd uintptr) bool
	n               int
	err             error
}

// openNFQ opens a netlink socket inside the namespace at nsPath and binds
// it to queue num, copying whole packets.
func openNFQ(nsPath string, num uint16) (*nfqSocket, error) {
	f, err := os.Open(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns: %w", err)
	}
	defer f.Close() // the socket keeps its namespace
	fd := -1
	err = netns.DoFD(int(f.Fd()), func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := bindNFQ(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	s := &nfqSocket{file: os.NewFile(uintptr(fd), fmt.Sprintf("nfqueue-%d", num)), queue: num,
		rbuf: make([]byte, copyRange+4096), // the packet and its attributes
		wbuf: make([]byte, 0, nlmsgHdrLen+nfgenHdrLen+3*nlaHdrLen+8+4+copyRange+tokenOptSpace+4)}
	s.readFn, s.writeFn = s.doRead, s.doWrite
	if s.raw, err = s.file.SyscallConn(); err != nil {
		s.file.Close()
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := s.setup(); err != nil {
		s.file.Close()
		return nil, err
	}
	return s, nil
}

// bindNFQ prepares the raw socket: bound, not stopped by lost
// notifications, with room for a burst.
func bindNFQ(fd int) error {
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("bind netlink: %w", err)
	}
	// Under a burst, losing a notification must not stop the reader.
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1); err != nil {
		return fmt.Errorf("set NETLINK_NO_ENOBUFS: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
	}
	return nil
}

// setup binds the queue and sets its copy mode and length.
func (s *nfqSocket) setup() error {
	if err := s.file.SetReadDeadline(time.Now().Add(configTimeout)); err != nil {
		return fmt.Errorf("set read deadline: %w", err)
	}
	defer s.file.SetReadDeadline(time.Time{})
	var cmd [4]byte
	cmd[0] = nfqnlCfgCmdBind
	if err := s.config(nfqaCfgCmd, cmd[:]); err != nil {
		return fmt.Errorf("bind queue %d: %w", s.queue, err)
	}
	var params [5]byte
	binary.BigEndian.PutUint32(params[:4], copyRange)
	params[4] = nfqnlCopyPacket
	if err := s.config(nfqaCfgParams, params[:]); err != nil {
		return fmt.Errorf("set copy mode of queue %d: %w", s.queue, err)
	}
	var maxLen [4]byte
	binary.BigEndian.PutUint32(maxLen[:], queueMaxLen)
	if err := s.config(nfqaCfgQueueMax, maxLen[:]); err != nil {
		return fmt.Errorf("set length of queue %d: %w", s.queue, err)
	}
	return nil
}

// config sends one NFQNL_MSG_CONFIG with one attribute and waits for the
// kernel's acknowledgement. A packet that arrives meanwhile (the rules may
// already be in place when a restarted enforcer binds) is dropped: its
// sender retransmits, and nothing passes unchecked.
func (s *nfqSocket) config(attr uint16, data []byte) error {
	s.seq++
	b := s.startMsg(nfqnlMsgConfig, unix.NLM_F_REQUEST|unix.NLM_F_ACK, s.seq)
	b = appendAttr(b, attr, data)
	b = finishMsg(b)
	if err := s.send(b); err != nil {
		return fmt.Errorf("send config: %w", err)
	}
	for {
		n, err := s.recv()
		if err != nil {
			return fmt.Errorf("receive config answer: %w", err)
		}
		for msg := range messages(s.rbuf[:n]) {
			typ := binary.NativeEndian.Uint16(msg[4:6])
			seq := binary.NativeEndian.Uint32(msg[8:12])
			switch {
			case typ == unix.NLMSG_ERROR && seq == s.seq:
				if len(msg) < nlmsgHdrLen+4 {
					return errors.New("short netlink error message")
				}
				if code := int32(binary.NativeEndian.Uint32(msg[nlmsgHdrLen:])); code != 0 {
					return unix.Errno(-code)
				}
				return nil
			case typ == nfnlSubsysQueue<<8|nfqnlMsgPacket:
				if p, ok := parsePacketMsg(msg); ok {
					_ = s.verdict(p.id, false, 0, false, nil)
				}
			}
		}
	}
}

// recv reads one datagram into rbuf, waiting in the netpoller.
func (s *nfqSocket) recv() (int, error) {
	if err := s.raw.Read(s.readFn); err != nil {
		return 0, err
	}
	return s.n, s.err
}

func (s *nfqSocket) doRead(fd uintptr) bool {
	for {
		s.n, s.err = unix.Read(int(fd), s.rbuf) // recvfrom would allocate the sender's address
		switch s.err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait for the socket to be readable
		}
		return true
	}
}

// send writes one message to the kernel.
func (s *nfqSocket) send(b []byte) error {
	s.wbuf = b
	if err := s.raw.Write(s.writeFn); err != nil {
		return err
	}
	return s.werr
}

func (s *nfqSocket) doWrite(fd uintptr) bool {
	for {
		_, s.werr = unix.Write(int(fd), s.wbuf)
		switch s.werr {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		return true
	}
}

// serve reads packets until close, calling handle for each. handle must
// send the packet's verdict before it returns. Read errors are given to
// onErr.
func (s *nfqSocket) serve(handle func(*queuedPacket), onErr func(error)) {
	var p queuedPacket
	for !s.closed.Load() {
		n, err := s.recv()
		if err != nil {
			if s.closed.Load() || errors.Is(err, os.ErrClosed) {
				return
			}
			if errors.Is(err, unix.ENOBUFS) {
				continue
			}
			onErr(err)
			time.Sleep(10 * time.Millisecond) // never spin on a broken socket
			continue
		}
		for msg := range messages(s.rbuf[:n]) {
			if binary.NativeEndian.Uint16(msg[4:6]) != nfnlSubsysQueue<<8|nfqnlMsgPacket {
				continue // acknowledgements, errors of verdicts: nothing to do
			}
			var ok bool
			if p, ok = parsePacketMsg(msg); ok {
				handle(&p)
			}
		}
	}
}

// messages yields the netlink messages of one datagram, each at least a
// header long and cut to its stated length.
func messages(b []byte) func(yield func([]byte) bool) {
	return func(yield func([]byte) bool) {
		for len(b) >= nlmsgHdrLen {
			l := int(binary.NativeEndian.Uint32(b[0:4]))
			if l < nlmsgHdrLen || l > len(b) {
				return
			}
			if !yield(b[:l]) {
				return
			}
			l = align4(l)
			if l > len(b) {
				return
			}
			b = b[l:]
		}
	}
}

// parsePacketMsg reads the attributes of an NFQNL_MSG_PACKET. ok is false
// when the message has no packet header (no id to answer).
func parsePacketMsg(msg []byte) (p queuedPacket, ok bool) {
	if len(msg) < nlmsgHdrLen+nfgenHdrLen {
		return p, false
	}
	b := msg[nlmsgHdrLen+nfgenHdrLen:]
	for len(b) >= nlaHdrLen {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if l < nlaHdrLen || l > len(b) {
			break
		}
		v := b[nlaHdrLen:l]
		switch typ {
		case nfqaPacketHdr:
			if len(v) >= 7 {
				p.id = binary.BigEndian.Uint32(v[0:4])
				p.hook = v[6]
				ok = true
			}
		case nfqaMark:
			if len(v) >= 4 {
				p.mark = binary.BigEndian.Uint32(v)
				p.hasMark = true
			}
		case nfqaPayload:
			p.payload = v
		}
		l = align4(l)
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return p, ok
}

// verdict tells the kernel what to do with packet id: accept or drop,
// optionally with a new packet mark and a replacement packet.
func (s *nfqSocket) verdict(id uint32, accept bool, mark uint32, setMark bool, packet []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	b := s.startMsg(nfqnlMsgVerdict, unix.NLM_F_REQUEST, 0)
	var hdr [8]byte
	if accept {
		binary.BigEndian.PutUint32(hdr[0:4], nfAccept)
	} else {
		binary.BigEndian.PutUint32(hdr[0:4], nfDrop)
	}
	binary.BigEndian.PutUint32(hdr[4:8], id)
	b = appendAttr(b, nfqaVerdictHdr, hdr[:])
	if accept && setMark {
		var m [4]byte
		binary.BigEndian.PutUint32(m[:], mark)
		b = appendAttr(b, nfqaMark, m[:])
	}
	if accept && packet != nil {
		if nlaHdrLen+len(packet) > 0xffff {
			return fmt.Errorf("replacement packet of %d bytes is too long", len(packet))
		}
		b = appendAttr(b, nfqaPayload, packet)
	}
	b = finishMsg(b)
	if err := s.send(b); err != nil {
		return fmt.Errorf("send verdict: %w", err)
	}
	return nil
}

// startMsg begins a netlink message in wbuf: header (length filled in by
// finishMsg) and the nfgenmsg naming our queue.
func (s *nfqSocket) startMsg(msgType uint16, flags uint16, seq uint32) []byte {
	b := s.wbuf[:nlmsgHdrLen+nfgenHdrLen]
	binary.NativeEndian.PutUint32(b[0:4], 0)
	binary.NativeEndian.PutUint16(b[4:6], nfnlSubsysQueue<<8|msgType)
	binary.NativeEndian.PutUint16(b[6:8], flags)
	binary.NativeEndian.PutUint32(b[8:12], seq)
	binary.NativeEndian.PutUint32(b[12:16], 0)
	b[16] = unix.AF_UNSPEC
	b[17] = unix.NFNETLINK_V0
	binary.BigEndian.PutUint16(b[18:20], s.queue)
	return b
}

func finishMsg(b []byte) []byte {
	binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
	return b
}

// appendAttr appends one netlink attribute, padded to 4 bytes.
func appendAttr(b []byte, typ uint16, data []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(nlaHdrLen+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func align4(n int) int { return (n + 3) &^ 3 }

// close stops serve and releases the socket; the kernel unbinds the
// queue when its socket closes. Closing the file wakes a waiting read.
func (s *nfqSocket) close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if err := s.file.Close(); err != nil {
		return fmt.Errorf("close netlink socket: %w", err)
	}
	return nil
}
