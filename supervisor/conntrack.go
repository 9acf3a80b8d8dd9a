package supervisor

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// TCP conntrack states (enum tcp_conntrack in the kernel's uapi).
const (
	tcpCtEstablished = 3 // TCP_CONNTRACK_ESTABLISHED
	tcpCtLastAck     = 6 // TCP_CONNTRACK_LAST_ACK
)

// markEstablished sets the authorized bit on every TCP connection in the
// namespace that is established (or closing) and carries none of our mark
// bits: connections that predate protection. Trireme cut such connections
// when it started; we let them finish. A connection the enforcer has seen
// always carries one of our bits by the time it is established, so it is
// never promoted here.
func markEstablished(netnsPath string, authorized, mask uint32) error {
	c, err := dialConntrack(netnsPath)
	if err != nil {
		return fmt.Errorf("mark established connections: %w", err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return fmt.Errorf("mark established connections: dump conntrack: %w", err)
	}
	for _, f := range flows {
		tcp := f.ProtoInfo.TCP
		if f.TupleOrig.Proto.Protocol != unix.IPPROTO_TCP || tcp == nil ||
			tcp.State < tcpCtEstablished || tcp.State > tcpCtLastAck || f.Mark&mask != 0 {
			continue
		}
		// Only the tuples (to find the entry) and the mark: every other
		// field of the dump would be written back as it was read.
		update := conntrack.Flow{TupleOrig: f.TupleOrig, TupleReply: f.TupleReply, Mark: f.Mark&^mask | authorized}
		// ENOENT: the connection ended since the dump.
		if err := c.Update(update); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("mark established connections: update mark of %s: %w", flowName(f), err)
		}
	}
	return nil
}

func flowName(f conntrack.Flow) string {
	return netip.AddrPortFrom(f.TupleOrig.IP.SourceAddress, f.TupleOrig.Proto.SourcePort).String() + "-" +
		netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress, f.TupleOrig.Proto.DestinationPort).String()
}

// dialConntrack opens a ctnetlink socket inside the namespace at
// netnsPath; the socket stays there once the namespace file is closed.
func dialConntrack(netnsPath string) (*conntrack.Conn, error) {
	f, err := os.Open(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns: %w", err)
	}
	defer f.Close()
	c, err := conntrack.Dial(&netlink.Config{NetNS: int(f.Fd())})
	if err != nil {
		return nil, fmt.Errorf("dial ctnetlink: %w", err)
	}
	return c, nil
}

// socketPair is one established TCP socket: its local and remote ends.
type socketPair struct {
	local, remote netip.AddrPort
}

// establishedSockets lists the namespace's established TCP sockets from
// /proc/thread-self/net/tcp{,6}, which show the namespace of the reading
// thread. (Conntrack cannot list them: these sockets are the ones it does
// not know.)
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

// What trackEstablishedSockets gives the entries it creates.
const (
	// establishedTimeout is the kernel's default for ESTABLISHED, in
	// seconds.
	establishedTimeout = 5 * 24 * 3600
	// beLiberal is struct nf_ct_tcp_flags {flags, mask} with
	// IP_CT_TCP_FLAG_BE_LIBERAL in both: skip window tracking.
	beLiberal = 0x08<<8 | 0x08
)

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
	c, err := dialConntrack(netnsPath)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, s := range socks {
		f := conntrack.NewFlow(unix.IPPROTO_TCP, 0, s.local.Addr(), s.remote.Addr(), s.local.Port(), s.remote.Port(),
			establishedTimeout, authorized)
		f.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: tcpCtEstablished, OriginalFlags: beLiberal, ReplyFlags: beLiberal}
		// EEXIST: conntrack already tracks it; markEstablished handles it.
		if err := c.Create(f); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add conntrack entry for %s-%s: %w", s.local, s.remote, err)
		}
	}
	return nil
}
