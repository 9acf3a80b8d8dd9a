package tokens

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding"
	"encoding/binary"
	"fmt"
	"time"
)

// The two-message handshake for known peers (docs/protocol.md, "The
// two-message handshake"). When the client's node already shares a pair
// key with the server's node (it completed a handshake with the server's
// address before), its SYN proves the client node by a MAC under that
// key, fresh by a timestamp and a nonce the server remembers (a strike
// register), and bound to the connection. The server can then authorize
// at the SYN; its SYN-ACK proves the server node over both ISNs, and the
// client authorizes at the SYN-ACK: no ACK proof, so the ACK never visits
// either enforcer.
//
//	SYN2    = 0x24 Nc(16) endpoints ts(8) keyID(8) mac(16) token
//	SYNACK2 = 0x25 Nc(16) token proofS(16)
//
//	keyID  = SHA-256(server node public key, uncompressed point)[0:8]
//	mac    = HKDF-Expand(PRK, "bireme/v2 2msg syn" || Nc || ts || keyID || Hc || C || ISNc, 32)[0:16]
//	proofS = HKDF-Expand(PRK, "bireme/v2 2msg synack" || Nc || ts || Hc || Hs || C || ISNc || ISNs, 32)[0:16]
//
// ts is the client's clock in Unix milliseconds. Any SYN2 the server
// cannot take on this path (unknown key, stale or future timestamp, lost
// strike register, NAT, two-message disabled, MAC that does not verify)
// is handled exactly as the SYN it contains (Nc, endpoints, token): the
// three-message handshake, whose own proofs do not depend on anything the
// two-message fields say.
const (
	typeSYN2    byte = protocolVersion<<4 | 4
	typeSYNACK2 byte = protocolVersion<<4 | 5

	keyIDSize = 8
	tsSize    = 8

	syn2Info    = "bireme/v2 2msg syn"
	synack2Info = "bireme/v2 2msg synack"

	// DefaultTwoMessageWindow is Config.TwoMessageWindow's default.
	DefaultTwoMessageWindow = 3 * time.Second
)

// keyIDOf names a node public key in a SYN2: the client says which key of
// the server node its MAC is for, so that a server whose key changed (or
// an address now served by another node) falls back instead of failing.
func keyIDOf(pub []byte) (id [keyIDSize]byte) {
	sum := sha256.Sum256(pub)
	copy(id[:], sum[:])
	return id
}

// knownServer is what a client node remembers of the node that answered at
// an address: its key, for the next SYN to that address.
type knownServer struct {
	pub   []byte
	keyID [keyIDSize]byte
	pair  *pairKey
	// notAfter: the end of the key's certificate, for a key known from a
	// published certificate (hints.go); the cache expires the others.
	notAfter time.Time
}

// learnServer remembers the node key p proved at conn's server address,
// until p's certificate expires.
func (e *Engine) learnServer(keys *localKeys, conn *Endpoints, p *peerToken, pair *pairKey, now time.Time) {
	if !e.twoMessage {
		return
	}
	addr := conn.Server.Addr().As16()
	if k, ok := keys.known.get(addr[:], now); ok && subtle.ConstantTimeCompare(k.pub, p.v.cert.pubBytes) == 1 {
		return
	}
	keys.known.put(addr[:], &knownServer{pub: p.v.cert.pubBytes, keyID: keyIDOf(p.v.cert.pubBytes), pair: pair},
		p.v.cert.notAfter, now)
}

// knownServerAt returns the node key remembered for conn's server address:
// the one a handshake there proved, else the one a published certificate
// gives (hints.go), else nil.
func (e *Engine) knownServerAt(keys *localKeys, conn *Endpoints, now time.Time) *knownServer {
	if !e.twoMessage {
		return nil
	}
	addr := conn.Server.Addr().As16()
	if k, ok := keys.known.get(addr[:], now); ok {
		return k
	}
	return e.hintedServer(keys, &addr, now)
}

