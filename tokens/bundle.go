package tokens

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"time"
)

// This file holds federation's trust bundles in the SPIFFE bundle format
// (SPIFFE Trust Domain and Bundle specification, section 4): a JSON Web
// Key Set whose X.509 authorities are keys with "use": "x509-svid" and
// the CA certificate in "x5c", plus "spiffe_sequence" and
// "spiffe_refresh_hint". It was chosen over a PEM file because it is the
// one format SPIRE, Istio and other SPIFFE implementations exchange
// (`spire-server bundle show -format spiffe`), and because it carries a
// refresh hint. Like SPIFFE, the file does not name its trust domain: the
// operator states it (the file name in a bundle directory, --trust-domain
// on the command line), and every CA certificate in it must name that same
// trust domain (URI SAN spiffe://TRUST-DOMAIN), so that a bundle can never
// bring a CA for another domain. A bundle vouches for its own trust domain
// only: bundles are never merged into one pool of CAs.

// Bundle is the trust bundle of one trust domain: the CA certificates
// that may sign its nodes' certificates.
type Bundle struct {
	// TrustDomain is the domain every CA of the bundle vouches for.
	TrustDomain string
	// CAs are the domain's CA certificates (more than one during a CA
	// rotation).
	CAs []*x509.Certificate
	// Sequence is the bundle's spiffe_sequence (0: not stated). A
	// publisher raises it with every change.
	Sequence uint64
	// RefreshHint says how often a consumer should fetch the bundle again
	// (0: not stated).
	RefreshHint time.Duration
}

// SPIFFE bundle JSON members.
type spiffeBundleJSON struct {
	Keys        []spiffeJWK `json:"keys"`
	Sequence    *uint64     `json:"spiffe_sequence,omitempty"`
	RefreshHint *int64      `json:"spiffe_refresh_hint,omitempty"`
}

type spiffeJWK struct {
	Use string   `json:"use"`
	Kty string   `json:"kty"`
	Crv string   `json:"crv,omitempty"`
	X   string   `json:"x,omitempty"`
	Y   string   `json:"y,omitempty"`
	Kid string   `json:"kid,omitempty"`
	X5c []string `json:"x5c,omitempty"`
}

// useX509SVID marks a JWK as an X.509 authority of the trust domain.
const useX509SVID = "x509-svid"

// maxBundleSize bounds a bundle file: a few CAs are a few kilobytes.
const maxBundleSize = 1 << 20

// NewBundle checks that every certificate is a CA for trustDomain and
// returns the bundle.
func NewBundle(trustDomain string, cas []*x509.Certificate, sequence uint64, refreshHint time.Duration) (*Bundle, error) {
	if err := checkName("trust domain", trustDomain, true); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("bundle for %q: no CA certificate", trustDomain)
	}
	if refreshHint < 0 {
		return nil, fmt.Errorf("bundle for %q: negative refresh hint", trustDomain)
	}
	var out []*x509.Certificate
	for i, c := range cas {
		if err := checkBundleCA(trustDomain, c); err != nil {
			return nil, fmt.Errorf("bundle for %q: certificate %d: %w", trustDomain, i, err)
		}
		dup := false
		for _, have := range out {
			dup = dup || bytes.Equal(have.Raw, c.Raw)
		}
		if !dup {
			out = append(out, c)
		}
	}
	return &Bundle{TrustDomain: trustDomain, CAs: out, Sequence: sequence, RefreshHint: refreshHint}, nil
}

// checkBundleCA refuses a certificate that is not a P-256 CA naming
// exactly trustDomain.
func checkBundleCA(trustDomain string, c *x509.Certificate) error {
	if c == nil {
		return errors.New("nil certificate")
	}
	if err := checkCAUsage(c); err != nil {
		return err
	}
	if _, ok := c.PublicKey.(*ecdsa.PublicKey); !ok {
		return fmt.Errorf("CA %s has no ECDSA key", certName(c))
	}
	td, node, err := CertTrustDomain(c)
	if err != nil || node != "" {
		return fmt.Errorf("CA %s names no trust domain (want URI spiffe://%s)", certName(c), trustDomain)
	}
	if td != trustDomain {
		return fmt.Errorf("CA %s vouches for trust domain %q, not %q: a bundle holds the CAs of its own trust domain only", certName(c), td, trustDomain)
	}
	return nil
}

// MarshalSPIFFE encodes the bundle as SPIFFE bundle JSON.
func (b *Bundle) MarshalSPIFFE() ([]byte, error) {
	if b == nil || len(b.CAs) == 0 {
		return nil, errors.New("marshal bundle: no CA certificate")
	}
	out := spiffeBundleJSON{Keys: []spiffeJWK{}}
	if b.Sequence != 0 {
		s := b.Sequence
		out.Sequence = &s
	}
	if b.RefreshHint > 0 {
		h := int64((b.RefreshHint + time.Second - 1) / time.Second)
		out.RefreshHint = &h
	}
	for _, c := range b.CAs {
		pub, ok := c.PublicKey.(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("marshal bundle: CA %s has no ECDSA key", certName(c))
		}
		raw, err := pub.Bytes() // 0x04 || X || Y
		if err != nil {
			return nil, fmt.Errorf("marshal bundle: CA %s: %w", certName(c), err)
		}
		n := (len(raw) - 1) / 2
		out.Keys = append(out.Keys, spiffeJWK{
			Use: useX509SVID, Kty: "EC", Crv: "P-256",
			X:   base64.RawURLEncoding.EncodeToString(raw[1 : 1+n]),
			Y:   base64.RawURLEncoding.EncodeToString(raw[1+n:]),
			X5c: []string{base64.StdEncoding.EncodeToString(c.Raw)},
		})
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("marshal bundle: %w", err)
	}
	return append(data, '\n'), nil
}

// ParseSPIFFEBundle reads SPIFFE bundle JSON as the bundle of trustDomain.
// Keys of another use (jwt-svid) are ignored, as the specification asks;
// an x509-svid key must hold exactly one certificate, a CA naming
// trustDomain, whose public key is the JWK's. name says where the bytes
// came from, in errors.
func ParseSPIFFEBundle(name string, data []byte, trustDomain string) (*Bundle, error) {
	if len(data) > maxBundleSize {
		return nil, fmt.Errorf("bundle %s: larger than %d bytes", name, maxBundleSize)
	}
	var in spiffeBundleJSON
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&in); err != nil {
		return nil, fmt.Errorf("bundle %s: not SPIFFE bundle JSON: %w", name, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("bundle %s: data after the JSON object", name)
	}
	if in.Keys == nil {
		return nil, fmt.Errorf("bundle %s: no \"keys\" member", name)
	}
	var cas []*x509.Certificate
	for i, k := range in.Keys {
		if k.Use != useX509SVID {
			continue
		}
		if len(k.X5c) != 1 {
			return nil, fmt.Errorf("bundle %s: keys[%d]: an x509-svid key needs exactly one certificate in x5c, found %d", name, i, len(k.X5c))
		}
		der, err := base64.StdEncoding.DecodeString(k.X5c[0])
		if err != nil {
			return nil, fmt.Errorf("bundle %s: keys[%d].x5c[0]: %w", name, i, err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("bundle %s: keys[%d].x5c[0]: %w", name, i, err)
		}
		if err := checkJWKMatches(k, c); err != nil {
			return nil, fmt.Errorf("bundle %s: keys[%d]: %w", name, i, err)
		}
		cas = append(cas, c)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("bundle %s: no x509-svid key: nothing to trust for %q", name, trustDomain)
	}
	var seq uint64
	if in.Sequence != nil {
		seq = *in.Sequence
	}
	var hint time.Duration
	if in.RefreshHint != nil {
		if *in.RefreshHint < 0 || *in.RefreshHint > int64(365*24*time.Hour/time.Second) {
			return nil, fmt.Errorf("bundle %s: spiffe_refresh_hint %d out of range", name, *in.RefreshHint)
		}
		hint = time.Duration(*in.RefreshHint) * time.Second
	}
	b, err := NewBundle(trustDomain, cas, seq, hint)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", name, err)
	}
	return b, nil
}

// checkJWKMatches refuses a JWK whose stated key is not its certificate's
// (when it states one): a bundle that says two different things.
func checkJWKMatches(k spiffeJWK, c *x509.Certificate) error {
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("certificate %s has no ECDSA key", certName(c))
	}
	if k.Kty != "" && k.Kty != "EC" {
		return fmt.Errorf("kty %q, but the certificate has an EC key", k.Kty)
	}
	if k.X == "" && k.Y == "" {
		return nil
	}
	if k.Crv != "" && k.Crv != "P-256" {
		return fmt.Errorf("crv %q, want P-256", k.Crv)
	}
	x, errX := base64.RawURLEncoding.DecodeString(k.X)
	y, errY := base64.RawURLEncoding.DecodeString(k.Y)
	if errX != nil || errY != nil {
		return errors.New("x or y is not base64url")
	}
	raw, err := pub.Bytes()
	if err != nil {
		return err
	}
	n := (len(raw) - 1) / 2
	if new(big.Int).SetBytes(x).Cmp(new(big.Int).SetBytes(raw[1:1+n])) != 0 ||
		new(big.Int).SetBytes(y).Cmp(new(big.Int).SetBytes(raw[1+n:])) != 0 {
		return fmt.Errorf("the JWK's x and y are not the key of certificate %s", certName(c))
	}
	return nil
}

// LoadSPIFFEBundle reads a SPIFFE bundle file as the bundle of trustDomain.
func LoadSPIFFEBundle(file, trustDomain string) (*Bundle, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read bundle: %w", err)
	}
	return ParseSPIFFEBundle(file, data, trustDomain)
}

// SaveSPIFFE writes the bundle as SPIFFE bundle JSON. It holds no secret,
// but is written like the other files (0600, renamed into place) so that
// a reader never sees half a bundle.
func (b *Bundle) SaveSPIFFE(file string) error {
	data, err := b.MarshalSPIFFE()
	if err != nil {
		return err
	}
	return writeFile0600(file, data)
}

// WithBundles returns a trust bundle holding b's CAs and those of each
// foreign bundle, each CA vouching for its own trust domain only. A
// bundle for a domain b already trusts (the local cluster's, or a second
// bundle for one domain) is refused: one domain's CAs come from one place.
func (b *TrustBundle) WithBundles(foreign ...*Bundle) (*TrustBundle, error) {
	var all []*x509.Certificate
	for _, td := range b.TrustDomains() {
		all = append(all, b.byDomain[td]...)
	}
	seen := map[string]bool{}
	for _, td := range b.TrustDomains() {
		seen[td] = true
	}
	for _, f := range foreign {
		if f == nil {
			continue
		}
		if seen[f.TrustDomain] {
			return nil, fmt.Errorf("trust bundle: a second source of CAs for trust domain %q", f.TrustDomain)
		}
		seen[f.TrustDomain] = true
		for i, c := range f.CAs {
			// Checked again: a Bundle's fields are exported.
			if err := checkBundleCA(f.TrustDomain, c); err != nil {
				return nil, fmt.Errorf("trust bundle: bundle for %q, certificate %d: %w", f.TrustDomain, i, err)
			}
		}
		all = append(all, f.CAs...)
	}
	return NewTrustBundle(all...)
}

// Describe returns a human summary of the bundle: its trust domain,
// sequence and refresh hint, and each CA as `bireme keys show` prints it
// (with its SHA-256 fingerprint, to compare with the publisher's out of
// band before trusting it).
func (b *Bundle) Describe(now time.Time) string {
	var s strings.Builder
	fmt.Fprintf(&s, "SPIFFE bundle of trust domain %s: %d CA(s)", b.TrustDomain, len(b.CAs))
	if b.Sequence != 0 {
		fmt.Fprintf(&s, ", sequence %d", b.Sequence)
	}
	if b.RefreshHint > 0 {
		fmt.Fprintf(&s, ", refresh hint %s", b.RefreshHint)
	}
	s.WriteString("\n")
	for _, c := range b.CAs {
		s.WriteString("\n")
		describeCert(&s, c, now)
	}
	return s.String()
}

// Fingerprint is the SHA-256 fingerprint of a certificate, as `bireme keys
// show` prints it: what operators compare out of band.
func Fingerprint(c *x509.Certificate) string { return colonHex(sha256.Sum256(c.Raw)) }
