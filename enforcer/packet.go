package enforcer

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// TCP flags.
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagACK = 0x10
)

// Bireme's TCP options: kind 253 (RFC 4727 experimental) with an RFC 6994
// experiment ID, so no real option (TCP Fast Open is kind 34, which
// Trireme collided with) is mistaken for ours. See docs/protocol.md.
const (
	optKindExperimental = 253
	// exidToken marks a SYN or SYN-ACK whose TCP payload starts with a
	// token: kind, len=6, ExID, 16-bit token length.
	exidToken uint16 = 0xB12E
	// exidProof carries the ACK's proof inside the option itself: kind,
	// len=4+n, ExID, n proof bytes.
	exidProof uint16 = 0xB12F

	tokenOptLen = 6
	// tokenOptSpace is what inserting the token marker adds to the TCP
	// header: two NOPs keep the options area a multiple of 4 bytes.
	tokenOptSpace = 8
	// MaxProofLen is the longest proof an option can carry: 40 bytes of
	// options minus the 12 of the timestamp option every Linux ACK has,
	// minus our 4-byte option header.
	MaxProofLen  = 24
	maxTCPHeader = 60
)

var (
	errNotTCP     = errors.New("not a TCP packet")
	errMalformed  = errors.New("malformed packet")
	errFragment   = errors.New("fragmented packet")
	errNoRoom     = errors.New("TCP options area full")
	errTooLarge   = errors.New("packet would exceed the maximum handshake packet size")
	errBadToken   = errors.New("token marker inconsistent with payload")
	errProofSize  = errors.New("proof size out of range")
	errTokenSize  = errors.New("token size out of range")
	errHasBireme  = errors.New("packet already carries a Bireme option")
	errBufTooSmal = errors.New("output buffer too small")
)

// packet is a parsed view of one raw IPv4 or IPv6 TCP packet as NFQUEUE
// hands it over (starting at the IP header). It holds offsets into b and
// copies nothing, so parsing allocates nothing.
type packet struct {
	b         []byte // the packet, trimmed to the IP total length
	v6        bool
	tcpOff    int // offset of the TCP header
	tcpHdrLen int
	src, dst  netip.Addr
	sport     uint16
	dport     uint16
	seq, ack  uint32
	flags     uint8

	// Bireme options found in the TCP header (offsets into b, 0 = absent).
	tokenOpt int // offset of the token marker option
	tokenLen int // token bytes at the start of the payload
	proofOpt int // offset of the proof option
	proofLen int // proof bytes inside that option
}

// payloadOff is the offset of the TCP payload.
func (p *packet) payloadOff() int { return p.tcpOff + p.tcpHdrLen }

// payload returns the TCP payload.
func (p *packet) payload() []byte { return p.b[p.payloadOff():] }

// token returns the token carried at the start of the payload, or nil.
func (p *packet) token() []byte {
	if p.tokenOpt == 0 {
		return nil
	}
	off := p.payloadOff()
	return p.b[off : off+p.tokenLen]
}

// proof returns the proof carried in the proof option, or nil.
func (p *packet) proof() []byte {
	if p.proofOpt == 0 {
		return nil
	}
	return p.b[p.proofOpt+4 : p.proofOpt+4+p.proofLen]
}

// options returns the TCP options area.
func (p *packet) options() []byte { return p.b[p.tcpOff+20 : p.tcpOff+p.tcpHdrLen] }

// local and remote endpoints, given whether the packet leaves the workload.
func (p *packet) srcPort() netip.AddrPort { return netip.AddrPortFrom(p.src, p.sport) }
func (p *packet) dstPort() netip.AddrPort { return netip.AddrPortFrom(p.dst, p.dport) }

// parsePacket fills p from b. It accepts IPv4 (with options) and IPv6
// (skipping hop-by-hop, routing and destination-options headers) carrying
// TCP; fragments and anything else are errors. It never panics and never
// allocates.
func parsePacket(b []byte, p *packet) error {
	*p = packet{}
	ip, err := parseIP(b)
	if err != nil {
		return err
	}
	if ip.proto != 6 {
		return errNotTCP
	}
	b, off := ip.b, ip.l4Off
	p.v6, p.src, p.dst = ip.v6, ip.src, ip.dst
	if off+20 > len(b) {
		return errMalformed
	}
	p.b = b
	p.tcpOff = off
	t := b[off:]
	p.sport = binary.BigEndian.Uint16(t[0:2])
	p.dport = binary.BigEndian.Uint16(t[2:4])
	p.seq = binary.BigEndian.Uint32(t[4:8])
	p.ack = binary.BigEndian.Uint32(t[8:12])
	p.tcpHdrLen = int(t[12]>>4) * 4
	p.flags = t[13]
	if p.tcpHdrLen < 20 || off+p.tcpHdrLen > len(b) {
		return errMalformed
	}
	return p.scanOptions()
}

