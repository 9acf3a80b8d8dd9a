package enforcer

import "encoding/binary"

// sum16 adds b as big-endian 16-bit words to sum (RFC 1071), without
// folding.
func sum16(b []byte, sum uint64) uint64 {
	for len(b) >= 8 {
		sum += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
	}
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	return sum
}

// foldChecksum folds a running sum into 16 bits.
func foldChecksum(sum uint64) uint16 {
	for sum > 0xffff {
		sum = (sum >> 16) + (sum & 0xffff)
	}
	return uint16(sum)
}

// setTCPChecksum recomputes the TCP checksum of the packet pkt whose TCP
// header starts at tcpOff, over the IPv4 or IPv6 pseudo-header. The kernel
// has already resolved any checksum offload before queueing, and treats a
// modified packet as unchecksummed, so the value must be complete.
func setTCPChecksum(pkt []byte, v6 bool, tcpOff int) {
	seg := pkt[tcpOff:]
	seg[16], seg[17] = 0, 0
	binary.BigEndian.PutUint16(seg[16:18], ^foldChecksum(tcpChecksumSum(pkt, v6, tcpOff)))
}

// tcpChecksumSum is the unfolded one's-complement sum of the TCP
// pseudo-header and the segment of pkt, checksum field included: it folds
// to 0xffff when the checksum is right.
func tcpChecksumSum(pkt []byte, v6 bool, tcpOff int) uint64 {
	seg := pkt[tcpOff:]
	var sum uint64
	if v6 {
		sum = sum16(pkt[8:40], 0) // source and destination
	} else {
		sum = sum16(pkt[12:20], 0)
	}
	sum += 6 + uint64(len(seg)) // protocol and TCP length
	return sum16(seg, sum)
}
