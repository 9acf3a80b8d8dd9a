package tokens

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/bireme/bireme/identity"
)

// Claims is the signed content of an identity token: the JWT payload.
//
// Claim names are short because the payload rides in every SYN. The JWT
// registered claims carry the issuing node ("iss"), issued-at ("iat", also
// the start of validity) and expiry ("exp"), in whole seconds.
type Claims struct {
	Cluster         string            `json:"c"`
	Namespace       string            `json:"ns"`
	Pod             string            `json:"p"`
	ServiceAccount  string            `json:"sa,omitempty"`
	Labels          map[string]string `json:"l,omitempty"`
	NamespaceLabels map[string]string `json:"nl,omitempty"`
	// Ports are the named ports as [name, protocol, port] triples.
	Ports [][3]any `json:"pt,omitempty"`
	jwt.RegisteredClaims
}

// jwtHeader is the only JWT header Bireme signs or accepts: the compact
// form does not carry it, the verifier rebuilds it.
const jwtHeader = `{"alg":"ES256","typ":"JWT"}`

var jwtHeaderB64 = base64.RawURLEncoding.EncodeToString([]byte(jwtHeader))

// es256SigSize is the size of an ES256 JWS signature: r || s, 32 bytes each.
const es256SigSize = 64

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

// signClaims signs claims as an ES256 JWT with the golang-jwt library and
// returns the JWT and its two carried parts: the payload JSON and the raw
// 64-byte signature.
func signClaims(c *Claims, key *ecdsa.PrivateKey) (jwtString string, payload, sig []byte, err error) {
	s, err := jwt.NewWithClaims(jwt.SigningMethodES256, c).SignedString(key)
	if err != nil {
		return "", nil, nil, fmt.Errorf("sign identity token: %w", err)
	}
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0] != jwtHeaderB64 {
		return "", nil, nil, errors.New("sign identity token: unexpected JWT header")
	}
	payload, err = base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", nil, nil, fmt.Errorf("sign identity token: %w", err)
	}
	sig, err = base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != es256SigSize {
		return "", nil, nil, errors.New("sign identity token: unexpected signature size")
	}
	return s, payload, sig, nil
}

// compactToJWT rebuilds the JWT from the carried payload and signature.
func compactToJWT(payload, sig []byte) string {
	return jwtHeaderB64 + "." + base64.RawURLEncoding.EncodeToString(payload) + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// verifyClaimsSignature checks the ES256 signature of the JWT rebuilt from
// payload with the node's public key.
func verifyClaimsSignature(payload, sig []byte, pub *ecdsa.PublicKey) error {
	signing := jwtHeaderB64 + "." + base64.RawURLEncoding.EncodeToString(payload)
	if err := jwt.SigningMethodES256.Verify(signing, sig, pub); err != nil {
		return reject(ReasonBadSignature, "identity token signature: %v", err)
	}
	return nil
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
func (c *Claims) identity() (*identity.Identity, error) {
	id := &identity.Identity{
		Cluster:         c.Cluster,
		Namespace:       c.Namespace,
		Pod:             c.Pod,
		ServiceAccount:  c.ServiceAccount,
		Labels:          c.Labels,
		NamespaceLabels: c.NamespaceLabels,
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

// verifiedToken is what checking a token yields; the engine caches it.
type verifiedToken struct {
	id        *identity.Identity
	node      string
	pub       *ecdsa.PublicKey
	notBefore time.Time // latest start of token, certificate and CA validity
	notAfter  time.Time // earliest end of token, certificate and CA validity
}

// verifyToken checks a node certificate (DER), a claims payload and its
// signature against the bundle at now: chain, validity with skew, trust
// domain, signature, and that the token names the certificate's node.
func (b *TrustBundle) verifyToken(certDER, payload, sig []byte, now time.Time, skew time.Duration) (*verifiedToken, error) {
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, reject(ReasonMalformed, "node certificate: %v", err)
	}
	return b.verifyTokenCert(cert, payload, sig, now, skew)
}

func (b *TrustBundle) verifyTokenCert(cert *x509.Certificate, payload, sig []byte, now time.Time, skew time.Duration) (*verifiedToken, error) {
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve.Params().Name != "P-256" {
		return nil, reject(ReasonMalformed, "node certificate: not an ECDSA P-256 key")
	}
	claims, err := parseClaims(payload)
	if err != nil {
		return nil, err
	}
	td, node, ca, err := b.verifyNodeCert(cert, now, skew)
	if err != nil {
		return nil, err
	}
	if len(sig) != es256SigSize {
		return nil, reject(ReasonMalformed, "identity token signature: %d bytes, want %d", len(sig), es256SigSize)
	}
	if err := verifyClaimsSignature(payload, sig, pub); err != nil {
		return nil, err
	}
	if claims.Issuer != node {
		return nil, reject(ReasonBadSignature, "identity token issued by node %q but signed with the key of node %q", claims.Issuer, node)
	}
	if claims.Cluster != td {
		return nil, reject(ReasonWrongTrustDomain, "identity token for cluster %q signed under trust domain %q", claims.Cluster, td)
	}
	id, err := claims.identity()
	if err != nil {
		return nil, err
	}
	v := &verifiedToken{id: id, node: node, pub: pub, notBefore: claims.IssuedAt.Time, notAfter: claims.ExpiresAt.Time}
	for _, c := range []*x509.Certificate{cert, ca} {
		if c.NotBefore.After(v.notBefore) {
			v.notBefore = c.NotBefore
		}
		if c.NotAfter.Before(v.notAfter) {
			v.notAfter = c.NotAfter
		}
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

func decodeSegment(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }
