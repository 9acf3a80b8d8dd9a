package tokens

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"

	"github.com/bireme/bireme/identity"
)

// The client side of the handshake: the SYN it sends (NewSYN), the server's
// SYN-ACK it verifies (ConsumeSYNACK) and the ACK proof it answers with
// (NewACK).

// ClientHandshake is the client side of one handshake, from the SYN it sent
// to the ACK it answers with.
type ClientHandshake struct {
	e     *Engine
	keys  *localKeys
	nonce [NonceSize]byte
	token *localToken
	// conn is the connection the SYN was sent on: the proofs must bind it.
	conn Endpoints
	// server is the node key the SYN's MAC was made for, nil for a
	// three-message SYN; ts the SYN2's timestamp.
	server *knownServer
	ts     uint64

	mu   sync.Mutex
	peer *peerToken
	ack  [ACKSize]byte
	// twoMessage: the verified SYN-ACK was a SYN-ACK2, there is no ACK
	// proof to send.
	twoMessage bool
}

// NewSYN starts a client handshake for the local workload on conn (its
// source, the destination it dialed and the SYN's sequence number): its
// signed identity token, a fresh nonce and conn's addresses. Call it for
// every SYN sent, including retransmissions: a server rejects a nonce it
// has seen.
func (e *Engine) NewSYN(local *identity.Identity, conn Endpoints) ([]byte, *ClientHandshake, error) {
	keys := e.keys.Load()
	now := e.now()
	t, err := e.localToken(keys, local, now)
	if err != nil {
		return nil, nil, fmt.Errorf("new SYN: %w", err)
	}
	c := &ClientHandshake{e: e, keys: keys, nonce: newNonce(), token: t, conn: conn}
	if ks := e.knownServerAt(keys, &conn, now); ks != nil {
		// A known server node: a SYN2, which it may complete in two
		// messages (or answer as the SYN it also is).
		c.server, c.ts = ks, uint64(now.UnixMilli())
		mac, err := syn2MAC(ks.pair, &c.nonce, c.ts, &ks.keyID, &t.digest, &c.conn)
		if err != nil {
			return nil, nil, fmt.Errorf("new SYN: %w", err)
		}
		payload := appendSYN2(make([]byte, 0, 1+NonceSize+wireEndpointsSize6+tsSize+keyIDSize+ProofSize+len(t.wire)),
			&c.nonce, &c.conn, c.ts, &ks.keyID, &mac, t.wire)
		return payload, c, nil
	}
	payload := appendSYN(make([]byte, 0, 1+NonceSize+wireEndpointsSize6+len(t.wire)), &c.nonce, &c.conn, t.wire)
	return payload, c, nil
}

// TwoMessage reports whether the SYN-ACK this handshake verified completed
// it in two messages: the connection is authorized, and there is no ACK
// proof to send (NewACK fails).
func (c *ClientHandshake) TwoMessage() bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.twoMessage
}