// ipHeader is what parseIP reads from an IP header.
type ipHeader struct {
	b        []byte // the packet, trimmed to the IP total length
	v6       bool
	src, dst netip.Addr
	proto    uint8 // the upper-layer protocol (IPPROTO_*)
	l4Off    int   // offset of the upper-layer header
}

// parseIP reads the IPv4 or IPv6 header of b (skipping IPv6 hop-by-hop,
// routing and destination-options headers). Fragments are errors: conntrack
// reassembles before anything is queued, so a fragment here is malformed.
func parseIP(b []byte) (ipHeader, error) {
	var h ipHeader
	if len(b) < 1 {
		return h, errMalformed
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return h, errMalformed
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if ihl < 20 || total < ihl || total > len(b) {
			return h, errMalformed
		}
		if binary.BigEndian.Uint16(b[6:8])&0x3fff != 0 { // MF or fragment offset
			return h, errFragment
		}
		h.b = b[:total]
		h.proto = b[9]
		h.src = netip.AddrFrom4([4]byte(b[12:16]))
		h.dst = netip.AddrFrom4([4]byte(b[16:20]))
		h.l4Off = ihl
	case 6:
		if len(b) < 40 {
			return h, errMalformed
		}
		total := 40 + int(binary.BigEndian.Uint16(b[4:6]))
		if total > len(b) {
			return h, errMalformed
		}
		b = b[:total]
		h.b = b
		h.v6 = true
		h.src = netip.AddrFrom16([16]byte(b[8:24]))
		h.dst = netip.AddrFrom16([16]byte(b[24:40]))
		proto, off := b[6], 40
		for proto == 0 || proto == 43 || proto == 60 { // hop-by-hop, routing, dest opts
			if off+8 > len(b) {
				return h, errMalformed
			}
			proto, off = b[off], off+(int(b[off+1])+1)*8
		}
		if proto == 44 {
			return h, errFragment
		}
		h.proto, h.l4Off = proto, off
	default:
		return h, errMalformed
	}
	return h, nil
}

// scanOptions walks the TCP options, checks they are well formed, and
// records where Bireme's are.
func (p *packet) scanOptions() error {
	base := p.tcpOff + 20
	opts := p.options()
	for i := 0; i < len(opts); {
		switch opts[i] {
		case 0: // end of option list
			return p.checkToken()
		case 1: // NOP
			i++
			continue
		}
		if i+1 >= len(opts) {
			return errMalformed
		}
		l := int(opts[i+1])
		if l < 2 || i+l > len(opts) {
			return errMalformed
		}
		if opts[i] == optKindExperimental && l >= 4 {
			switch binary.BigEndian.Uint16(opts[i+2 : i+4]) {
			case exidToken:
				if l != tokenOptLen || p.tokenOpt != 0 {
					return errMalformed
				}
				p.tokenOpt = base + i
				p.tokenLen = int(binary.BigEndian.Uint16(opts[i+4 : i+6]))
			case exidProof:
				if p.proofOpt != 0 {
					return errMalformed
				}
				p.proofOpt = base + i
				p.proofLen = l - 4
			}
		}
		i += l
	}
	return p.checkToken()
}

func (p *packet) checkToken() error {
	if p.tokenOpt != 0 && (p.tokenLen == 0 || p.tokenLen > len(p.b)-p.payloadOff()) {
		return errBadToken
	}
	return nil
}

// rewrite builds in dst a copy of p with the TCP options area replaced
// by newOpts (already a multiple of 4 bytes) and the payload replaced by
// prefix followed by p's payload from skip on, then fixes the IP length
// fields and both checksums. Sequence and acknowledgment numbers are not
// touched. It returns the new packet (a prefix of dst).
func (p *packet) rewrite(dst []byte, newOpts []byte, prefix []byte, skip int) ([]byte, error) {
	ipLen := p.tcpOff
	payload := p.payload()[skip:]
	n := ipLen + 20 + len(newOpts) + len(prefix) + len(payload)
	if len(newOpts)%4 != 0 || 20+len(newOpts) > maxTCPHeader {
		return nil, errNoRoom
	}
	if n > len(dst) || n > 0xffff {
		return nil, errBufTooSmal
	}
	out := dst[:n]
	copy(out, p.b[:ipLen+20])
	w := ipLen + 20
	w += copy(out[w:], newOpts)
	w += copy(out[w:], prefix)
	copy(out[w:], payload)

	out[ipLen+12] = byte((20+len(newOpts))/4)<<4 | out[ipLen+12]&0x0f
	if p.v6 {
		binary.BigEndian.PutUint16(out[4:6], uint16(n-40))
	} else {
		binary.BigEndian.PutUint16(out[2:4], uint16(n))
		out[10], out[11] = 0, 0
		binary.BigEndian.PutUint16(out[10:12], ^foldChecksum(sum16(out[:ipLen], 0)))
	}
	setTCPChecksum(out, p.v6, ipLen)
	return out, nil
}

