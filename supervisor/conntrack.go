package supervisor

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ctnetlink constants (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	ctMsgNew           = 0 // IPCTNL_MSG_CT_NEW (without NLM_F_CREATE: update)
	ctMsgGet           = 1 // IPCTNL_MSG_CT_GET
	ctaTupleOrig       = 1
	ctaProtoinfo       = 4
	ctaMark            = 8
	ctaProtoinfoTCP    = 1
	ctaProtoinfoTCPSt  = 1
	tcpCtEstablished   = 3 // TCP_CONNTRACK_ESTABLISHED
	tcpCtLastAck       = 6 // TCP_CONNTRACK_LAST_ACK
	nfnlSubsysCtnetlnk = 1
)

// markEstablished sets the authorized bit on every TCP connection in the
// namespace that is established (or closing) and carries none of our mark
// bits: connections that predate protection. Trireme cut such connections
// when it started; we let them finish. A connection the enforcer has seen
// always carries one of our bits by the time it is established, so it is
// never promoted here.
func markEstablished(netnsPath string, authorized, mask uint32) error {
	c, err := dialCtnetlink(netnsPath)
	if err != nil {
		return fmt.Errorf("mark established connections: %w", err)
	}
	defer c.Close()

	dump, err := c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(nfnlSubsysCtnetlnk<<8 | ctMsgGet),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: nfgenmsg(unix.AF_UNSPEC),
	})
	if err != nil {
		return fmt.Errorf("mark established connections: dump conntrack: %w", err)
	}
	for _, m := range dump {
		if len(m.Data) < 4 {
			continue
		}
		family := m.Data[0]
		tuple, mark, state, isTCP, err := parseCtEntry(m.Data[4:])
		if err != nil || !isTCP || tuple == nil {
			continue
		}
		if state < tcpCtEstablished || state > tcpCtLastAck || mark&mask != 0 {
			continue
		}
		attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: netlink.Nested | ctaTupleOrig, Data: tuple},
			{Type: ctaMark, Data: binary.BigEndian.AppendUint32(nil, mark&^mask|authorized)},
		})
		if err != nil {
			return fmt.Errorf("mark established connections: %w", err)
		}
		_, err = c.Execute(netlink.Message{
			Header: netlink.Header{
				Type:  netlink.HeaderType(nfnlSubsysCtnetlnk<<8 | ctMsgNew),
				Flags: netlink.Request | netlink.Acknowledge,
			},
			Data: append(nfgenmsg(family), attrs...),
		})
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("mark established connections: update mark: %w", err)
		}
	}
	return nil
}

func nfgenmsg(family uint8) []byte {
	return []byte{family, unix.NFNETLINK_V0, 0, 0}
}

// parseCtEntry extracts what markEstablished needs from one conntrack
// dump message: the raw original tuple, the mark and the TCP state.
func parseCtEntry(b []byte) (tuple []byte, mark uint32, state uint8, isTCP bool, err error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, 0, 0, false, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case ctaTupleOrig:
			tuple = ad.Bytes()
		case ctaMark:
			mark = ad.Uint32()
		case ctaProtoinfo:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() != ctaProtoinfoTCP {
						continue
					}
					isTCP = true
					nad.Nested(func(tad *netlink.AttributeDecoder) error {
						for tad.Next() {
							if tad.Type() == ctaProtoinfoTCPSt {
								state = tad.Uint8()
							}
						}
						return nil
					})
				}
				return nil
			})
		}
	}
	return tuple, mark, state, isTCP, ad.Err()
}

// More ctnetlink constants, for creating entries.
const (
	ctaTupleReply      = 2
	ctaTimeout         = 7
	ctaTupleIP         = 1
	ctaTupleProto      = 2
	ctaIPv4Src         = 1
	ctaIPv4Dst         = 2
	ctaIPv6Src         = 3
	ctaIPv6Dst         = 4
	ctaProtoNum        = 1
	ctaProtoSrcPort    = 2
	ctaProtoDstPort    = 3
	ctaTCPFlagsOrig    = 4
	ctaTCPFlagsReply   = 5
	tcpFlagBeLiberal   = 0x08
	establishedTimeout = 5 * 24 * 3600 // the kernel's default for ESTABLISHED
)

// socketPair is one established TCP socket: its local and remote ends.
type socketPair struct {
	local, remote netip.AddrPort
}

// establishedSockets lists the namespace's established TCP sockets from
// /proc/thread-self/net/tcp{,6}, which show the namespace of the reading
// thread.
func establishedSockets(netnsPath string) ([]socketPair, error) {
	var out []socketPair
	err := inNetNS(netnsPath, func() error {
		for _, file := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
			data, err := os.ReadFile(file)
			if errors.Is(err, os.ErrNotExist) {
				continue // no IPv6 in this kernel
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", file, err)
			}
			out = append(out, parseProcNetTCP(data)...)
		}
		return nil
	})
	return out, err
}

// parseProcNetTCP returns the established sockets in a /proc/net/tcp or
// tcp6 table; lines it cannot read are skipped.
func parseProcNetTCP(data []byte) []socketPair {
	var out []socketPair
	for i, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 4 || f[3] != "01" { // 01 = TCP_ESTABLISHED
			continue
		}
		l, errL := parseProcAddr(f[1])
		r, errR := parseProcAddr(f[2])
		if errL == nil && errR == nil {
			out = append(out, socketPair{l, r})
		}
	}
	return out
}