// FallbackReason is FallbackDeclined when this handshake sent a
// two-message SYN and the SYN-ACK it verified completed it in three
// messages, "" otherwise (a three-message SYN, a two-message completion,
// or no SYN-ACK verified yet).
func (c *ClientHandshake) FallbackReason() FallbackReason {
	if c == nil || c.server == nil {
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.peer == nil || c.twoMessage {
		return ""
	}
	return FallbackDeclined
}

// consumeSYNACK2 verifies a SYN-ACK2: it answers this handshake's SYN2,
// comes from the server node key the SYN2's MAC was made for, and proves
// it over this connection and both ISNs.
func (c *ClientHandshake) consumeSYNACK2(payload []byte, serverISN uint32) (*identity.Identity, error) {
	if c.server == nil {
		return nil, reject(ReasonBadProof, "two-message SYN-ACK answers a three-message SYN")
	}
	m, err := parseSYNACK2(payload)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(m.clientNonce[:], c.nonce[:]) != 1 {
		return nil, reject(ReasonBadProof, "SYN-ACK does not echo this handshake's nonce")
	}
	now := c.e.now()
	p, err := c.e.verifyPeer(m.token, now)
	if err != nil {
		return nil, err
	}
	// The proof is under the key the client chose; a token of another
	// node must not ride on it (that node would speak for pods it does
	// not hold the key of).
	if subtle.ConstantTimeCompare(p.v.cert.pubBytes, c.server.pub) != 1 {
		return nil, reject(ReasonBadProof, "two-message SYN-ACK token of %s is not signed by the node key the SYN was made for", p.v.id)
	}
	proof, err := synack2Proof(c.server.pair, &c.nonce, c.ts, &c.token.digest, &p.digest, &c.conn, serverISN)
	if err != nil {
		return nil, reject(ReasonBadProof, "%v", err)
	}
	if subtle.ConstantTimeCompare(proof[:], m.proof[:]) != 1 {
		return nil, reject(ReasonBadProof, "server proof of %s does not verify for %s (relayed, or forged)", p.v.id, c.conn)
	}
	c.mu.Lock()
	c.peer = p
	c.twoMessage = true
	c.mu.Unlock()
	return p.v.id.Clone(), nil
}

// Nonce returns the client nonce this handshake's SYN carried.
func (c *ClientHandshake) Nonce() [NonceSize]byte { return c.nonce }

// ConsumeSYNACK verifies the server's SYN-ACK payload, whose packet
// carried the sequence number serverISN: that it echoes this handshake's
// nonce, that the server token is valid, and that the server's proof is
// bound to both nonces, both tokens and this connection (the address the
// client dialed, its own, both ISNs) under the key only the two nodes
// share. It returns the verified server identity: the workload that
// answers at the dialed address, on which the egress decision is made.
func (c *ClientHandshake) ConsumeSYNACK(payload []byte, serverISN uint32) (*identity.Identity, error) {
	if c == nil || c.e == nil || c.keys == nil || c.token == nil {
		return nil, reject(ReasonBadProof, "no client handshake (not made by NewSYN)")
	}
	if len(payload) > 0 && payload[0] == typeSYNACK2 {
		return c.consumeSYNACK2(payload, serverISN)
	}
	m, err := parseSYNACK(payload)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(m.clientNonce[:], c.nonce[:]) != 1 {
		return nil, reject(ReasonBadProof, "SYN-ACK does not echo this handshake's nonce")
	}
	now := c.e.now()
	p, err := c.e.verifyPeer(m.token, now)
	if err != nil {
		return nil, err
	}
	k, err := c.keys.pairKey(p, now)
	if err != nil {
		return nil, reject(ReasonBadProof, "%v", err)
	}
	serverProof, clientProof, err := handshakeProofs(k, &c.nonce, &m.serverNonce, &c.token.digest, &p.digest, &c.conn, serverISN)
	if err != nil {
		return nil, reject(ReasonBadProof, "%v", err)
	}
	if subtle.ConstantTimeCompare(serverProof[:], m.proof[:]) != 1 {
		// Either a forged proof, or a genuine one of p for another
		// connection: a relay that passed our SYN on to p from elsewhere.
		return nil, reject(ReasonBadProof, "server proof of %s does not verify for %s (relayed, or forged)", p.v.id, c.conn)
	}
	c.mu.Lock()
	c.peer = p
	c.twoMessage = false
	c.ack[0] = typeACK
	copy(c.ack[1:], clientProof[:])
	c.mu.Unlock()
	// The server node proved its key at the address this client dialed:
	// the next SYN there can be a SYN2.
	c.e.learnServer(c.keys, &c.conn, p, k, now)
	return p.v.id.Clone(), nil
}

// PeerNode returns the node name of the verified server ("" before
// ConsumeSYNACK succeeded).
func (c *ClientHandshake) PeerNode() string {
	if c == nil {
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.peer == nil {
		return ""
	}
	return c.peer.v.node
}

// NewACK returns the ACK payload (ACKSize bytes): the client proof. It fails
// until ConsumeSYNACK has succeeded.
func (c *ClientHandshake) NewACK() ([]byte, error) {
	if c == nil {
		return nil, errors.New("new ACK: no client handshake")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.peer == nil {
		return nil, errors.New("new ACK: no verified SYN-ACK")
	}
	if c.twoMessage {
		return nil, errors.New("new ACK: the handshake completed in two messages, there is no ACK proof")
	}
	return append([]byte(nil), c.ack[:]...), nil
}
