package tokens

import (
	"encoding/binary"
	"net/netip"
)

// Wire format, version 2. Every message starts with one type byte whose high
// nibble is the version. All integers are big-endian. See docs/protocol.md.
//
//	token     = certLen(2) cert(certLen) claimsLen(2) claims(claimsLen) sig(64)
//	endpoints = 4 clientAddr(4) clientPort(2) serverAddr(4) serverPort(2)
//	          | 6 clientAddr(16) clientPort(2) serverAddr(16) serverPort(2)
//	SYN       = 0x21 Nc(16) endpoints token
//	SYNACK    = 0x22 Nc(16) Ns(16) token proofS(16)
//	ACK       = 0x23 proofC(16)
//	SYN2      = 0x24 Nc(16) endpoints ts(8) keyID(8) mac(16) token   (twomessage.go)
//	SYNACK2   = 0x25 Nc(16) token proofS(16)
//
// The SYN's endpoints are the client's view of the connection (its source,
// the destination it dialed); both proofs bind them (keyschedule.go).
// Version 1 (0x11..0x13, no endpoints, proofs bound to no connection) is
// refused with ReasonUnsupportedVersion: accepting it would reopen the
// relay that v2 closes, so there is no downgrade.
const (
	protocolVersion byte = 2

	typeSYN    byte = protocolVersion<<4 | 1
	typeSYNACK byte = protocolVersion<<4 | 2
	typeACK    byte = protocolVersion<<4 | 3
)

// checkType refuses a message whose type byte is not want, naming the
// version when that is what differs.
func checkType(b []byte, want byte, what string) error {
	switch {
	case len(b) == 0:
		return reject(ReasonMalformed, "%s payload: empty", what)
	case b[0] == want:
		return nil
	case b[0]>>4 != protocolVersion && b[0]&0x0f == want&0x0f:
		return reject(ReasonUnsupportedVersion, "%s of Bireme protocol version %d, this node speaks only version %d", what, b[0]>>4, protocolVersion)
	default:
		return reject(ReasonMalformed, "%s payload: type byte 0x%02x, want 0x%02x", what, b[0], want)
	}
}

// Sizes of the fixed parts of the messages.
const (
	// NonceSize is the size of the client and server nonces.
	NonceSize = 16
	// ProofSize is the size of the truncated HMAC-SHA256 proofs.
	ProofSize = 16
	// ACKSize is the size of the ACK payload: type byte and client proof.
	ACKSize = 1 + ProofSize
)

// wireToken is a token as carried: the node certificate, the JWT payload and
// the ES256 signature, all sub-slices of raw (the whole token encoding).
type wireToken struct {
	raw     []byte
	cert    []byte
	payload []byte
	sig     []byte
}

// encodeToken builds the token encoding.
func encodeToken(cert, payload, sig []byte) []byte {
	b := make([]byte, 0, 2+len(cert)+2+len(payload)+len(sig))
	b = binary.BigEndian.AppendUint16(b, uint16(len(cert)))
	b = append(b, cert...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(payload)))
	b = append(b, payload...)
	return append(b, sig...)
}

// parseToken splits a token encoding; b must hold exactly one token.
func parseToken(b []byte) (wireToken, error) {
	t := wireToken{raw: b}
	rest := b
	var ok bool
	if t.cert, rest, ok = lengthPrefixed(rest); !ok || len(t.cert) == 0 {
		return wireToken{}, reject(ReasonMalformed, "token: bad certificate length")
	}
	if t.payload, rest, ok = lengthPrefixed(rest); !ok || len(t.payload) == 0 {
		return wireToken{}, reject(ReasonMalformed, "token: bad claims length")
	}
	if len(rest) != es256SigSize {
		return wireToken{}, reject(ReasonMalformed, "token: signature is %d bytes, want %d", len(rest), es256SigSize)
	}
	t.sig = rest
	return t, nil
}

func lengthPrefixed(b []byte) (field, rest []byte, ok bool) {
	if len(b) < 2 {
		return nil, nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b)-2 < n {
		return nil, nil, false
	}
	return b[2 : 2+n], b[2+n:], true
}

// synMsg is a parsed SYN payload.
type synMsg struct {
	clientNonce [NonceSize]byte
	// client and server are the connection as the client saw it.
	client, server netip.AddrPort
	token          wireToken

	// A SYN2 (twomessage.go) carries these too: the client's clock, which
	// key of the server node its MAC is for, and the MAC.
	twoMessage bool
	ts         uint64
	keyID      [keyIDSize]byte
	mac        [ProofSize]byte
}

// parseSYN reads a SYN or a SYN2.
func parseSYN(b []byte) (synMsg, error) {
	var m synMsg
	want := typeSYN
	if len(b) > 0 && b[0] == typeSYN2 {
		want, m.twoMessage = typeSYN2, true
	}
	if err := checkType(b, want, "SYN"); err != nil {
		return m, err
	}
	if len(b) < 1+NonceSize {
		return m, reject(ReasonMalformed, "SYN payload: %d bytes, shorter than its nonce", len(b))
	}
	copy(m.clientNonce[:], b[1:])
	var rest []byte
	var ok bool
	if m.client, m.server, rest, ok = parseWireEndpoints(b[1+NonceSize:]); !ok {
		return m, reject(ReasonMalformed, "SYN payload: bad endpoints")
	}
	if m.twoMessage {
		if len(rest) < tsSize+keyIDSize+ProofSize {
			return m, reject(ReasonMalformed, "two-message SYN payload: no room for timestamp, key ID and MAC")
		}
		m.ts = binary.BigEndian.Uint64(rest)
		copy(m.keyID[:], rest[tsSize:])
		copy(m.mac[:], rest[tsSize+keyIDSize:])
		rest = rest[tsSize+keyIDSize+ProofSize:]
	}
	t, err := parseToken(rest)
	if err != nil {
		return m, err
	}
	m.token = t
	return m, nil
}

func appendSYN(dst []byte, clientNonce *[NonceSize]byte, conn *Endpoints, token []byte) []byte {
	dst = append(dst, typeSYN)
	dst = append(dst, clientNonce[:]...)
	dst = appendWireEndpoints(dst, conn)
	return append(dst, token...)
}

// synAckMsg is a parsed SYN-ACK payload.
type synAckMsg struct {
	clientNonce [NonceSize]byte // the echo of the SYN's nonce
	serverNonce [NonceSize]byte
	token       wireToken
	proof       [ProofSize]byte
}

func parseSYNACK(b []byte) (synAckMsg, error) {
	var m synAckMsg
	if err := checkType(b, typeSYNACK, "SYN-ACK"); err != nil {
		return m, err
	}
	if len(b) < 1+2*NonceSize+ProofSize {
		return m, reject(ReasonMalformed, "SYN-ACK payload: %d bytes, shorter than its fixed fields", len(b))
	}
	copy(m.clientNonce[:], b[1:])
	copy(m.serverNonce[:], b[1+NonceSize:])
	end := len(b) - ProofSize
	copy(m.proof[:], b[end:])
	t, err := parseToken(b[1+2*NonceSize : end])
	if err != nil {
		return m, err
	}
	m.token = t
	return m, nil
}

func appendSYNACK(dst []byte, clientNonce, serverNonce *[NonceSize]byte, token []byte, proof *[ProofSize]byte) []byte {
	dst = append(dst, typeSYNACK)
	dst = append(dst, clientNonce[:]...)
	dst = append(dst, serverNonce[:]...)
	dst = append(dst, token...)
	return append(dst, proof[:]...)
}

func parseACK(b []byte) ([ProofSize]byte, error) {
	var p [ProofSize]byte
	if err := checkType(b, typeACK, "ACK"); err != nil {
		return p, err
	}
	if len(b) != ACKSize {
		return p, reject(ReasonMalformed, "ACK payload: %d bytes, want %d", len(b), ACKSize)
	}
	copy(p[:], b[1:])
	return p, nil
}

// SYNACKClientNonce returns the client nonce a SYN-ACK payload echoes,
// without verifying anything, so that a datapath holding several client
// handshakes for one connection (SYN retransmissions each carry a fresh
// nonce) can pick the one to call ConsumeSYNACK on.
func SYNACKClientNonce(payload []byte) (nonce [NonceSize]byte, ok bool) {
	if len(payload) < 1+NonceSize || (payload[0] != typeSYNACK && payload[0] != typeSYNACK2) {
		return nonce, false
	}
	copy(nonce[:], payload[1:])
	return nonce, true
}
