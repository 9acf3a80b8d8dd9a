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
	"unsafe"

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
	// recvBatch is how many queued packets one read system call takes
	// (recvmmsg); their verdicts are written together.
	recvBatch = 8
	// recvBufBytes holds one queued packet (up to copyRange) and its
	// attributes.
	recvBufBytes = copyRange + 4096
	// verdictBatchBytes bounds one write of verdicts. The kernel refuses a
	// netlink message longer than the socket's send buffer (212992 bytes
	// by default); one verdict with the largest replacement packet fits.
	verdictBatchBytes = 128 << 10
	// maxVerdictBytes is one verdict message at its largest.
	maxVerdictBytes = nlmsgHdrLen + nfgenHdrLen + 3*nlaHdrLen + 8 + 4 + copyRange + tokenOptSpace + 4
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

	rbuf []byte // receive buffer of config, reused

	// The reader takes up to recvBatch packets per system call (recvmmsg),
	// one buffer each; msgs and iovs point at them.
	rbufs [][]byte
	msgs  []mmsghdr
	iovs  []unix.Iovec

	// wmu guards the verdict batch: wbuf holds the verdict messages not
	// yet written (several netlink messages are one write: the kernel
	// applies them in order), ids the packets they answer, in case the
	// write fails. A verdict from another goroutine (a held packet
	// released by the expiry timer) joins the batch and writes it.
	wmu  sync.Mutex
	wbuf []byte
	ids  []uint32
	out  []byte // what doWrite writes
	werr error

	// The callbacks handed to raw, made once so a read or write does not
	// allocate a closure, and their results.
	readFn, writeFn, readBatchFn func(fd uintptr) bool
	n                            int
	err                          error
}

// mmsghdr is struct mmsghdr of recvmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [unsafe.Sizeof(uintptr(0)) - 4]byte
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
		wbuf: make([]byte, 0, verdictBatchBytes), ids: make([]uint32, 0, 2*recvBatch)}
	s.rbufs = make([][]byte, recvBatch)
	s.msgs = make([]mmsghdr, recvBatch)
	s.iovs = make([]unix.Iovec, recvBatch)
	for i := range s.rbufs {
		// The packet and its attributes. Pages are only touched as far
		// as packets reach: handshake packets use the first of each.
		s.rbufs[i] = make([]byte, recvBufBytes)
		s.iovs[i].Base = &s.rbufs[i][0]
		s.iovs[i].SetLen(recvBufBytes)
		s.msgs[i].hdr.Iov = &s.iovs[i]
		s.msgs[i].hdr.SetIovlen(1)
	}
	s.rbuf = s.rbufs[0]
	s.readFn, s.writeFn, s.readBatchFn = s.doRead, s.doWrite, s.doReadBatch
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
	s.wmu.Lock()
	err := s.send(b)
	s.wmu.Unlock()
	if err != nil {
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
		s.n, s.err = rawRead(fd, s.rbuf) // recvfrom would allocate the sender's address
		switch s.err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait for the socket to be readable
		}
		return true
	}
}

