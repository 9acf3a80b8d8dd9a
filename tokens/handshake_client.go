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

	mu   sync.Mutex
	peer *peerToken
	ack  [ACKSize]byte
}

// NewSYN starts a client handshake for the local workload on conn (its
// source, the destination it dialed and the SYN's sequence number): its
// signed identity token, a fresh nonce and conn's addresses. Call it for
// every SYN sent, including retransmissions: a server rejects a nonce it
// has seen.
func (e *Engine) NewSYN(local *identity.Identity, conn Endpoints) ([]byte, *ClientHandshake, error) {
	keys := e.keys.Load()
	t, err := e.localToken(keys, local, e.now())
	if err != nil {
		return nil, nil, fmt.Errorf("new SYN: %w", err)
	}
	c := &ClientHandshake{e: e, keys: keys, nonce: newNonce(), token: t, conn: conn}
	payload := appendSYN(make([]byte, 0, 1+NonceSize+wireEndpointsSize6+len(t.wire)), &c.nonce, &c.conn, t.wire)
	return payload, c, nil
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
	c.ack[0] = typeACK
	copy(c.ack[1:], clientProof[:])
	c.mu.Unlock()
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
	return append([]byte(nil), c.ack[:]...), nil
}
