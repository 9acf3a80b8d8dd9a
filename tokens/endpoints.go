package tokens

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
)

// Endpoint binding (protocol version 2). A v1 handshake proved who the two
// nodes were but not which connection they were proving it for, so a
// workload that received an honest client's SYN could relay the three
// messages to a third server and be admitted there as that client. In v2
// both proofs cover the connection as each side sees it, and each side
// checks that view against the packets it handles.

// Endpoints is a TCP connection as one side sees it: the client's address
// and port, the server's, and the client's initial sequence number (the
// SYN's). The proofs bind them together with the server's initial sequence
// number (the SYN-ACK's).
type Endpoints struct {
	Client    netip.AddrPort
	Server    netip.AddrPort
	ClientISN uint32
}

// String formats e as "client -> server".
func (e Endpoints) String() string { return e.Client.String() + " -> " + e.Server.String() }

// proofEndpointsSize is the encoding of the addresses and ports in the
// proof input: each address as 16 bytes (IPv4 as IPv4-mapped IPv6) followed
// by its port, fixed-size so that the input needs no allocation.
const proofEndpointsSize = 2 * (16 + 2)

// appendProofEndpoints appends the client's and the server's address and
// port in the proof input's form.
func appendProofEndpoints(dst []byte, e *Endpoints) []byte {
	for _, ap := range [2]netip.AddrPort{e.Client, e.Server} {
		a16 := ap.Addr().As16()
		dst = append(dst, a16[:]...)
		dst = binary.BigEndian.AppendUint16(dst, ap.Port())
	}
	return dst
}

// In the SYN the addresses take their family's size, the SYN being the
// message closest to the path MTU:
//
//	endpoints = 4 clientAddr(4) clientPort(2) serverAddr(4) serverPort(2)     13 bytes
//	          | 6 clientAddr(16) clientPort(2) serverAddr(16) serverPort(2)   37 bytes
const (
	wireEndpointsSize4 = 1 + 2*(4+2)
	wireEndpointsSize6 = 1 + 2*(16+2)
)

// appendWireEndpoints appends the SYN's encoding of e's addresses and ports.
func appendWireEndpoints(dst []byte, e *Endpoints) []byte {
	if e.Client.Addr().Is4() && e.Server.Addr().Is4() {
		dst = append(dst, 4)
		for _, ap := range [2]netip.AddrPort{e.Client, e.Server} {
			a4 := ap.Addr().As4()
			dst = append(dst, a4[:]...)
			dst = binary.BigEndian.AppendUint16(dst, ap.Port())
		}
		return dst
	}
	dst = append(dst, 6)
	return appendProofEndpoints(dst, e)
}

// parseWireEndpoints reads what appendWireEndpoints wrote at the start of b
// and returns the rest.
func parseWireEndpoints(b []byte) (client, server netip.AddrPort, rest []byte, ok bool) {
	if len(b) == 0 {
		return client, server, nil, false
	}
	size := 4
	switch {
	case b[0] == 4 && len(b) >= wireEndpointsSize4:
	case b[0] == 6 && len(b) >= wireEndpointsSize6:
		size = 16
	default:
		return client, server, nil, false
	}
	read := func(b []byte) netip.AddrPort {
		a, _ := netip.AddrFromSlice(b[:size])
		// An IPv4-mapped address is the IPv4 address it maps, as the
		// datapath reports it.
		return netip.AddrPortFrom(a.Unmap(), binary.BigEndian.Uint16(b[size:size+2]))
	}
	b = b[1:]
	client, server = read(b), read(b[size+2:])
	return client, server, b[2*(size+2):], true
}

// NATGateways declares, per trust domain, the address ranges of the
// gateways through which that domain's nodes reach this one with their
// source address translated (masquerade, SNAT). A client of such a domain,
// seen from such an address, may claim another source address and port
// than the server observes; everything else stays bound (see
// checkClaimedEndpoints).
type NATGateways map[string][]netip.Prefix

// allows says whether a client of trustDomain may be observed at addr
// instead of the address it claims.
func (g NATGateways) allows(trustDomain string, addr netip.Addr) bool {
	return slices.ContainsFunc(g[trustDomain], func(p netip.Prefix) bool { return p.Contains(addr.Unmap()) })
}

// anyAllows says whether some declared domain's gateway ranges hold addr:
// if none does, a source mismatch can be refused before the token's
// signature is checked.
func (g NATGateways) anyAllows(addr netip.Addr) bool {
	for td := range g {
		if g.allows(td, addr) {
			return true
		}
	}
	return false
}

// Translation says whether a SYN the client sent to dialed may arrive at
// this server as observed: destination NAT that the server's node vouches
// for, such as a Kubernetes Service's virtual IP and port that kube-proxy
// translated, on the client's node, to this very pod and its target port.
// It is asked only when the two differ, before any signature is checked,
// and must be quick (it runs on the packet path) and safe for concurrent
// use.
type Translation func(dialed, observed netip.AddrPort) bool

// checkClaimedEndpoints compares the endpoints a SYN claims (the client's
// view: its source and the destination it dialed) with what the server
// observes. The destination must match: the client dialed this server, or
// the SYN was relayed here; unless dnat (nil: none) vouches that the
// destination dialed is translated to this one. The source must match too,
// unless the client's trust domain is declared as reached through NAT and
// the observed source is one of that declaration's gateway addresses.
// trustDomain is "" before the client's token is verified: then only what
// no declaration could excuse is refused.
func (g NATGateways) checkClaimedEndpoints(claimed, observed *Endpoints, trustDomain string, dnat Translation) error {
	if claimed.Server != observed.Server && (dnat == nil || !dnat(claimed.Server, observed.Server)) {
		if dnat != nil {
			return reject(ReasonEndpointMismatch, "SYN was sent to %s, arrived at %s (relayed: no Service translates that destination to this pod)", claimed.Server, observed.Server)
		}
		return reject(ReasonEndpointMismatch, "SYN was sent to %s, arrived at %s (relayed)", claimed.Server, observed.Server)
	}
	if claimed.Client == observed.Client {
		return nil
	}
	src := observed.Client.Addr()
	if trustDomain == "" && g.anyAllows(src) || trustDomain != "" && g.allows(trustDomain, src) {
		return nil
	}
	return reject(ReasonEndpointMismatch, "SYN was sent from %s, arrived from %s%s", claimed.Client, observed.Client, natHint(g, trustDomain))
}

func natHint(g NATGateways, trustDomain string) string {
	if trustDomain == "" || len(g[trustDomain]) == 0 {
		return " (no NAT gateway declared for its trust domain)"
	}
	return fmt.Sprintf(" (not a NAT gateway declared for trust domain %q: %v)", trustDomain, g[trustDomain])
}
