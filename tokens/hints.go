package tokens

import (
	"crypto/x509"
	"fmt"
	"net/netip"
	"time"
)

// Node certificates published ahead of time (docs/protocol.md, "The
// two-message handshake"): a client node that knows which node holds a
// server address, and that node's certificate, can make its very first SYN
// there a SYN2. In Kubernetes mode the API server publishes both: where
// each pod runs, and each node's certificate in the approved
// CertificateSigningRequests of signer bireme.io/node.
//
// A published certificate is only a hint. It is used only once it
// verifies against this node's trust bundle as a node certificate of the
// local trust domain naming that very node (so a forged, foreign, expired
// or misused one is never used), and even a wrong one can cost no more
// than a fallback: a server whose key is not the one the SYN2's MAC was
// made for answers in three messages (FallbackUnknownKey), and a SYN-ACK2
// is accepted only with a token verified in full whose certificate
// carries the very key the MAC was made for. What a real handshake taught
// (Engine.learnServer) always wins over a hint.

// NodeHint is one node's published certificates and the addresses the
// cluster places on that node.
type NodeHint struct {
	// Node is the node's name, as its certificate names it
	// (spiffe://TRUST-DOMAIN/node/NODE).
	Node string
	// Certs are the certificates published for Node, unverified, in any
	// order: the newest one that verifies is used.
	Certs []*x509.Certificate
	// Addrs are the addresses of the pods the cluster places on Node.
	Addrs []netip.Addr
}

// HintReport says what Engine.SetNodeHints made of its hints.
type HintReport struct {
	// Nodes is how many nodes have a usable key: a published certificate
	// that verified, or this node's own key.
	Nodes int
	// Addresses is how many server addresses a first SYN now goes to as
	// a SYN2.
	Addresses int
	// NAT is how many addresses were left out because they lie in a
	// declared NAT gateway range (Config.NATGateways): such an address
	// stands for many nodes, no one key is right for it.
	NAT int
	// Ignored says why each certificate that was not used was refused
	// (an older valid certificate of a node is not refused, only not
	// the newest).
	Ignored []error
}

// hintSet is the addresses learned from hints under one generation of
// this node's keys (pair keys are of that generation's private key).
type hintSet struct {
	keys   *localKeys
	byAddr map[[16]byte]*knownServer
}

// SetNodeHints replaces the node certificates published ahead of time
// (see NodeHint). The engine keeps them and applies them again under a
// rotated key or a new trust bundle. With the two-message handshake off
// they are kept and unused.
func (e *Engine) SetNodeHints(hints []NodeHint) HintReport {
	e.hintsMu.Lock()
	defer e.hintsMu.Unlock()
	e.hintInput = append([]NodeHint(nil), hints...)
	return e.applyHintsLocked()
}

// reapplyHints recomputes the hints after a change of keys or trust.
func (e *Engine) reapplyHints() {
	e.hintsMu.Lock()
	defer e.hintsMu.Unlock()
	if e.hintInput != nil {
		e.applyHintsLocked()
	}
}

func (e *Engine) applyHintsLocked() HintReport {
	var rep HintReport
	if !e.twoMessage {
		e.hints.Store(nil)
		return rep
	}
	keys := e.keys.Load()
	vf := e.verifier.Load()
	now := e.now()
	set := &hintSet{keys: keys, byAddr: map[[16]byte]*knownServer{}}
	for _, h := range e.hintInput {
		ks, ignored := e.hintKey(keys, vf, h, now)
		rep.Ignored = append(rep.Ignored, ignored...)
		if ks == nil {
			continue
		}
		rep.Nodes++
		for _, a := range h.Addrs {
			a = a.Unmap()
			if !a.IsValid() {
				continue
			}
			if e.nat.anyAllows(a) {
				rep.NAT++
				continue
			}
			set.byAddr[a.As16()] = ks
		}
	}
	rep.Addresses = len(set.byAddr)
	e.hints.Store(set)
	return rep
}

