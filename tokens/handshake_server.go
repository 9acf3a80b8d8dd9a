package tokens

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"

	"github.com/bireme/bireme/identity"
)

// The server side of the handshake: the client's SYN it verifies
// (VerifySYN, then RecordNonce once accepted; ConsumeSYN does both), the
// SYN-ACK it answers with (NewSYNACK) and the client's ACK
// proof it checks (ConsumeACK).

// ServerHandshake is the server side of one handshake, from the verified SYN
// to the verified ACK.
type ServerHandshake struct {
	e           *Engine
	clientNonce [NonceSize]byte
	client      *peerToken
	// conn is the connection as the client claimed it, checked against
	// what this server observed; the proofs bind it.
	conn Endpoints
	// twoMessage: the SYN was a SYN2 that passed every two-message check
	// (twomessage.go) with keys; fallback says why a SYN2 did not (empty
	// for a three-message SYN). ts is the SYN2's timestamp.
	twoMessage bool
	fallback   string
	fallbackR  FallbackReason
	keys       *localKeys
	ts         uint64

	// Set by the first NewSYNACK and kept, so that a retransmitted SYN-ACK
	// carries the same bytes; the payload itself is rebuilt from them rather
	// than stored and copied, one allocation less per connection.
	mu sync.Mutex
	// nonceRecorded: the client nonce is in the replay cache (RecordNonce).
	nonceRecorded bool
	token         *localToken // nil until a SYN-ACK was built
	serverNonce   [NonceSize]byte
	serverProof   [ProofSize]byte
	clientProof   [ProofSize]byte
}

// ConsumeSYN verifies a SYN payload that arrived on observed and records
// its nonce: VerifySYN and RecordNonce in one.
func (e *Engine) ConsumeSYN(payload []byte, observed Endpoints) (*ServerHandshake, error) {
	s, err := e.VerifySYN(payload, observed)
	if err != nil {
		return nil, err
	}
	if err := s.RecordNonce(); err != nil {
		return nil, err
	}
	return s, nil
}

// VerifySYN verifies a SYN payload that arrived on observed (the client
// address and port as this server sees them, its own, and the SYN's
// sequence number): that the connection the client claims is this one
// (endpoint-mismatch otherwise, see Config.NATGateways), the client's token
// (certificate chain, trust domain, validity, signature) and that its
// nonce is new. It does not record the nonce: call RecordNonce once the
// handshake is accepted (policy allowed it), so that SYNs refused anyway —
// a flood of denied identities — cannot fill the replay cache and push out
// the nonces of accepted handshakes. NewSYNACK refuses to answer until the
// nonce is recorded.
func (e *Engine) VerifySYN(payload []byte, observed Endpoints) (*ServerHandshake, error) {
	return e.verifySYN(payload, observed, nil, nil)
}

// ErrNotAfforded is VerifySYNWithin's refusal when its afford refused the
// signature verification the SYN needed: the SYN was not verified.
var ErrNotAfforded = errors.New("SYN needs a signature verification the caller cannot afford")

// VerifySYNWithin is VerifySYN for a datapath that bounds the signature
// verifications (ECDSA) SYNs cost it: if payload needs one, afford is
// asked, once, before it is done, and if it refuses, VerifySYNWithin
// returns ErrNotAfforded. costly reports whether afford was asked (the SYN
// was not refused by a cheaper check first). Unlike SYNNeedsVerification
// followed by VerifySYN, it parses the SYN and looks its token up once.
func (e *Engine) VerifySYNWithin(payload []byte, observed Endpoints, afford func() bool) (s *ServerHandshake, costly bool, err error) {
	return e.VerifySYNVia(payload, observed, nil, afford)
}

// VerifySYNVia is VerifySYNWithin for a server that may be reached through
// destination NAT: a SYN whose claimed destination is not observed.Server
// is accepted when dnat (nil: none) vouches for the translation, and the
// proofs then bind the destination the client dialed, as the client sees
// it. Everything else is bound as without NAT.
func (e *Engine) VerifySYNVia(payload []byte, observed Endpoints, dnat Translation, afford func() bool) (s *ServerHandshake, costly bool, err error) {
	b := verifyBudget{afford: afford}
	s, err = e.verifySYN(payload, observed, dnat, &b)
	return s, b.asked, err
}

func (e *Engine) verifySYN(payload []byte, observed Endpoints, dnat Translation, b *verifyBudget) (*ServerHandshake, error) {
	m, err := parseSYN(payload)
	if err != nil {
		return nil, err
	}
	claimed := Endpoints{Client: m.client, Server: m.server, ClientISN: observed.ClientISN}
	// Before the signature check: a relayed SYN costs no ECDSA.
	if err := e.nat.checkClaimedEndpoints(&claimed, &observed, "", dnat); err != nil {
		return nil, err
	}
	now := e.now()
	p, err := e.verifyPeerWithin(m.token, now, b)
	if err != nil {
		return nil, err
	}
	if claimed.Client != observed.Client {
		if err := e.nat.checkClaimedEndpoints(&claimed, &observed, p.v.cert.trustDomain, dnat); err != nil {
			return nil, err
		}
	}
	if e.replay.seen(m.clientNonce, now) {
		return nil, reject(ReasonReplayed, "client nonce of %s already seen", p.v.id)
	}
	s := &ServerHandshake{e: e, clientNonce: m.clientNonce, client: p, conn: claimed}
	if m.twoMessage {
		keys := e.keys.Load()
		if s.fallbackR, s.fallback = e.checkTwoMessage(&m, p, keys, &claimed, &observed, now); s.fallbackR == "" {
			s.twoMessage, s.keys, s.ts = true, keys, m.ts
		}
	}
	return s, nil
}

// TwoMessage reports whether the handshake completes in two messages: the
// SYN was a fresh SYN2 whose MAC verified, so the client is proven now
// (once RecordNonce succeeded), and NewSYNACK answers with a SYN-ACK2. The
// datapath authorizes the connection at the SYN and expects no ACK proof.
func (s *ServerHandshake) TwoMessage() bool {
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.twoMessage
}

// Fallback says why a two-message SYN is answered with the three-message
// handshake ("" when it is not, or the SYN was a three-message one).
func (s *ServerHandshake) Fallback() string {
	if s == nil {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fallback
}

// FallbackReason is Fallback's typed cause, for flow records ("" when
// there was no fallback).
func (s *ServerHandshake) FallbackReason() FallbackReason {
	if s == nil {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fallbackR
}

// SYNNeedsVerification reports whether ConsumeSYN or VerifySYN of payload,
// arrived on observed, would verify a signature (an ECDSA verification,
// the expensive part): the SYN is not refused by a cheaper check first
// (malformed, relayed, claims expired or too long-lived under a known
// certificate), and its token was neither verified before nor remembered
// as invalid. It is VerifySYNWithin refusing every verification, so the
// two agree; it verifies nothing and keeps nothing of payload.
func (e *Engine) SYNNeedsVerification(payload []byte, observed Endpoints) bool {
	_, costly, _ := e.VerifySYNWithin(payload, observed, func() bool { return false })
	return costly
}

// RecordNonce records the client nonce of a handshake made by VerifySYN as
// used, until the client token expires. It fails with replayed-nonce if
// the nonce was recorded since VerifySYN checked it (the same SYN accepted
// twice). Calling it again on the same handshake does nothing.
func (s *ServerHandshake) RecordNonce() error {
	if s == nil || s.e == nil || s.client == nil {
		return reject(ReasonBadProof, "no server handshake (not made by VerifySYN)")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nonceRecorded {
		return nil
	}
	e := s.e
	now := e.now()
	if e.replay.check(s.clientNonce, s.client.v.notAfter.Add(e.skew), now) {
		return reject(ReasonReplayed, "client nonce of %s already seen", s.client.v.id)
	}
	s.nonceRecorded = true
	if s.twoMessage {
		// The register may have forgotten nonces since VerifySYN checked
		// the timestamp: then this SYN is no longer known to be fresh.
		if r, why := e.freshTimestamp(s.ts, now); r != "" {
			s.twoMessage, s.keys, s.fallbackR, s.fallback = false, nil, r, why
		}
	}
	return nil
}

// Peer returns a copy of the verified client identity.
func (s *ServerHandshake) Peer() *identity.Identity {
	if s == nil || s.client == nil {
		return nil
	}
	return s.client.v.id.Clone()
}

// PeerNode returns the node name of the verified client.
func (s *ServerHandshake) PeerNode() string {
	if s == nil || s.client == nil {
		return ""
	}
	return s.client.v.node
}

// NewSYNACK returns the SYN-ACK payload for the local (server) workload,
// whose SYN-ACK carries the sequence number serverISN: its token, a fresh
// server nonce, the echoed client nonce and the server proof. Called again
// (a retransmitted SYN-ACK) it returns the same bytes: the first call's
// ISN is kept, as the kernel retransmits with the same one.
func (s *ServerHandshake) NewSYNACK(local *identity.Identity, serverISN uint32) ([]byte, error) {
	if s == nil || s.e == nil || s.client == nil {
		return nil, errors.New("new SYN-ACK: no server handshake (not made by VerifySYN or ConsumeSYN)")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.nonceRecorded {
		// Answering a SYN whose nonce is not recorded would let the same
		// SYN be answered again and again.
		return nil, errors.New("new SYN-ACK: client nonce not recorded (RecordNonce)")
	}
	if s.token == nil {
		if err := s.prepareSYNACK(local, serverISN); err != nil {
			return nil, fmt.Errorf("new SYN-ACK: %w", err)
		}
	}
	t := s.token
	if s.twoMessage {
		return appendSYNACK2(make([]byte, 0, 1+NonceSize+len(t.wire)+ProofSize), &s.clientNonce, t.wire, &s.serverProof), nil
	}
	return appendSYNACK(make([]byte, 0, 1+2*NonceSize+len(t.wire)+ProofSize), &s.clientNonce, &s.serverNonce, t.wire, &s.serverProof), nil
}

// prepareSYNACK signs (or finds) the local token, draws the server nonce and
// computes both proofs; s.mu is held.
func (s *ServerHandshake) prepareSYNACK(local *identity.Identity, serverISN uint32) error {
	now := s.e.now()
	keys := s.e.keys.Load()
	if s.twoMessage {
		keys = s.keys // the key the client's MAC was verified under
	}
	t, err := s.e.localToken(keys, local, now)
	if err != nil {
		return err
	}
	k, err := keys.pairKey(s.client, now)
	if err != nil {
		return err
	}
	if s.twoMessage {
		proof, err := synack2Proof(k, &s.clientNonce, s.ts, &s.client.digest, &t.digest, &s.conn, serverISN)
		if err != nil {
			return err
		}
		s.token, s.serverProof = t, proof
		return nil
	}
	ns := newNonce()
	serverProof, clientProof, err := handshakeProofs(k, &s.clientNonce, &ns, &s.client.digest, &t.digest, &s.conn, serverISN)
	if err != nil {
		return err
	}
	s.token, s.serverNonce, s.serverProof, s.clientProof = t, ns, serverProof, clientProof
	return nil
}

// ConsumeACK verifies the client's proof in the ACK payload.
func (s *ServerHandshake) ConsumeACK(payload []byte) error {
	if s == nil || s.client == nil {
		return reject(ReasonBadProof, "no server handshake (not made by VerifySYN or ConsumeSYN)")
	}
	proof, err := parseACK(payload)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.token == nil {
		return reject(ReasonBadProof, "ACK before any SYN-ACK was sent")
	}
	if s.twoMessage {
		return reject(ReasonBadProof, "ACK proof for a handshake completed in two messages")
	}
	if subtle.ConstantTimeCompare(proof[:], s.clientProof[:]) != 1 {
		return reject(ReasonBadProof, "client proof of %s does not verify", s.client.v.id)
	}
	return nil
}
