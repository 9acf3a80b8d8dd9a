package tokens

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bireme/bireme/identity"
)

// This file holds the Engine: its configuration, construction, credential
// rotation and trust changes, the signed-token cache of local workloads and
// the verified-peer caches. The two sides of the handshake are in
// handshake_client.go and handshake_server.go, the JWT form of tokens in
// jwt.go.

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
	// ClockSkew is the tolerated difference between nodes' clocks (default
	// 30s), the one allowance for it: a peer's token is accepted up to
	// ClockSkew before its iat or nbf and after its exp, and certificates
	// likewise around their NotBefore and NotAfter.
	ClockSkew time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// PeerCacheSize bounds the verified peer tokens kept, and the ECDH
	// secrets kept per local key (default 16384 each).
	PeerCacheSize int
	// ReplayCacheSize bounds the client nonces remembered (default 524288,
	// about 20 MB when full).
	ReplayCacheSize int
	// MaxPeerTokenLifetime is the longest validity accepted in a peer's
	// token, from the earlier of its iat and nbf to its exp (default twice
	// TokenLifetime: 10 minutes with the default lifetime). It bounds how
	// long a token that a node signed wrongly, or that leaked, stays usable;
	// honest peers sign for TokenLifetime. Being relative to TokenLifetime,
	// the default keeps a cluster working while a rollout doubles the
	// lifetime at most; raise the lifetime more than that in steps. It may
	// not be below TokenLifetime, or peers configured alike would refuse
	// each other's tokens.
	MaxPeerTokenLifetime time.Duration
	// NATGateways declares the trust domains whose nodes reach this one
	// through source NAT, each with the address ranges of its gateways (the
	// translated source addresses). A SYN's claimed source must equal the
	// observed one, except for a client of a declared domain seen from one
	// of its gateways; the destination the client dialed must always be
	// this server. Empty: no NAT, every address is bound.
	NATGateways NATGateways
	// TwoMessage enables the two-message handshake with known peers
	// (twomessage.go, docs/protocol.md): as a client, a SYN to an address
	// whose node completed a handshake with this one before carries a MAC
	// under the nodes' pair key, and the handshake completes at the
	// SYN-ACK; as a server, such a SYN is accepted in two messages when
	// fresh. Off, this node sends only three-message SYNs and answers
	// every SYN, a two-message one included, with the three-message
	// handshake: the two kinds of node interoperate.
	TwoMessage bool
	// TwoMessageWindow is how far a two-message SYN's timestamp may be
	// from this node's clock, either way (default 3s), and how long after
	// a start (or a loss of remembered nonces) such SYNs fall back to
	// three messages. Nodes whose clocks differ by more use three messages.
	TwoMessageWindow time.Duration
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
	lifetime        time.Duration
	maxPeerLifetime time.Duration
	skew            time.Duration
	now             func() time.Time
	cacheMax        int

	keys     atomic.Pointer[localKeys]
	verifier atomic.Pointer[verifier]
	replay   *replayCache
	nat      NATGateways

	twoMessage       bool
	twoMessageWindow time.Duration

	// hints are the server addresses known from node certificates
	// published ahead of time (hints.go); hintInput what they were made
	// from, kept to make them again under rotated keys or new trust.
	hintsMu   sync.Mutex
	hintInput []NodeHint
	hints     atomic.Pointer[hintSet]
}

// verifier is a trust bundle with the caches of what was verified under it.
// SetTrust replaces it whole, so nothing verified under an old bundle
// survives a change of trust.
type verifier struct {
	trust *TrustBundle
	certs *byteCache[*verifiedCert] // by certificate DER
	// badCerts remembers certificates that can never verify (unknown CA,
	// wrong trust domain, wrong key usage, malformed) so a misconfigured
	// peer node costs one ECDSA verification per minute, not one per SYN.
	badCerts *byteCache[error]
	peers    *byteCache[*peerToken] // by token encoding
	// badTokens remembers tokens that failed for a reason time cannot
	// cure (bad signature, malformed claims, wrong trust domain, too long
	// a lifetime, expired), by the SHA-256 of their encoding, for
	// badTokenMemory:
	// a forged token replayed in a flood of SYNs costs a hash and a map
	// lookup, not an ECDSA verification each time. Keyed by the digest so
	// that a flood of large forged tokens does not hold their bytes.
	badTokens *byteCache[error]
}