// hintKey is the key to make SYN2s for at h's addresses: this node's own
// for its own pods, otherwise the key of the newest of h's certificates
// that verifies for h.Node; nil if none does. It returns why each other
// certificate was refused.
func (e *Engine) hintKey(keys *localKeys, vf *verifier, h NodeHint, now time.Time) (*knownServer, []error) {
	if h.Node == keys.creds.Node {
		pub := keys.priv.PublicKey()
		pair, err := keys.pairKeyFor(pub.Bytes(), pub, now)
		if err != nil {
			return nil, []error{fmt.Errorf("node %s (this node): %w", h.Node, err)}
		}
		return &knownServer{pub: pub.Bytes(), keyID: keys.keyID, pair: pair, notAfter: keys.creds.Cert.NotAfter}, nil
	}
	var (
		best     *verifiedCert
		bestCert *x509.Certificate
		ignored  []error
	)
	for _, c := range h.Certs {
		if c == nil {
			continue
		}
		vc, err := e.verifyHintCert(vf, c, now)
		switch {
		case err != nil:
		case vc.trustDomain != keys.creds.TrustDomain:
			err = reject(ReasonWrongTrustDomain, "certificate of trust domain %q, this node's is %q", vc.trustDomain, keys.creds.TrustDomain)
		case vc.node != h.Node:
			err = fmt.Errorf("certificate names node %q", vc.node)
		case !now.Before(vc.notAfter):
			err = reject(ReasonExpired, "certificate %s expired at %s", certName(c), vc.notAfter.UTC().Format(time.RFC3339))
		}
		if err != nil {
			ignored = append(ignored, fmt.Errorf("node %s: published certificate %s ignored: %w", h.Node, certName(c), err))
			continue
		}
		if best == nil || c.NotBefore.After(bestCert.NotBefore) ||
			c.NotBefore.Equal(bestCert.NotBefore) && c.NotAfter.After(bestCert.NotAfter) {
			best, bestCert = vc, c
		}
	}
	if best == nil {
		return nil, ignored
	}
	pair, err := keys.pairKeyFor(best.pubBytes, best.ecdhPub, now)
	if err != nil {
		return nil, append(ignored, fmt.Errorf("node %s: %w", h.Node, err))
	}
	return &knownServer{pub: best.pubBytes, keyID: keyIDOf(best.pubBytes), pair: pair, notAfter: best.notAfter}, ignored
}

// verifyHintCert verifies a published node certificate against the trust
// bundle, through the verifier's caches (the datapath verifies the same
// certificates in tokens).
func (e *Engine) verifyHintCert(vf *verifier, c *x509.Certificate, now time.Time) (*verifiedCert, error) {
	if vc, ok := vf.certs.get(c.Raw, now); ok {
		return vc, nil
	}
	if err, bad := vf.badCerts.get(c.Raw, now); bad {
		return nil, err
	}
	vc, err := vf.trust.verifyParsedCert(c, now, e.skew)
	if err != nil {
		switch ReasonOf(err) {
		case ReasonUnknownCA, ReasonWrongTrustDomain, ReasonWrongCertUsage, ReasonMalformed:
			vf.badCerts.put(c.Raw, err, now.Add(badCertMemory), now)
		}
		return nil, err
	}
	vf.certs.put(c.Raw, vc, vc.notAfter.Add(e.skew), now)
	return vc, nil
}

// hintedServer returns the node key a hint gives for addr, nil if none
// (or the hints are of another key generation, or expired).
func (e *Engine) hintedServer(keys *localKeys, addr *[16]byte, now time.Time) *knownServer {
	hs := e.hints.Load()
	if hs == nil || hs.keys != keys {
		return nil
	}
	if k := hs.byAddr[*addr]; k != nil && now.Before(k.notAfter) {
		return k
	}
	return nil
}
