package tokens

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bireme/bireme/identity"
)

// Defaults for Config fields left zero.
const (
	DefaultTokenLifetime   = 5 * time.Minute
	DefaultClockSkew       = 30 * time.Second
	DefaultPeerCacheSize   = 16384
	DefaultReplayCacheSize = 1 << 19
)

// Config configures an Engine.
type Config struct {
	// Credentials are this node's certificate and key.
	Credentials *NodeCredentials
	// Trust holds the CAs whose node certificates this node accepts.
	Trust *TrustBundle
	// TokenLifetime is how long a signed identity token is valid (default 5m).
	// Tokens are re-signed when half of it has passed.
	TokenLifetime time.Duration
	// ClockSkew is the tolerated difference between nodes' clocks (default 30s).
	ClockSkew time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// PeerCacheSize bounds the verified peer tokens kept, and the ECDH
	// secrets kept per local key (default 16384 each).
	PeerCacheSize int
	// ReplayCacheSize bounds the client nonces remembered (default 524288,
	// about 20 MB when full).
	ReplayCacheSize int
}

// Engine signs this node's workload identities, verifies peers', and runs
// both sides of the three-message handshake. It is safe for concurrent use.
//
// Costs: a SYN reuses a token signed once per identity per half lifetime; a
// peer token is verified (two ECDSA verifications) once and then found by
// its bytes; the ECDH with a peer node is computed once per key pair. A
// handshake with a known peer costs each side a few HMACs, two 16-byte
// random nonces and map lookups.
type Engine struct {
	lifetime time.Duration
	skew     time.Duration
	now      func() time.Time
	cacheMax int

	keys     atomic.Pointer[localKeys]
	verifier atomic.Pointer[verifier]
	replay   *replayCache
}

// verifier is a trust bundle with the caches of what was verified under it.
// SetTrust replaces it whole, so nothing verified under an old bundle
// survives a change of trust.
type verifier struct {
	trust *TrustBundle
	certs *byteCache[*verifiedCert] // by certificate DER
	// badCerts remembers certificates that can never verify (unknown CA,
	// wrong trust domain, malformed) so a misconfigured peer node costs one
	// ECDSA verification per minute, not one per SYN.
	badCerts *byteCache[error]
	peers    *byteCache[*peerToken] // by token encoding
}

func newVerifier(trust *TrustBundle, cacheMax int) *verifier {
	return &verifier{
		trust:    trust,
		certs:    newByteCache[*verifiedCert](cacheMax),
		badCerts: newByteCache[error](cacheMax),
		peers:    newByteCache[*peerToken](cacheMax),
	}
}

// localKeys is one generation of this node's credentials with what is
// derived from them. Rotation installs a new generation; handshakes keep the
// generation they started with, so they complete across a rotation.
type localKeys struct {
	creds   *NodeCredentials
	priv    *ecdh.PrivateKey
	certDER []byte
	secrets *byteCache[*pairKey] // per peer ECDH public key

	mu     sync.RWMutex
	tokens map[workloadRef]*localToken
}

// workloadRef keys the signed-token cache: one current token per workload.
type workloadRef struct{ namespace, pod string }

// localToken is a signed token of a local identity, ready to send.
type localToken struct {
	id        *identity.Identity // what was signed (a private copy)
	wire      []byte             // token encoding
	digest    [32]byte           // SHA-256 of wire, bound into the proofs
	jwt       string
	refreshAt time.Time
	expires   time.Time
}

// badCertMemory is how long a certificate that failed for a reason time
// cannot cure is rejected without being checked again.
const badCertMemory = time.Minute

// maxLocalTokens bounds the signed-token cache; a node hosts at most a few
// hundred workloads, each with one current identity.
const maxLocalTokens = 4096

// peerToken is a verified peer token with its digest, bound into proofs.
type peerToken struct {
	v      *verifiedToken
	digest [32]byte
}