func newVerifier(trust *TrustBundle, cacheMax int) *verifier {
	return &verifier{
		trust:     trust,
		certs:     newByteCache[*verifiedCert](cacheMax),
		badCerts:  newByteCache[error](cacheMax),
		peers:     newByteCache[*peerToken](cacheMax),
		badTokens: newByteCache[error](cacheMax),
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
	// keyID names this key in two-message SYNs made for it; known holds,
	// per server address (16 bytes), the node key that answered there
	// (twomessage.go).
	keyID [keyIDSize]byte
	known *byteCache[*knownServer]

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

// badTokenMemory is how long a token that failed for a reason time cannot
// cure is rejected without being checked again. Short: the entry only
// saves work, and a flood of distinct forged tokens churns the cache
// anyway (the datapath's verification budget bounds that case).
const badTokenMemory = time.Minute

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
		lifetime:         cfg.TokenLifetime,
		maxPeerLifetime:  cfg.MaxPeerTokenLifetime,
		skew:             cfg.ClockSkew,
		now:              cfg.Now,
		cacheMax:         cfg.PeerCacheSize,
		nat:              maps.Clone(cfg.NATGateways),
		twoMessage:       cfg.TwoMessage,
		twoMessageWindow: cfg.TwoMessageWindow,
	}
	if e.twoMessageWindow <= 0 {
		e.twoMessageWindow = DefaultTwoMessageWindow
	}
	for td, gateways := range e.nat {
		if td == "" || len(gateways) == 0 {
			return nil, fmt.Errorf("tokens engine: NAT declaration %q=%v: a trust domain and at least one gateway range are needed", td, gateways)
		}
		for _, g := range gateways {
			if !g.IsValid() {
				return nil, fmt.Errorf("tokens engine: NAT declaration for %q: invalid prefix", td)
			}
		}
	}
	if e.lifetime <= 0 {
		e.lifetime = DefaultTokenLifetime
	}
	if e.lifetime < 2*time.Second {
		return nil, fmt.Errorf("tokens engine: token lifetime %s is below 2s (tokens carry whole seconds)", e.lifetime)
	}
	if e.maxPeerLifetime <= 0 {
		e.maxPeerLifetime = 2 * e.lifetime
	}
	if e.maxPeerLifetime < e.lifetime {
		return nil, fmt.Errorf("tokens engine: max peer token lifetime %s is below the token lifetime %s: peers configured alike would refuse this node's tokens", e.maxPeerLifetime, e.lifetime)
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
	e.replay = newReplayCache(replayMax, e.lifetime/8, e.now())
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
	// Peers would refuse every token of such a certificate; say so at start.
	if err := checkNodeCertUsage(creds.Cert); err != nil {
		return nil, fmt.Errorf("node credentials: %w", err)
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
		keyID:   keyIDOf(priv.PublicKey().Bytes()),
		known:   newByteCache[*knownServer](e.cacheMax),
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
	e.reapplyHints()
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
	e.reapplyHints()
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
	return e.verifyPeerWithin(t, now, nil)
}

// verifyBudget lets a datapath bound the signature verifications a SYN
// costs (Engine.VerifySYNWithin): afford is asked, at most once, before the
// first one.
type verifyBudget struct {
	afford func() bool
	asked  bool
}

// take is called before a signature verification; it fails with
// ErrNotAfforded if afford refuses it.
func (b *verifyBudget) take() error {
	if b == nil || b.afford == nil || b.asked {
		return nil
	}
	b.asked = true
	if !b.afford() {
		return ErrNotAfforded
	}
	return nil
}

// verifyPeerWithin is verifyPeer, asking b before any signature
// verification.
func (e *Engine) verifyPeerWithin(t wireToken, now time.Time, b *verifyBudget) (*peerToken, error) {
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
		if err := b.take(); err != nil {
			return nil, err
		}
		var err error
		if vc, err = vf.trust.verifyCert(t.cert, now, e.skew); err != nil {
			switch ReasonOf(err) {
			case ReasonUnknownCA, ReasonWrongTrustDomain, ReasonWrongCertUsage, ReasonMalformed:
				vf.badCerts.put(t.cert, err, now.Add(badCertMemory), now)
			}
			return nil, err
		}
		vf.certs.put(t.cert, vc, vc.notAfter.Add(e.skew), now)
	}
	digest := sha256.Sum256(t.raw)
	if err, bad := vf.badTokens.get(digest[:], now); bad {
		return nil, err
	}
	claims, id, start, err := checkClaimsUnsigned(t.payload, t.sig, now, e.skew, e.maxPeerLifetime)
	var v *verifiedToken
	if err == nil {
		if err := b.take(); err != nil {
			return nil, err // not verified: nothing to remember
		}
		v, err = verifySignedClaims(vc, claims, id, start, t.payload, t.sig, now, e.skew)
	}
	if err != nil {
		// Not-yet-valid may become valid; everything else stays
		// refused (expired included: it is checked before the signature,
		// but remembering it keeps a replayed old token from costing a
		// datapath's verification budget more than once).
		if ReasonOf(err) != ReasonNotYetValid {
			vf.badTokens.put(digest[:], err, now.Add(badTokenMemory), now)
		}
		return nil, err
	}
	p := &peerToken{v: v, digest: digest}
	vf.peers.put(t.raw, p, v.notAfter.Add(e.skew), now)
	return p, nil
}

// pairKey returns the cached key shared by this node's key and the peer's.
func (keys *localKeys) pairKey(p *peerToken, now time.Time) (*pairKey, error) {
	return keys.pairKeyFor(p.v.cert.pubBytes, p.v.cert.ecdhPub, now)
}

// pairKeyFor returns the cached key shared by this node's key and the
// peer node key pub (pubBytes its encoding).
func (keys *localKeys) pairKeyFor(pubBytes []byte, pub *ecdh.PublicKey, now time.Time) (*pairKey, error) {
	if k, ok := keys.secrets.get(pubBytes, now); ok {
		return k, nil
	}
	k, err := newPairKey(keys.priv, pub)
	if err != nil {
		return nil, err
	}
	keys.secrets.put(pubBytes, k, time.Time{}, now)
	return k, nil
}

func newNonce() (n [NonceSize]byte) {
	rand.Read(n[:]) // crypto/rand.Read never fails (it crashes the program instead)
	return n
}