// expand is HKDF-Expand(PRK, info, 32) for info of at most 190 bytes: one
// HMAC with the pair's pre-hashed pads.
func (k *pairKey) expand(info []byte) (out [sha256.Size]byte, err error) {
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(k.inner); err != nil {
		return out, fmt.Errorf("HMAC state: %w", err)
	}
	h.Write(info)
	h.Write([]byte{0x01}) // HKDF-Expand block counter
	var sum [sha256.Size]byte
	inner := h.Sum(sum[:0])
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(k.outer); err != nil {
		return out, fmt.Errorf("HMAC state: %w", err)
	}
	h.Write(inner)
	h.Sum(out[:0])
	return out, nil
}

// syn2MAC is the client node's MAC in a SYN2.
func syn2MAC(k *pairKey, nc *[NonceSize]byte, ts uint64, keyID *[keyIDSize]byte, clientToken *[32]byte, conn *Endpoints) ([ProofSize]byte, error) {
	var info [len(syn2Info) + NonceSize + tsSize + keyIDSize + sha256.Size + proofEndpointsSize + 4]byte
	n := copy(info[:], syn2Info)
	n += copy(info[n:], nc[:])
	binary.BigEndian.PutUint64(info[n:], ts)
	n += tsSize
	n += copy(info[n:], keyID[:])
	n += copy(info[n:], clientToken[:])
	n = len(appendProofEndpoints(info[:n], conn))
	binary.BigEndian.PutUint32(info[n:], conn.ClientISN)
	var mac [ProofSize]byte
	p, err := k.expand(info[:])
	copy(mac[:], p[:])
	return mac, err
}

// synack2Proof is the server node's proof in a SYN-ACK2.
func synack2Proof(k *pairKey, nc *[NonceSize]byte, ts uint64, clientToken, serverToken *[32]byte, conn *Endpoints, serverISN uint32) ([ProofSize]byte, error) {
	var info [len(synack2Info) + NonceSize + tsSize + 2*sha256.Size + proofEndpointsSize + 2*4]byte
	n := copy(info[:], synack2Info)
	n += copy(info[n:], nc[:])
	binary.BigEndian.PutUint64(info[n:], ts)
	n += tsSize
	n += copy(info[n:], clientToken[:])
	n += copy(info[n:], serverToken[:])
	n = len(appendProofEndpoints(info[:n], conn))
	binary.BigEndian.PutUint32(info[n:], conn.ClientISN)
	binary.BigEndian.PutUint32(info[n+4:], serverISN)
	var proof [ProofSize]byte
	p, err := k.expand(info[:])
	copy(proof[:], p[:])
	return proof, err
}

// appendSYN2 builds a SYN2.
func appendSYN2(dst []byte, nc *[NonceSize]byte, conn *Endpoints, ts uint64, keyID *[keyIDSize]byte, mac *[ProofSize]byte, token []byte) []byte {
	dst = append(dst, typeSYN2)
	dst = append(dst, nc[:]...)
	dst = appendWireEndpoints(dst, conn)
	dst = binary.BigEndian.AppendUint64(dst, ts)
	dst = append(dst, keyID[:]...)
	dst = append(dst, mac[:]...)
	return append(dst, token...)
}

// appendSYNACK2 builds a SYN-ACK2.
func appendSYNACK2(dst []byte, nc *[NonceSize]byte, token []byte, proof *[ProofSize]byte) []byte {
	dst = append(dst, typeSYNACK2)
	dst = append(dst, nc[:]...)
	dst = append(dst, token...)
	return append(dst, proof[:]...)
}

// parseSYNACK2 reads a SYN-ACK2.
func parseSYNACK2(b []byte) (synAckMsg, error) {
	var m synAckMsg
	if err := checkType(b, typeSYNACK2, "SYN-ACK"); err != nil {
		return m, err
	}
	if len(b) < 1+NonceSize+ProofSize {
		return m, reject(ReasonMalformed, "two-message SYN-ACK payload: %d bytes, shorter than its fixed fields", len(b))
	}
	copy(m.clientNonce[:], b[1:])
	end := len(b) - ProofSize
	copy(m.proof[:], b[end:])
	t, err := parseToken(b[1+NonceSize : end])
	if err != nil {
		return m, err
	}
	m.token = t
	return m, nil
}

// FallbackReason is the typed cause of a two-message SYN answered with the
// three-message handshake. Like Reason it is short, stable and safe to
// log: the datapath puts it in flow records as is.
type FallbackReason string