// NewEngine checks cfg and builds an Engine.
func NewEngine(cfg Config) (*Engine, error) {
	if cfg.Trust == nil {
		return nil, errors.New("tokens engine: no trust bundle")
	}
	e := &Engine{
		lifetime: cfg.TokenLifetime,
		skew:     cfg.ClockSkew,
		now:      cfg.Now,
		cacheMax: cfg.PeerCacheSize,
	}
	if e.lifetime <= 0 {
		e.lifetime = DefaultTokenLifetime
	}
	if e.lifetime < 2*time.Second {
		return nil, fmt.Errorf("tokens engine: token lifetime %s is below 2s (tokens carry whole seconds)", e.lifetime)
	}
	if e.skew <= 0 {
		e.skew = DefaultClockSkew
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.cacheMax <= 0 {
		e.cacheMax = DefaultPeerCacheSize
	}
	replayMax := cfg.ReplayCacheSize
	if replayMax <= 0 {
		replayMax = DefaultReplayCacheSize
	}
	e.verifier.Store(newVerifier(cfg.Trust, e.cacheMax))
	e.replay = newReplayCache(replayMax, e.lifetime/8)
	keys, err := e.newLocalKeys(cfg.Credentials)
	if err != nil {
		return nil, fmt.Errorf("tokens engine: %w", err)
	}
	e.keys.Store(keys)
	return e, nil
}

func (e *Engine) newLocalKeys(creds *NodeCredentials) (*localKeys, error) {
	if creds == nil || creds.Cert == nil || creds.Key == nil {
		return nil, errors.New("node credentials: missing certificate or key")
	}
	td, node, err := CertTrustDomain(creds.Cert)
	if err != nil || node == "" {
		return nil, errors.New("node credentials: certificate names no spiffe://TRUST-DOMAIN/node/NAME")
	}
	if td != creds.TrustDomain || node != creds.Node {
		return nil, fmt.Errorf("node credentials: certificate is for %s/%s, credentials say %s/%s", td, node, creds.TrustDomain, creds.Node)
	}
	if !sameKey(creds.Cert, creds.Key) {
		return nil, errors.New("node credentials: key does not match certificate")
	}
	if len(creds.Cert.Raw) > 0xffff {
		return nil, errors.New("node credentials: certificate too large")
	}
	priv, err := creds.Key.ECDH()
	if err != nil {
		return nil, fmt.Errorf("node credentials: %w", err)
	}
	return &localKeys{
		creds:   creds,
		priv:    priv,
		certDER: creds.Cert.Raw,
		secrets: newByteCache[*pairKey](e.cacheMax),
		tokens:  map[workloadRef]*localToken{},
	}, nil
}

// Rotate installs new node credentials for the same trust domain. New
// handshakes use them at once; handshakes already started finish with the
// credentials they started with.
func (e *Engine) Rotate(creds *NodeCredentials) error {
	keys, err := e.newLocalKeys(creds)
	if err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	if td := e.TrustDomain(); creds.TrustDomain != td {
		return fmt.Errorf("rotate: credentials for trust domain %q, engine serves %q", creds.TrustDomain, td)
	}
	e.keys.Store(keys)
	return nil
}

// SetTrust replaces the trust bundle, for example to add the next CA
// before a CA rotation or to federate with another cluster. Peer tokens and
// certificates verified under the previous bundle are verified again;
// handshakes in flight keep the peer they already verified.
func (e *Engine) SetTrust(b *TrustBundle) error {
	if b == nil {
		return errors.New("set trust: no trust bundle")
	}
	e.verifier.Store(newVerifier(b, e.cacheMax))
	return nil
}

// TrustDomain returns the trust domain of this node's credentials: the
// cluster its workloads' tokens name.
func (e *Engine) TrustDomain() string { return e.keys.Load().creds.TrustDomain }

// localToken returns the signed token of local, signing it if there is no
// current one (first use, label change, half its lifetime passed, rotation).
func (e *Engine) localToken(keys *localKeys, local *identity.Identity, now time.Time) (*localToken, error) {
	if local == nil {
		return nil, errors.New("no local identity")
	}
	// A shallow copy, only read. Errors format id.String(), not &id, so the
	// copy stays on the stack of this per-connection call.
	id := *local
	if id.Cluster == "" {
		id.Cluster = keys.creds.TrustDomain
	}
	if id.Cluster != keys.creds.TrustDomain {
		return nil, fmt.Errorf("identity %s: this node signs for cluster %q only", id.String(), keys.creds.TrustDomain)
	}
	if id.Namespace == "" || id.Pod == "" {
		return nil, fmt.Errorf("identity %s: namespace and pod are required", id.String())
	}
	// Comparing with what was signed is cheaper than a digest of the
	// identity, and catches any change (labels, ports, service account).
	ref := workloadRef{id.Namespace, id.Pod}
	keys.mu.RLock()
	t := keys.tokens[ref]
	keys.mu.RUnlock()
	if t != nil && now.Before(t.refreshAt) && sameIdentity(t.id, &id) {
		return t, nil
	}

	iat := now.Truncate(time.Second)
	exp := iat.Add(e.lifetime)
	if na := keys.creds.Cert.NotAfter; na.Before(exp) {
		exp = na.Truncate(time.Second)
	}
	if !exp.After(iat) {
		return nil, fmt.Errorf("node certificate of %s expired at %s", keys.creds.Node, keys.creds.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	jwtString, payload, sig, err := signClaims(claimsFor(&id, keys.creds.Node, iat, exp), keys.creds.Key)
	if err != nil {
		return nil, fmt.Errorf("identity %s: %w", id.String(), err)
	}
	if len(payload) > 0xffff {
		return nil, fmt.Errorf("identity %s: claims too large (%d bytes)", id.String(), len(payload))
	}
	wire := encodeToken(keys.certDER, payload, sig)
	t = &localToken{
		id:        id.Clone(),
		wire:      wire,
		digest:    sha256.Sum256(wire),
		jwt:       jwtString,
		refreshAt: iat.Add(exp.Sub(iat) / 2),
		expires:   exp,
	}
	keys.mu.Lock()
	if len(keys.tokens) >= maxLocalTokens {
		for k, old := range keys.tokens {
			if !now.Before(old.refreshAt) {
				delete(keys.tokens, k)
			}
		}
		for k := range keys.tokens {
			if len(keys.tokens) < maxLocalTokens {
				break
			}
			delete(keys.tokens, k)
		}
	}
	keys.tokens[ref] = t
	keys.mu.Unlock()
	return t, nil
}

// sameIdentity reports whether a and b are the same identity field by field
// (ports in the same order).
func sameIdentity(a, b *identity.Identity) bool {
	return a.Cluster == b.Cluster && a.Namespace == b.Namespace && a.Pod == b.Pod &&
		a.ServiceAccount == b.ServiceAccount &&
		maps.Equal(a.Labels, b.Labels) && maps.Equal(a.NamespaceLabels, b.NamespaceLabels) &&
		slices.Equal(a.Ports, b.Ports)
}

// verifyPeer returns the verified token encoded in wire, from the cache or
// by verifying it.
func (e *Engine) verifyPeer(t wireToken, now time.Time) (*peerToken, error) {
	vf := e.verifier.Load()
	if p, ok := vf.peers.get(t.raw, now); ok {
		if err := p.v.checkTime(now, e.skew); err != nil {
			return nil, err
		}
		return p, nil
	}
	vc, ok := vf.certs.get(t.cert, now)
	if !ok {
		if err, bad := vf.badCerts.get(t.cert, now); bad {
			return nil, err
		}
		var err error
		if vc, err = vf.trust.verifyCert(t.cert, now, e.skew); err != nil {
			switch ReasonOf(err) {
			case ReasonUnknownCA, ReasonWrongTrustDomain, ReasonMalformed:
				vf.badCerts.put(t.cert, err, now.Add(badCertMemory), now)
			}
			return nil, err
		}
		vf.certs.put(t.cert, vc, vc.notAfter.Add(e.skew), now)
	}
	v, err := verifyClaims(vc, t.payload, t.sig, now, e.skew)
	if err != nil {
		return nil, err
	}
	p := &peerToken{v: v, digest: sha256.Sum256(t.raw)}
	vf.peers.put(t.raw, p, v.notAfter.Add(e.skew), now)
	return p, nil
}

// pairKey returns the cached key shared by this node's key and the peer's.
func (keys *localKeys) pairKey(p *peerToken, now time.Time) (*pairKey, error) {
	vc := p.v.cert
	if k, ok := keys.secrets.get(vc.pubBytes, now); ok {
		return k, nil
	}
	k, err := newPairKey(keys.priv, vc.ecdhPub)
	if err != nil {
		return nil, err
	}
	keys.secrets.put(vc.pubBytes, k, time.Time{}, now)
	return k, nil
}

func newNonce() (n [NonceSize]byte) {
	rand.Read(n[:]) // crypto/rand.Read never fails (it crashes the program instead)
	return n
}

// ClientHandshake is the client side of one handshake, from the SYN it sent
// to the ACK it answers with.
type ClientHandshake struct {
	e     *Engine
	keys  *localKeys
	nonce [NonceSize]byte
	token *localToken

	mu   sync.Mutex
	peer *peerToken
	ack  [ACKSize]byte
}

// NewSYN starts a client handshake for the local workload: its signed
// identity token and a fresh nonce. Call it for every SYN sent, including
// retransmissions: a server rejects a nonce it has seen.
func (e *Engine) NewSYN(local *identity.Identity) ([]byte, *ClientHandshake, error) {
	keys := e.keys.Load()
	t, err := e.localToken(keys, local, e.now())
	if err != nil {
		return nil, nil, fmt.Errorf("new SYN: %w", err)
	}
	c := &ClientHandshake{e: e, keys: keys, nonce: newNonce(), token: t}
	payload := appendSYN(make([]byte, 0, 1+NonceSize+len(t.wire)), &c.nonce, t.wire)
	return payload, c, nil
}

// Nonce returns the client nonce this handshake's SYN carried.
func (c *ClientHandshake) Nonce() [NonceSize]byte { return c.nonce }

// ConsumeSYNACK verifies the server's SYN-ACK payload: that it echoes this
// handshake's nonce, that the server token is valid, and that the server's
// proof is bound to both nonces and both tokens under the key only the two
// nodes share. It returns the verified server identity.
func (c *ClientHandshake) ConsumeSYNACK(payload []byte) (*identity.Identity, error) {
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
	serverProof, clientProof, err := handshakeProofs(k, &c.nonce, &m.serverNonce, &c.token.digest, &p.digest)
	if err != nil {
		return nil, reject(ReasonBadProof, "%v", err)
	}
	if subtle.ConstantTimeCompare(serverProof[:], m.proof[:]) != 1 {
		return nil, reject(ReasonBadProof, "server proof of %s does not verify", p.v.id)
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

// ServerHandshake is the server side of one handshake, from the verified SYN
// to the verified ACK.
type ServerHandshake struct {
	e           *Engine
	clientNonce [NonceSize]byte
	client      *peerToken

	// Set by the first NewSYNACK and kept, so that a retransmitted SYN-ACK
	// carries the same bytes; the payload itself is rebuilt from them rather
	// than stored and copied, one allocation less per connection.
	mu          sync.Mutex
	token       *localToken // nil until a SYN-ACK was built
	serverNonce [NonceSize]byte
	serverProof [ProofSize]byte
	clientProof [ProofSize]byte
}

// ConsumeSYN verifies a SYN payload: the client's token (certificate chain,
// trust domain, validity, signature) and that its nonce is new.
func (e *Engine) ConsumeSYN(payload []byte) (*ServerHandshake, error) {
	m, err := parseSYN(payload)
	if err != nil {
		return nil, err
	}
	now := e.now()
	p, err := e.verifyPeer(m.token, now)
	if err != nil {
		return nil, err
	}
	if e.replay.check(m.clientNonce, p.v.notAfter.Add(e.skew), now) {
		return nil, reject(ReasonReplayed, "client nonce of %s already seen", p.v.id)
	}
	return &ServerHandshake{e: e, clientNonce: m.clientNonce, client: p}, nil
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

// NewSYNACK returns the SYN-ACK payload for the local (server) workload: its
// token, a fresh server nonce, the echoed client nonce and the server proof.
// Called again (a retransmitted SYN-ACK) it returns the same bytes.
func (s *ServerHandshake) NewSYNACK(local *identity.Identity) ([]byte, error) {
	if s == nil || s.e == nil || s.client == nil {
		return nil, errors.New("new SYN-ACK: no server handshake (not made by ConsumeSYN)")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.token == nil {
		if err := s.prepareSYNACK(local); err != nil {
			return nil, fmt.Errorf("new SYN-ACK: %w", err)
		}
	}
	t := s.token
	return appendSYNACK(make([]byte, 0, 1+2*NonceSize+len(t.wire)+ProofSize), &s.clientNonce, &s.serverNonce, t.wire, &s.serverProof), nil
}

// prepareSYNACK signs (or finds) the local token, draws the server nonce and
// computes both proofs; s.mu is held.
func (s *ServerHandshake) prepareSYNACK(local *identity.Identity) error {
	now := s.e.now()
	keys := s.e.keys.Load()
	t, err := s.e.localToken(keys, local, now)
	if err != nil {
		return err
	}
	k, err := keys.pairKey(s.client, now)
	if err != nil {
		return err
	}
	ns := newNonce()
	serverProof, clientProof, err := handshakeProofs(k, &s.clientNonce, &ns, &s.client.digest, &t.digest)
	if err != nil {
		return err
	}
	s.token, s.serverNonce, s.serverProof, s.clientProof = t, ns, serverProof, clientProof
	return nil
}

// ConsumeACK verifies the client's proof in the ACK payload.
func (s *ServerHandshake) ConsumeACK(payload []byte) error {
	if s == nil || s.client == nil {
		return reject(ReasonBadProof, "no server handshake (not made by ConsumeSYN)")
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
	if subtle.ConstantTimeCompare(proof[:], s.clientProof[:]) != 1 {
		return reject(ReasonBadProof, "client proof of %s does not verify", s.client.v.id)
	}
	return nil
}

// SignJWT returns the identity token of local in its JWT form (ES256, the
// same claims and signature the SYN carries), signed by this node.
func (e *Engine) SignJWT(local *identity.Identity) (string, error) {
	t, err := e.localToken(e.keys.Load(), local, e.now())
	if err != nil {
		return "", fmt.Errorf("sign JWT: %w", err)
	}
	return t.jwt, nil
}

// VerifyJWT verifies an identity token in JWT form against the node
// certificate that signed it, with the same checks as a SYN's token. It
// returns the identity and the issuing node's name.
func (e *Engine) VerifyJWT(token string, nodeCert *x509.Certificate) (*identity.Identity, string, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[0] != jwtHeaderB64 {
		return nil, "", reject(ReasonMalformed, "JWT: want three parts with header %s", jwtHeader)
	}
	if nodeCert == nil {
		return nil, "", reject(ReasonMalformed, "JWT: no node certificate")
	}
	payload, err1 := decodeSegment(parts[1])
	sig, err2 := decodeSegment(parts[2])
	if err := errors.Join(err1, err2); err != nil {
		return nil, "", reject(ReasonMalformed, "JWT: %v", err)
	}
	now := e.now()
	vc, err := e.verifier.Load().trust.verifyParsedCert(nodeCert, now, e.skew)
	if err != nil {
		return nil, "", err
	}
	v, err := verifyClaims(vc, payload, sig, now, e.skew)
	if err != nil {
		return nil, "", err
	}
	return v.id, v.node, nil
}
