package enforcer

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ctnetlink constants (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	nfnlSubsysCtnetlink = 1
	ctMsgNew            = 0 // IPCTNL_MSG_CT_NEW; without NLM_F_CREATE an update
	ctaTupleOrig        = 1
	ctaTupleIP          = 1
	ctaTupleProto       = 2
	ctaIPv4Src          = 1
	ctaIPv4Dst          = 2
	ctaIPv6Src          = 3
	ctaIPv6Dst          = 4
	ctaProtoNum         = 1
	ctaProtoSrcPort     = 2
	ctaProtoDstPort     = 3
	ctaMark             = 8
	// ctaMarkMask is CTA_MARK_MASK: with it, an update changes only the
	// mark bits in the mask and keeps everyone else's.
	ctaMarkMask = 21
)

// connMarker sets Bireme's mark bits on single conntrack entries of one
// workload namespace, over one ctnetlink socket opened in it: the server's
// enforcer marks a connection Authorized after the verdict on its proof
// ACK (see ingressACK). It is safe for concurrent use.
//
// It speaks ctnetlink itself rather than through github.com/ti-mo/conntrack
// (which the supervisor uses): ti-mo's Flow has no CTA_MARK_MASK, so
// keeping other software's mark bits would take a Get before every Update,
// measured 4x slower on this, the ACK's path (BenchmarkConnMarkerSet,
// docs/performance.md "Conntrack on the ACK path").
type connMarker struct {
	c    *netlink.Conn
	mask uint32
}

// newConnMarker opens a ctnetlink socket in the namespace at netnsPath.
// mask names the bits set may change (marks.Layout.Mask).
func newConnMarker(netnsPath string, mask uint32) (*connMarker, error) {
	f, err := os.Open(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("conntrack marker: open netns: %w", err)
	}
	defer f.Close()
	// The socket stays in the namespace once the file is closed.
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(f.Fd())})
	if err != nil {
		return nil, fmt.Errorf("conntrack marker: dial ctnetlink: %w", err)
	}
	return &connMarker{c: c, mask: mask}, nil
}

// set replaces the masked bits of the mark of the TCP connection whose
// original direction is src -> dst with bits, in one request.
func (m *connMarker) set(src, dst netip.AddrPort, bits uint32) error {
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
			Type:  netlink.HeaderType(nfnlSubsysCtnetlink<<8 | ctMsgNew),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		// struct nfgenmsg: family, version, resource id.
		Data: append([]byte{family, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return fmt.Errorf("mark %s-%s: %w", src, dst, err)
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

func (m *connMarker) close() error { return m.c.Close() }