// insertToken returns in dst p with token carried as payload prefix and
// announced by the token marker option. maxLen bounds the result (the
// path-MTU guard).
func (p *packet) insertToken(dst []byte, token []byte, maxLen int) ([]byte, error) {
	if p.tokenOpt != 0 || p.proofOpt != 0 {
		return nil, errHasBireme
	}
	if len(token) == 0 || len(token) > 0xffff {
		return nil, errTokenSize
	}
	if len(p.b)+tokenOptSpace+len(token) > maxLen {
		return nil, errTooLarge
	}
	var optBuf [maxTCPHeader]byte
	opts := p.options()
	if len(opts)+tokenOptSpace > maxTCPHeader-20 {
		return nil, errNoRoom
	}
	o := optBuf[:0]
	o = append(o, 1, 1, optKindExperimental, tokenOptLen)
	o = binary.BigEndian.AppendUint16(o, exidToken)
	o = binary.BigEndian.AppendUint16(o, uint16(len(token)))
	o = append(o, opts...)
	return p.rewrite(dst, o, token, 0)
}

// insertProof returns in dst p with proof carried in the proof option.
// The payload is untouched, so the proof never enters the byte stream.
func (p *packet) insertProof(dst []byte, proof []byte, maxLen int) ([]byte, error) {
	if p.tokenOpt != 0 || p.proofOpt != 0 {
		return nil, errHasBireme
	}
	if len(proof) == 0 || len(proof) > MaxProofLen {
		return nil, errProofSize
	}
	space := (4 + len(proof) + 3) &^ 3
	opts := p.options()
	if len(opts)+space > maxTCPHeader-20 {
		return nil, errNoRoom
	}
	if len(p.b)+space > maxLen {
		return nil, errTooLarge
	}
	var optBuf [maxTCPHeader]byte
	o := optBuf[:0]
	for i := 4 + len(proof); i < space; i++ {
		o = append(o, 1) // NOP padding
	}
	o = append(o, optKindExperimental, byte(4+len(proof)))
	o = binary.BigEndian.AppendUint16(o, exidProof)
	o = append(o, proof...)
	o = append(o, opts...)
	return p.rewrite(dst, o, nil, 0)
}

// TCP Fast Open options: kind 34 (RFC 7413) and the experimental form
// used before it was assigned (kind 254, ExID 0xF989).
const (
	optKindFastOpen    = 34
	optKindExperiment2 = 254
	exidFastOpen       = 0xF989
)

// isFastOpen reports whether the option at the start of opt (kind, length,
// data; length already checked) is a TCP Fast Open cookie or cookie
// request.
func isFastOpen(opt []byte) bool {
	return opt[0] == optKindFastOpen ||
		opt[0] == optKindExperiment2 && len(opt) >= 4 && binary.BigEndian.Uint16(opt[2:4]) == exidFastOpen
}

// strip returns in dst p without Bireme's options, options re-padded with
// NOPs to a multiple of 4 bytes. A packet with nothing of ours is copied
// unchanged.
//
// A packet carrying a token (a SYN or SYN-ACK) also loses everything a
// TCP Fast Open handshake would use before the proof: the payload behind
// the token and any Fast Open option. Data in a SYN or SYN-ACK reaches the
// peer's socket before the client has proven anything (a Fast Open server
// hands it to accept() at once, and a SYN with a valid cookie makes the
// server's kernel create the socket at once even without data); an honest
// sender's enforcer never puts data there (egressSYN, egressSYNACK), so
// it can only come from a forger. Stripped, the packet is an ordinary SYN
// or SYN-ACK: an honest Fast Open sender's kernel sends the data again
// once the connection is open, as when a server declines Fast Open.
func (p *packet) strip(dst []byte) ([]byte, error) {
	var optBuf [maxTCPHeader]byte
	o := optBuf[:0]
	base := p.tcpOff + 20
	opts := p.options()
	for i := 0; i < len(opts); {
		at := base + i
		switch {
		case opts[i] == 0:
			o = append(o, opts[i:]...)
			i = len(opts)
			continue
		case opts[i] == 1:
			o = append(o, 1)
			i++
			continue
		}
		l := int(opts[i+1]) // bounds checked by parsePacket
		switch {
		case p.tokenOpt != 0 && isFastOpen(opts[i:i+l]):
			// Dropped with the data: see above.
		case at != p.tokenOpt && at != p.proofOpt:
			o = append(o, opts[i:i+l]...)
		default:
			// Drop the NOP padding inserted in front of our option, so
			// the receiver gets the sender kernel's header back exactly.
			for len(o) > 0 && o[len(o)-1] == 1 {
				o = o[:len(o)-1]
			}
		}
		i += l
	}
	for len(o)%4 != 0 {
		o = append(o, 1)
	}
	skip := 0
	if p.tokenOpt != 0 {
		skip = len(p.payload()) // the token and any data behind it
	}
	return p.rewrite(dst, o, nil, skip)
}

// tcpChecksumOK reports whether p's TCP checksum is right for its
// pseudo-header and segment.
func (p *packet) tcpChecksumOK() bool {
	return foldChecksum(tcpChecksumSum(p.b, p.v6, p.tcpOff)) == 0xffff
}
