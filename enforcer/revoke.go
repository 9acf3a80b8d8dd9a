package enforcer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/policy"
)

// Federation: when a foreign trust domain's bundle is removed, the token
// engine refuses its new handshakes at once; EndConnections also ends the
// connections already authorized with its workloads. Once authorized, a
// connection never visits the enforcer again (its packets pass on the
// conntrack mark), so the enforcer remembers, for connections with a peer
// of another trust domain only, which workload namespace holds it and
// who the peer is. Connections within the local domain cost nothing.

// DefaultMaxForeignConns bounds the remembered connections with foreign
// peers, about 300 bytes each.
const DefaultMaxForeignConns = 1 << 16

// errNoEntry: conntrack has no entry for the connection.
var errNoEntry = errors.New("no conntrack entry")

// ctMsgDelete is IPCTNL_MSG_CT_DELETE.
const ctMsgDelete = 2

// StageRevoked is the flow record stage of a connection ended because its
// peer's trust domain stopped being trusted.
const StageRevoked = "revoked"

// foreignKey names a connection in a workload namespace by its conntrack
// original direction.
type foreignKey struct {
	netns    string
	src, dst netip.AddrPort
}

// foreignConn is what a record of the ended connection needs.
type foreignConn struct {
	dir   policy.Direction
	local *identity.Identity
	peer  *identity.Identity
	since time.Time
}

// foreignConns remembers the authorized connections with foreign peers.
type foreignConns struct {
	// size mirrors len(conns), so that a connection with a local peer
	// costs one atomic load while none is remembered.
	size   atomic.Int64
	mu     sync.Mutex
	max    int
	conns  map[foreignKey]foreignConn
	warned bool
}

func newForeignConns(max int) *foreignConns {
	if max <= 0 {
		max = DefaultMaxForeignConns
	}
	return &foreignConns{max: max, conns: map[foreignKey]foreignConn{}}
}

// note remembers the connection of key in wl if its peer is of another
// trust domain than localDomain, and forgets whatever was remembered for the tuple
// otherwise (a port reused by a local peer).
func (f *foreignConns) note(key foreignKey, c foreignConn, localDomain string, log func(string)) {
	local := c.peer == nil || c.peer.Cluster == localDomain
	if local && f.size.Load() == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() { f.size.Store(int64(len(f.conns))) }()
	if local {
		delete(f.conns, key)
		return
	}
	if _, ok := f.conns[key]; !ok && len(f.conns) >= f.max {
		// Full: forget the oldest. Its connection is then not ended by a
		// revocation (its peer's new connections still are refused).
		var oldest foreignKey
		first := true
		for k, v := range f.conns {
			if first || v.since.Before(f.conns[oldest].since) {
				oldest, first = k, false
			}
		}
		delete(f.conns, oldest)
		if !f.warned {
			f.warned = true
			log(fmt.Sprintf("more than %d connections with foreign trust domains: the oldest are forgotten and a revocation will not end them", f.max))
		}
	}
	f.conns[key] = c
}

// forgetNetns drops the connections of a detached workload.
func (f *foreignConns) forgetNetns(netns string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k := range f.conns {
		if k.netns == netns {
			delete(f.conns, k)
		}
	}
	f.size.Store(int64(len(f.conns)))
}

// take removes and returns the connections with peers of trustDomain.
func (f *foreignConns) take(trustDomain string) map[foreignKey]foreignConn {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[foreignKey]foreignConn{}
	for k, v := range f.conns {
		if v.peer.Cluster == trustDomain {
			out[k] = v
			delete(f.conns, k)
		}
	}
	f.size.Store(int64(len(f.conns)))
	return out
}

// noteForeign remembers a connection about to be authorized in q's
// workload: src -> dst is its conntrack original direction.
func (q *queue) noteForeign(src, dst netip.AddrPort, dir policy.Direction, local, peer *identity.Identity) {
	q.e.foreign.note(foreignKey{netns: q.wl.netns, src: src, dst: dst},
		foreignConn{dir: dir, local: local, peer: peer, since: time.Now()},
		q.e.cfg.Tokens.TrustDomain(), func(msg string) { q.e.log.Warn(msg) })
}

