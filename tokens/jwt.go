package tokens

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/golang-jwt/jwt/v5"

	"github.com/bireme/bireme/identity"
)

// The JWT form of identity tokens, for callers outside the handshake: the
// same claims and signature a SYN carries, as a standard compact ES256 JWT;
// and the ES256 signing and verification that both forms share.

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

// jwtHeader is the only JWT header Bireme signs or accepts: the compact
// form does not carry it, the verifier rebuilds it.
const jwtHeader = `{"alg":"ES256","typ":"JWT"}`

var jwtHeaderB64 = base64.RawURLEncoding.EncodeToString([]byte(jwtHeader))

// es256SigSize is the size of an ES256 JWS signature: r || s, 32 bytes each.
const es256SigSize = 64

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

// verifyClaimsSignature checks the ES256 signature of the JWT rebuilt from
// payload with the node's public key.
func verifyClaimsSignature(payload, sig []byte, pub *ecdsa.PublicKey) error {
	signing := jwtHeaderB64 + "." + base64.RawURLEncoding.EncodeToString(payload)
	if err := jwt.SigningMethodES256.Verify(signing, sig, pub); err != nil {
		return reject(ReasonBadSignature, "identity token signature: %v", err)
	}
	return nil
}

func decodeSegment(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }
