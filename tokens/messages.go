package tokens

import (
	"encoding/binary"
)

// Wire format, version 1. Every message starts with one type byte whose high
// nibble is the version. All integers are big-endian. See docs/protocol.md.
//
//	token  = certLen(2) cert(certLen) claimsLen(2) claims(claimsLen) sig(64)
//	SYN    = 0x11 Nc(16) token
//	SYNACK = 0x12 Nc(16) Ns(16) token proofS(16)
//	ACK    = 0x13 proofC(16)
const (
	typeSYN    byte = 0x11
	typeSYNACK byte = 0x12
	typeACK    byte = 0x13
)

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
	token       wireToken
}

func parseSYN(b []byte) (synMsg, error) {
	var m synMsg
	if len(b) < 1+NonceSize || b[0] != typeSYN {
		return m, reject(ReasonMalformed, "SYN payload: not a Bireme v1 SYN")
	}
	copy(m.clientNonce[:], b[1:])
	t, err := parseToken(b[1+NonceSize:])
	if err != nil {
		return m, err
	}
	m.token = t
	return m, nil
}

func appendSYN(dst []byte, clientNonce *[NonceSize]byte, token []byte) []byte {
	dst = append(dst, typeSYN)
	dst = append(dst, clientNonce[:]...)
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
	if len(b) < 1+2*NonceSize+ProofSize || b[0] != typeSYNACK {
		return m, reject(ReasonMalformed, "SYN-ACK payload: not a Bireme v1 SYN-ACK")
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
	if len(b) != ACKSize || b[0] != typeACK {
		return p, reject(ReasonMalformed, "ACK payload: not a Bireme v1 ACK (%d bytes)", len(b))
	}
	copy(p[:], b[1:])
	return p, nil
}

// SYNACKClientNonce returns the client nonce a SYN-ACK payload echoes,
// without verifying anything, so that a datapath holding several client
// handshakes for one connection (SYN retransmissions each carry a fresh
// nonce) can pick the one to call ConsumeSYNACK on.
func SYNACKClientNonce(payload []byte) (nonce [NonceSize]byte, ok bool) {
	if len(payload) < 1+NonceSize || payload[0] != typeSYNACK {
		return nonce, false
	}
	copy(nonce[:], payload[1:])
	return nonce, true
}