// parseProcAddr reads "0100007F:1F90": the address as 32-bit words in
// host (little-endian) order, the port in big-endian hex.
func parseProcAddr(s string) (netip.AddrPort, error) {
	host, port, ok := strings.Cut(s, ":")
	if !ok || (len(host) != 8 && len(host) != 32) {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	for w := 0; w+4 <= len(raw); w += 4 {
		raw[w], raw[w+1], raw[w+2], raw[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
	}
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	a, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), nil
}

// trackEstablishedSockets creates an authorized conntrack entry for every
// established socket conntrack does not know yet. Conntrack only starts
// tracking a namespace when a rule needs it, so connections made before
// protection usually have no entry; without one, their next packet would
// be picked up mid-stream with no mark and dropped. Window tracking is
// set liberal on these entries because their sequence numbers are unknown.
func trackEstablishedSockets(netnsPath string, authorized uint32) error {
	socks, err := establishedSockets(netnsPath)
	if err != nil || len(socks) == 0 {
		return err
	}
	c, err := dialCtnetlink(netnsPath)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, s := range socks {
		family := uint8(unix.AF_INET)
		if s.local.Addr().Is6() {
			family = unix.AF_INET6
		}
		liberal := []byte{tcpFlagBeLiberal, tcpFlagBeLiberal}
		protoinfo, _ := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: ctaProtoinfoTCPSt, Data: []byte{tcpCtEstablished}},
			{Type: ctaTCPFlagsOrig, Data: liberal},
			{Type: ctaTCPFlagsReply, Data: liberal},
		})
		protoinfoTCP, _ := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: netlink.Nested | ctaProtoinfoTCP, Data: protoinfo},
		})
		attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: netlink.Nested | ctaTupleOrig, Data: ctTuple(s.local, s.remote)},
			{Type: netlink.Nested | ctaTupleReply, Data: ctTuple(s.remote, s.local)},
			{Type: ctaTimeout, Data: binary.BigEndian.AppendUint32(nil, establishedTimeout)},
			{Type: ctaMark, Data: binary.BigEndian.AppendUint32(nil, authorized)},
			{Type: netlink.Nested | ctaProtoinfo, Data: protoinfoTCP},
		})
		if err != nil {
			return fmt.Errorf("encode conntrack entry: %w", err)
		}
		_, err = c.Execute(netlink.Message{
			Header: netlink.Header{
				Type:  netlink.HeaderType(nfnlSubsysCtnetlnk<<8 | ctMsgNew),
				Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl,
			},
			Data: append(nfgenmsg(family), attrs...),
		})
		// EEXIST: conntrack already tracks it; markEstablished handles it.
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add conntrack entry for %s-%s: %w", s.local, s.remote, err)
		}
	}
	return nil
}

// ctTuple encodes a conntrack tuple for TCP from src to dst.
func ctTuple(src, dst netip.AddrPort) []byte {
	srcType, dstType := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if src.Addr().Is6() {
		srcType, dstType = ctaIPv6Src, ctaIPv6Dst
	}
	ip, _ := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: srcType, Data: src.Addr().AsSlice()},
		{Type: dstType, Data: dst.Addr().AsSlice()},
	})
	proto, _ := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: ctaProtoNum, Data: []byte{unix.IPPROTO_TCP}},
		{Type: ctaProtoSrcPort, Data: binary.BigEndian.AppendUint16(nil, src.Port())},
		{Type: ctaProtoDstPort, Data: binary.BigEndian.AppendUint16(nil, dst.Port())},
	})
	t, _ := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: netlink.Nested | ctaTupleIP, Data: ip},
		{Type: netlink.Nested | ctaTupleProto, Data: proto},
	})
	return t
}

// ctaMarkMask is CTA_MARK_MASK: with it, an update changes only the mark
// bits in the mask and keeps everyone else's.
const ctaMarkMask = 21

// ConnMarker sets Bireme's mark bits on single conntrack entries of one
// workload namespace, over one ctnetlink socket opened in it. It is safe
// for concurrent use.
type ConnMarker struct {
	c    *netlink.Conn
	mask uint32
}

// NewConnMarker opens a ctnetlink socket in the namespace at netnsPath.
// mask names the bits Set may change (Config.Mask()).
func NewConnMarker(netnsPath string, mask uint32) (*ConnMarker, error) {
	c, err := dialCtnetlink(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("conn marker: %w", err)
	}
	return &ConnMarker{c: c, mask: mask}, nil
}

// dialCtnetlink opens a ctnetlink socket inside the namespace at
// netnsPath; the socket stays there once the namespace file is closed.
func dialCtnetlink(netnsPath string) (*netlink.Conn, error) {
	f, err := os.Open(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns: %w", err)
	}
	defer f.Close()
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(f.Fd())})
	if err != nil {
		return nil, fmt.Errorf("dial ctnetlink: %w", err)
	}
	return c, nil
}

// Set replaces the masked bits of the mark of the TCP connection whose
// original direction is src -> dst with bits.
func (m *ConnMarker) Set(src, dst netip.AddrPort, bits uint32) error {
	family := uint8(unix.AF_INET)
	if src.Addr().Is6() {
		family = unix.AF_INET6
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: netlink.Nested | ctaTupleOrig, Data: ctTuple(src, dst)},
		{Type: ctaMark, Data: binary.BigEndian.AppendUint32(nil, bits&m.mask)},
		{Type: ctaMarkMask, Data: binary.BigEndian.AppendUint32(nil, m.mask)},
	})
	if err != nil {
		return fmt.Errorf("mark %s-%s: %w", src, dst, err)
	}
	_, err = m.c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(nfnlSubsysCtnetlnk<<8 | ctMsgNew),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: append(nfgenmsg(family), attrs...),
	})
	if err != nil {
		return fmt.Errorf("mark %s-%s: %w", src, dst, err)
	}
	return nil
}

// Close closes the socket.
func (m *ConnMarker) Close() error { return m.c.Close() }