// EndConnections ends the established connections of this node's
// workloads with workloads of trustDomain: it deletes their conntrack
// entries, so that their next packets, unmarked, meet the workload's DROP
// rule, and aborts the workload's socket (the kernel answers the peer
// with a reset). It writes one flow record per connection it ended and
// returns their number. Call it after the trust without trustDomain is in
// force, so that no new connection from it completes meanwhile.
func (e *Enforcer) EndConnections(trustDomain string) int {
	ended := 0
	for k, c := range e.foreign.take(trustDomain) {
		// A connection that closed leaves its entry for a while (TIME_WAIT,
		// CLOSE): removed too, but it was not ended here.
		ct, err := openCTEntry(k.netns, k.src, k.dst)
		if err != nil {
			e.log.Warn("end connection of a revoked trust domain", "netns", k.netns, "err", err)
			continue
		}
		live := ct.established()
		err = ct.remove()
		ct.close()
		if errors.Is(err, errNoEntry) || err == nil && !live {
			continue
		}
		if err != nil {
			e.log.Warn("end connection of a revoked trust domain", "netns", k.netns, "src", k.src, "dst", k.dst, "err", err)
			continue
		}
		// The local end of the tuple is dst for a connection the workload
		// accepted, src for one it opened.
		localAP, peerAP := k.dst, k.src
		if c.dir == policy.Egress {
			localAP, peerAP = k.src, k.dst
		}
		if err := destroySocket(k.netns, localAP, peerAP); err != nil {
			e.log.Debug("abort socket of a revoked connection", "netns", k.netns, "err", err)
		}
		ended++
		if e.wantsRecords() {
			e.report(&flowlog.Record{
				Time:      time.Now().UTC(),
				Node:      e.cfg.Node,
				Direction: c.dir.String(),
				Stage:     StageRevoked,
				Protocol:  "TCP",
				LocalAddr: localAP.String(),
				PeerAddr:  peerAP.String(),
				Local:     c.local,
				Peer:      c.peer,
				Verdict:   flowlog.Deny,
				Reason:    fmt.Sprintf("ended: trust in cluster %q revoked (its bundle was removed)", trustDomain),
			})
		}
	}
	if ended > 0 {
		e.log.Info("ended connections of a revoked trust domain", "trust_domain", trustDomain, "connections", ended)
	}
	return ended
}

// ctEntry is one connection's conntrack entry, in the namespace at a path:
// whether it is open, and its deletion. Revocations are rare, so each
// opens its own socket, through ti-mo/conntrack (the ACK path's marker is
// hand-written for speed, see conntrack.go).
type ctEntry struct {
	c    *conntrack.Conn
	flow conntrack.Flow
}

func openCTEntry(netnsPath string, src, dst netip.AddrPort) (*ctEntry, error) {
	fd, err := openNetnsFile(netnsPath)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	c, err := conntrack.Dial(&netlink.Config{NetNS: fd})
	if err != nil {
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	return &ctEntry{c: c, flow: conntrack.NewFlow(unix.IPPROTO_TCP, 0, src.Addr(), dst.Addr(), src.Port(), dst.Port(), 0, 0)}, nil
}

func (e *ctEntry) close() { e.c.Close() }

// TCP conntrack states from SYN_RECV to LAST_ACK: the connection is open
// (TIME_WAIT and CLOSE are left behind by a closed one).
const (
	tcpConntrackSynRecv = 2
	tcpConntrackLastAck = 6
)

// established reports whether the entry exists in an open TCP state.
func (e *ctEntry) established() bool {
	f, err := e.c.Get(e.flow)
	if err != nil || f.ProtoInfo.TCP == nil {
		return false
	}
	st := f.ProtoInfo.TCP.State
	return st >= tcpConntrackSynRecv && st <= tcpConntrackLastAck
}

// remove deletes the entry; errNoEntry if there is none.
func (e *ctEntry) remove() error {
	if err := e.c.Delete(e.flow); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return errNoEntry
		}
		return fmt.Errorf("delete conntrack entry: %w", err)
	}
	return nil
}

// sock_diag constants (linux/inet_diag.h, linux/sock_diag.h).
const (
	sockDestroy       = 21 // SOCK_DESTROY
	inetDiagReqV2Size = 56
	tcpAllStates      = 0xfff
)

// destroySocket aborts the TCP socket local <-> peer in the namespace at
// netnsPath (SOCK_DESTROY, as `ss -K` does): the application sees the
// connection end and the kernel sends the peer a reset. Best effort: a
// kernel without CONFIG_INET_DIAG_DESTROY refuses it, and the deleted
// conntrack entry alone stops the connection's traffic.
func destroySocket(netnsPath string, local, peer netip.AddrPort) error {
	fd, err := openNetnsFile(netnsPath)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, &netlink.Config{NetNS: fd})
	if err != nil {
		return fmt.Errorf("sock_diag: %w", err)
	}
	defer c.Close()
	req := make([]byte, inetDiagReqV2Size)
	family := uint8(unix.AF_INET)
	if local.Addr().Is6() {
		family = unix.AF_INET6
	}
	req[0] = family
	req[1] = unix.IPPROTO_TCP
	binary.LittleEndian.PutUint32(req[4:], tcpAllStates)
	// struct inet_diag_sockid at offset 8: sport, dport (big endian),
	// src[4], dst[4] (__be32 each), if, cookie[2] = INET_DIAG_NOCOOKIE.
	binary.BigEndian.PutUint16(req[8:], local.Port())
	binary.BigEndian.PutUint16(req[10:], peer.Port())
	copy(req[12:28], addr16(local.Addr()))
	copy(req[28:44], addr16(peer.Addr()))
	binary.LittleEndian.PutUint32(req[48:], ^uint32(0))
	binary.LittleEndian.PutUint32(req[52:], ^uint32(0))
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{Type: sockDestroy, Flags: netlink.Request | netlink.Acknowledge},
		Data:   req,
	})
	if err != nil {
		return fmt.Errorf("sock_destroy %s-%s: %w", local, peer, err)
	}
	return nil
}

// addr16 is an address as inet_diag_sockid holds it: 4 bytes for IPv4,
// 16 for IPv6, in a 16-byte field.
func addr16(a netip.Addr) []byte {
	if a.Is4() {
		b := a.As4()
		return b[:]
	}
	b := a.As16()
	return b[:]
}

func openNetnsFile(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open netns %s: %w", path, err)
	}
	return fd, nil
}
