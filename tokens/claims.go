package tokens

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/bireme/bireme/identity"
)

// Claims is the signed content of an identity token: the JWT payload.
//
// Claim names are short because the payload rides in every SYN. The JWT
// registered claims carry the issuing node ("iss"), issued-at ("iat", also
// the start of validity) and expiry ("exp"), in whole seconds. Bireme never
// sets not-before ("nbf"), but honours it in a peer's token: validity then
// starts at the later of iat and nbf.
type Claims struct {
	// Cluster is the trust domain; it must be the signing CA's.
	Cluster string `json:"c"`
	// Namespace and Pod name the workload.
	Namespace string `json:"ns"`
	Pod       string `json:"p"`
	// ServiceAccount is the pod's service account.
	ServiceAccount string `json:"sa,omitempty"`
	// Labels and NamespaceLabels are what policies select on.
	Labels          map[string]string `json:"l,omitempty"`
	NamespaceLabels map[string]string `json:"nl,omitempty"`
	// Ports are the named ports as [name, protocol, port] triples.
	Ports [][3]any `json:"pt,omitempty"`
	// RegisteredClaims carries iss (the node), iat, exp and, if a peer set
	// it, nbf.
	jwt.RegisteredClaims
}

func claimsFor(id *identity.Identity, node string, iat, exp time.Time) *Claims {
	c := &Claims{
		Cluster:         id.Cluster,
		Namespace:       id.Namespace,
		Pod:             id.Pod,
		ServiceAccount:  id.ServiceAccount,
		Labels:          id.Labels,
		NamespaceLabels: id.NamespaceLabels,
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    node,
			IssuedAt:  jwt.NewNumericDate(iat),
			ExpiresAt: jwt.NewNumericDate(exp),
		},
	}
	for _, p := range id.Ports {
		c.Ports = append(c.Ports, [3]any{p.Name, p.Protocol, p.Port})
	}
	return c
}

// parseClaims decodes a payload and checks every required claim is there.
func parseClaims(payload []byte) (*Claims, error) {
	var c Claims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, reject(ReasonMalformed, "identity token claims: %v", err)
	}
	switch {
	case c.Cluster == "", c.Namespace == "", c.Pod == "", c.Issuer == "":
		return nil, reject(ReasonMalformed, "identity token claims: cluster, namespace, pod and issuer are required")
	case c.IssuedAt == nil, c.ExpiresAt == nil:
		return nil, reject(ReasonMalformed, "identity token claims: iat and exp are required")
	}
	return &c, nil
}

// identity converts verified claims into a fresh Identity.
//
// Labels with the reserved prefix bireme.io/ are dropped: the pseudo-labels
// policy selects on (service account, namespace) are derived from the
// signed "sa" and "ns" claims (identity.Identity.PodLabel), never from
// labels the sender put in "l" or "nl". Dropping them here also keeps a
// forged value out of flow records.
func (c *Claims) identity() (*identity.Identity, error) {
	id := &identity.Identity{
		Cluster:         c.Cluster,
		Namespace:       c.Namespace,
		Pod:             c.Pod,
		ServiceAccount:  c.ServiceAccount,
		Labels:          identity.WithoutReserved(c.Labels),
		NamespaceLabels: identity.WithoutReserved(c.NamespaceLabels),
	}
	for _, p := range c.Ports {
		name, ok1 := p[0].(string)
		proto, ok2 := p[1].(string)
		num, ok3 := p[2].(float64)
		if !ok1 || !ok2 || !ok3 || num < 0 || num > 65535 || num != float64(uint16(num)) {
			return nil, reject(ReasonMalformed, "identity token claims: bad port %v", p)
		}
		id.Ports = append(id.Ports, identity.Port{Name: name, Protocol: proto, Port: uint16(num)})
	}
	return id, nil
}

// verifiedCert is a node certificate that chains to a trusted CA of its
// trust domain; the engine caches it by its DER bytes.
type verifiedCert struct {
	trustDomain, node string
	pub               *ecdsa.PublicKey
	ecdhPub           *ecdh.PublicKey
	pubBytes          []byte    // ecdhPub's encoding, the ECDH cache key
	notBefore         time.Time // the later start of certificate and CA
	notAfter          time.Time // the earlier end of certificate and CA
}

// verifyCert parses a node certificate and checks it against the bundle.
func (b *TrustBundle) verifyCert(certDER []byte, now time.Time, skew time.Duration) (*verifiedCert, error) {
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, reject(ReasonMalformed, "node certificate: %v", err)
	}
	return b.verifyParsedCert(cert, now, skew)
}

func (b *TrustBundle) verifyParsedCert(cert *x509.Certificate, now time.Time, skew time.Duration) (*verifiedCert, error) {
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, reject(ReasonMalformed, "node certificate: not an ECDSA P-256 key")
	}
	td, node, ca, err := b.verifyNodeCert(cert, now, skew)
	if err != nil {
		return nil, err
	}
	ecdhPub, err := pub.ECDH()
	if err != nil {
		return nil, reject(ReasonMalformed, "node certificate key: %v", err)
	}
	vc := &verifiedCert{trustDomain: td, node: node, pub: pub, ecdhPub: ecdhPub, pubBytes: ecdhPub.Bytes(),
		notBefore: cert.NotBefore, notAfter: cert.NotAfter}
	if ca.NotBefore.After(vc.notBefore) {
		vc.notBefore = ca.NotBefore
	}
	if ca.NotAfter.Before(vc.notAfter) {
		vc.notAfter = ca.NotAfter
	}
	return vc, nil
}

// verifiedToken is what checking a token yields; the engine caches it.
type verifiedToken struct {
	id        *identity.Identity
	cert      *verifiedCert
	node      string
	notBefore time.Time // latest start of token, certificate and CA validity
	notAfter  time.Time // earliest end of token, certificate and CA validity
}

// window returns when the token's validity starts, the later of iat and
// nbf, and how long it claims to last: exp minus the earlier of the two, so
// that neither claim can hide a longer span from the lifetime cap.
func (c *Claims) window() (start time.Time, span time.Duration) {
	start, earliest := c.IssuedAt.Time, c.IssuedAt.Time
	if nbf := c.NotBefore; nbf != nil {
		if nbf.After(start) {
			start = nbf.Time
		} else {
			earliest = nbf.Time
		}
	}
	return start, c.ExpiresAt.Sub(earliest)
}

// checkClaimsUnsigned does the checks of verifyClaims that come before
// the signature: the claims parse, and the token's own window. An old
// captured token, or one valid for too long, is turned away without an
// ECDSA verification.
func checkClaimsUnsigned(payload, sig []byte, now time.Time, skew, maxLifetime time.Duration) (claims *Claims, id *identity.Identity, start time.Time, err error) {
	claims, err = parseClaims(payload)
	if err != nil {
		return nil, nil, start, err
	}
	id, err = claims.identity()
	if err != nil {
		return nil, nil, start, err
	}
	// The span needs no skew: iat, nbf and exp all come from the signer's
	// clock.
	start, span := claims.window()
	if span > maxLifetime {
		return nil, nil, start, reject(ReasonLifetimeTooLong, "identity token of %s/%s/%s valid for %s (until %s), longer than the %s this node accepts", claims.Cluster, claims.Namespace, claims.Pod, span, claims.ExpiresAt.UTC().Format(time.RFC3339), maxLifetime)
	}
	if now.Add(skew).Before(start) {
		return nil, nil, start, reject(ReasonNotYetValid, "identity token of %s/%s/%s not valid before %s (iat or nbf)", claims.Cluster, claims.Namespace, claims.Pod, start.UTC().Format(time.RFC3339))
	}
	if now.Add(-skew).After(claims.ExpiresAt.Time) {
		return nil, nil, start, reject(ReasonExpired, "identity token of %s/%s/%s expired at %s", claims.Cluster, claims.Namespace, claims.Pod, claims.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if len(sig) != es256SigSize {
		return nil, nil, start, reject(ReasonMalformed, "identity token signature: %d bytes, want %d", len(sig), es256SigSize)
	}
	return claims, id, start, nil
}

// verifyClaims checks a claims payload and its signature under a verified
// node certificate at now: a lifetime of at most maxLifetime, validity with
// skew, signature, that the token names the certificate's node and trust
// domain.
func verifyClaims(vc *verifiedCert, payload, sig []byte, now time.Time, skew, maxLifetime time.Duration) (*verifiedToken, error) {
	claims, id, start, err := checkClaimsUnsigned(payload, sig, now, skew, maxLifetime)
	if err != nil {
		return nil, err
	}
	return verifySignedClaims(vc, claims, id, start, payload, sig, now, skew)
}

// verifySignedClaims does the checks of verifyClaims from the signature
// on, on what checkClaimsUnsigned returned.
func verifySignedClaims(vc *verifiedCert, claims *Claims, id *identity.Identity, start time.Time, payload, sig []byte, now time.Time, skew time.Duration) (*verifiedToken, error) {
	if err := verifyClaimsSignature(payload, sig, vc.pub); err != nil {
		return nil, err
	}
	if claims.Issuer != vc.node {
		return nil, reject(ReasonBadSignature, "identity token issued by node %q but signed with the key of node %q", claims.Issuer, vc.node)
	}
	if claims.Cluster != vc.trustDomain {
		return nil, reject(ReasonWrongTrustDomain, "identity token for cluster %q signed under trust domain %q", claims.Cluster, vc.trustDomain)
	}
	v := &verifiedToken{id: id, cert: vc, node: vc.node, notBefore: start, notAfter: claims.ExpiresAt.Time}
	if vc.notBefore.After(v.notBefore) {
		v.notBefore = vc.notBefore
	}
	if vc.notAfter.Before(v.notAfter) {
		v.notAfter = vc.notAfter
	}
	if err := v.checkTime(now, skew); err != nil {
		return nil, err
	}
	return v, nil
}

// checkTime rejects a token outside its validity window (± skew).
func (v *verifiedToken) checkTime(now time.Time, skew time.Duration) error {
	if now.Add(skew).Before(v.notBefore) {
		return reject(ReasonNotYetValid, "identity token of %s valid from %s", v.id, v.notBefore.UTC().Format(time.RFC3339))
	}
	if now.Add(-skew).After(v.notAfter) {
		return reject(ReasonExpired, "identity token of %s expired at %s", v.id, v.notAfter.UTC().Format(time.RFC3339))
	}
	return nil
}