// rawRead and rawWrite are read(2) and write(2) without the Go runtime's
// system call bookkeeping (entersyscall/exitsyscall). On a queue that sees
// a packet every few hundred microseconds the runtime's monitor thread
// (sysmon) is asleep between packets, and every entersyscall woke it: one
// more thread wake-up per queue trip, after which sysmon polled every 20 µs
// until the process was idle again. In the bench's one-client run sysmon
// was 30 % of the enforcers' CPU samples (docs/performance.md, "Cheaper
// trips"). Both calls return without sleeping: the socket is non-blocking
// (a read with nothing queued returns EAGAIN and the goroutine waits in the
// netpoller), and a verdict write is processed synchronously by the kernel
// (the re-injected packet goes on to the next queue or socket inside the
// call), so the P is not held longer than the kernel's own work.
func rawRead(fd uintptr, b []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func rawWrite(fd uintptr, b []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// send writes b (one or more messages) to the kernel. The caller holds
// wmu.
func (s *nfqSocket) send(b []byte) error {
	s.out = b
	err := s.raw.Write(s.writeFn)
	s.out = nil
	if err != nil {
		return err
	}
	return s.werr
}

func (s *nfqSocket) doWrite(fd uintptr) bool {
	for {
		_, s.werr = rawWrite(fd, s.out)
		switch s.werr {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		return true
	}
}

// serve reads packets until close, calling handle for each. handle gives
// the packet's verdict before it returns (queueVerdict, or verdict when
// what it does next needs the kernel to have applied it), unless it keeps
// the packet for a verdict later. Read and write errors are given to onErr.
//
// Up to recvBatch packets are read per system call, and handle's verdicts
// (given with queueVerdict) are written together once the batch is
// decided: under a burst, two system calls per batch instead of two per
// packet. A lone packet costs the same calls as before (one read, one
// write, then a read that finds nothing), so its latency does not change.
func (s *nfqSocket) serve(handle func(*queuedPacket), onErr func(error)) {
	var p queuedPacket
	for !s.closed.Load() {
		k, err := s.recvBatch()
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
		for i := range k {
			n := min(int(s.msgs[i].len), len(s.rbufs[i]))
			for msg := range messages(s.rbufs[i][:n]) {
				if binary.NativeEndian.Uint16(msg[4:6]) != nfnlSubsysQueue<<8|nfqnlMsgPacket {
					continue // acknowledgements, errors of verdicts: nothing to do
				}
				var ok bool
				if p, ok = parsePacketMsg(msg); ok {
					handle(&p)
				}
			}
		}
		if err := s.flush(); err != nil && !s.closed.Load() {
			onErr(err)
		}
	}
}

// recvBatch reads up to recvBatch datagrams, waiting in the netpoller
// while there is none, and returns how many it read.
func (s *nfqSocket) recvBatch() (int, error) {
	if err := s.raw.Read(s.readBatchFn); err != nil {
		return 0, err
	}
	return s.n, s.err
}

func (s *nfqSocket) doReadBatch(fd uintptr) bool {
	for {
		// Without the runtime's system call bookkeeping, as rawRead. The
		// socket is non-blocking: with nothing queued this returns EAGAIN
		// at once, with some it returns what is there.
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&s.msgs[0])), uintptr(len(s.msgs)), 0, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait for the socket to be readable
		case 0:
			s.n, s.err = int(n), nil
		default:
			s.n, s.err = 0, errno
		}
		return true
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
// optionally with a new packet mark and a replacement packet. It writes
// the verdict at once, with any the reader has queued before it.
func (s *nfqSocket) verdict(id uint32, accept bool, mark uint32, setMark bool, packet []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.addVerdict(id, accept, mark, setMark, packet); err != nil {
		return err
	}
	return s.flushLocked()
}

// queueVerdict adds packet id's verdict to the batch written by flush (or
// by the next verdict): the reader's way, while it decides the packets of
// one read. A full batch is written first.
func (s *nfqSocket) queueVerdict(id uint32, accept bool, mark uint32, setMark bool, packet []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.addVerdict(id, accept, mark, setMark, packet)
}

// flush writes the queued verdicts.
func (s *nfqSocket) flush() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.flushLocked()
}

// flushLocked writes the batch. If the write fails, each packet of the
// batch is dropped with a verdict of its own (a packet without a verdict
// would wait in the kernel until the socket closes; its sender
// retransmits); the batch's error is returned.
func (s *nfqSocket) flushLocked() error {
	if len(s.wbuf) == 0 {
		return nil
	}
	err := s.send(s.wbuf)
	ids := s.ids
	s.wbuf, s.ids = s.wbuf[:0], s.ids[:0]
	if err == nil {
		return nil
	}
	for _, id := range ids {
		b := s.appendVerdict(s.wbuf[:0], id, false, 0, false, nil)
		_ = s.send(b)
	}
	return fmt.Errorf("send verdicts: %w", err)
}

// addVerdict appends one verdict message to the batch, writing the batch
// first when the message might not fit. The caller holds wmu.
func (s *nfqSocket) addVerdict(id uint32, accept bool, mark uint32, setMark bool, packet []byte) error {
	if accept && packet != nil && nlaHdrLen+len(packet) > 0xffff {
		return fmt.Errorf("replacement packet of %d bytes is too long", len(packet))
	}
	if len(s.wbuf) > 0 && len(s.wbuf)+maxVerdictBytes > cap(s.wbuf) {
		if err := s.flushLocked(); err != nil {
			return err
		}
	}
	s.wbuf = s.appendVerdict(s.wbuf, id, accept, mark, setMark, packet)
	s.ids = append(s.ids, id)
	return nil
}

// appendVerdict appends the verdict message on packet id to b.
func (s *nfqSocket) appendVerdict(b []byte, id uint32, accept bool, mark uint32, setMark bool, packet []byte) []byte {
	start := len(b)
	b = s.appendMsgHeader(b, nfqnlMsgVerdict, unix.NLM_F_REQUEST, 0)
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
		b = appendAttr(b, nfqaPayload, packet)
	}
	binary.NativeEndian.PutUint32(b[start:start+4], uint32(len(b)-start))
	return b
}

// startMsg begins a netlink message at the start of wbuf: header (length
// filled in by finishMsg) and the nfgenmsg naming our queue. Only for a
// message sent on its own while no verdict is queued (configuration).
func (s *nfqSocket) startMsg(msgType uint16, flags uint16, seq uint32) []byte {
	return s.appendMsgHeader(s.wbuf[:0], msgType, flags, seq)
}

// appendMsgHeader appends a netlink message header (length 0 until the
// message is finished) and the nfgenmsg naming our queue to b.
func (s *nfqSocket) appendMsgHeader(b []byte, msgType uint16, flags uint16, seq uint32) []byte {
	start := len(b)
	b = append(b, make([]byte, nlmsgHdrLen+nfgenHdrLen)...) // no allocation within capacity
	h := b[start:]
	binary.NativeEndian.PutUint32(h[0:4], 0)
	binary.NativeEndian.PutUint16(h[4:6], nfnlSubsysQueue<<8|msgType)
	binary.NativeEndian.PutUint16(h[6:8], flags)
	binary.NativeEndian.PutUint32(h[8:12], seq)
	binary.NativeEndian.PutUint32(h[12:16], 0)
	h[16] = unix.AF_UNSPEC
	h[17] = unix.NFNETLINK_V0
	binary.BigEndian.PutUint16(h[18:20], s.queue)
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