// The reasons a two-message SYN falls back to three messages.
const (
	// FallbackDisabled: the server node has the two-message handshake off.
	FallbackDisabled FallbackReason = "disabled"
	// FallbackNAT: the client is behind a declared NAT gateway; the
	// two-message path binds the untranslated connection only.
	FallbackNAT FallbackReason = "nat"
	// FallbackUnknownKey: the MAC was made for another key than this
	// node's (its key rotated, the address moved to another node, or the
	// client's hint about the node was wrong).
	FallbackUnknownKey FallbackReason = "unknown-key"
	// FallbackStaleTimestamp: the SYN's timestamp is older than the
	// window (clocks apart, or a replay).
	FallbackStaleTimestamp FallbackReason = "stale-timestamp"
	// FallbackFutureTimestamp: the SYN's timestamp is ahead of the
	// server's clock by more than the window.
	FallbackFutureTimestamp FallbackReason = "future-timestamp"
	// FallbackRestart: the timestamp is not after the strike register's
	// start (the server restarted, or its register forgot nonces early).
	FallbackRestart FallbackReason = "restart"
	// FallbackNoPairKey: the server could not derive the pair key.
	FallbackNoPairKey FallbackReason = "no-pair-key"
	// FallbackBadMAC: the MAC does not verify.
	FallbackBadMAC FallbackReason = "bad-mac"
	// FallbackDeclined is the client's view: it sent a two-message SYN
	// and the server answered in three messages (the client is not told
	// why; the server's own record says).
	FallbackDeclined FallbackReason = "declined-by-server"
)

// checkTwoMessage decides whether a verified SYN2 may complete in two
// messages: "" if so, otherwise why it falls back to three (typed, and in
// words). The nonce was checked against the strike register by the
// caller; RecordNonce checks again as it records it.
func (e *Engine) checkTwoMessage(m *synMsg, p *peerToken, keys *localKeys, claimed, observed *Endpoints, now time.Time) (FallbackReason, string) {
	if !e.twoMessage {
		return FallbackDisabled, "two-message handshake disabled on this node"
	}
	if claimed.Client != observed.Client {
		return FallbackNAT, "client behind a declared NAT gateway"
	}
	if m.keyID != keys.keyID {
		return FallbackUnknownKey, "MAC made for another key of this node (rotated, or the address moved)"
	}
	if r, why := e.freshTimestamp(m.ts, now); r != "" {
		return r, why
	}
	k, err := keys.pairKey(p, now)
	if err != nil {
		return FallbackNoPairKey, err.Error()
	}
	mac, err := syn2MAC(k, &m.clientNonce, m.ts, &m.keyID, &p.digest, claimed)
	if err != nil {
		return FallbackNoPairKey, err.Error()
	}
	if subtle.ConstantTimeCompare(mac[:], m.mac[:]) != 1 {
		return FallbackBadMAC, "MAC does not verify"
	}
	return "", ""
}

// freshTimestamp says why a SYN2 timestamp (Unix ms, client clock) is not
// acceptable now, "" if it is: it must lie within the window around now,
// and after the strike register's horizon (this engine's start, or the
// last time the register forgot nonces early) plus the window, so that no
// SYN2 sent before the register lost track can be accepted again.
func (e *Engine) freshTimestamp(ts uint64, now time.Time) (FallbackReason, string) {
	if ts > uint64(1)<<62 {
		return FallbackFutureTimestamp, "timestamp out of range"
	}
	t := time.UnixMilli(int64(ts))
	w := e.twoMessageWindow
	switch {
	case t.Before(now.Add(-w)):
		return FallbackStaleTimestamp, fmt.Sprintf("timestamp %s older than the %s window (clocks apart, or replayed)", now.Sub(t).Round(time.Millisecond), w)
	case t.After(now.Add(w)):
		return FallbackFutureTimestamp, fmt.Sprintf("timestamp %s ahead of this node's clock (window %s)", t.Sub(now).Round(time.Millisecond), w)
	case !t.After(e.replay.horizon().Add(w)):
		return FallbackRestart, "timestamp not after this node's strike register started (restart) plus the window"
	}
	return "", ""
}
