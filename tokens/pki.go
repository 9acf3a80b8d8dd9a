package tokens

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Default validities used when NewCA or IssueNode get a validity <= 0.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultNodeValidity = 365 * 24 * time.Hour
)

// backdate is how far before "now" a new certificate starts, so that a node
// whose clock is a little behind the CA's accepts it at once.
const backdate = 5 * time.Minute

// CA is a cluster's certificate authority: an ECDSA P-256 key and a
// self-signed x509 certificate whose only name is its trust domain (subject
// CN and the URI SAN spiffe://TRUST-DOMAIN).
type CA struct {
	TrustDomain string
	Cert        *x509.Certificate
	Key         *ecdsa.PrivateKey
}

// NodeCredentials are one node's key and the certificate the cluster CA
// issued for it. The node signs its workloads' identity tokens with Key and
// uses it for the static ECDH that keys handshake proofs.
type NodeCredentials struct {
	Node        string
	TrustDomain string
	Cert        *x509.Certificate
	Key         *ecdsa.PrivateKey
}

// NewCA creates a CA for trustDomain (a DNS-like name: lowercase letters,
// digits, '.', '-', '_'). validity <= 0 means DefaultCAValidity.
func NewCA(trustDomain string, validity time.Duration) (*CA, error) {
	if err := checkName("trust domain", trustDomain, true); err != nil {
		return nil, err
	}
	if validity <= 0 {
		validity = DefaultCAValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: trustDomain},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate for %q: %w", trustDomain, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new CA certificate: %w", err)
	}
	return &CA{TrustDomain: trustDomain, Cert: cert, Key: key}, nil
}

// IssueNode creates a key for node and a certificate for it signed by the
// CA. The certificate is kept minimal because it travels in every SYN: an
// empty subject, one URI SAN spiffe://TRUST-DOMAIN/node/NODE, key usage
// digitalSignature|keyAgreement, no authority key identifier. validity <= 0
// means DefaultNodeValidity; the certificate never outlives the CA.
func (ca *CA) IssueNode(node string, validity time.Duration) (*NodeCredentials, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, errors.New("issue node certificate: CA has no certificate or key")
	}
	if err := checkName("node name", node, false); err != nil {
		return nil, err
	}
	if validity <= 0 {
		validity = DefaultNodeValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate node key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		URIs:         []*url.URL{nodeURI(ca.TrustDomain, node)},
	}
	// A copy of the CA certificate without its subject key ID: Go would
	// otherwise add an authority key identifier (31 bytes of every SYN).
	parent := *ca.Cert
	parent.SubjectKeyId = nil
	der, err := x509.CreateCertificate(rand.Reader, tmpl, &parent, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("create certificate for node %q: %w", node, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new node certificate: %w", err)
	}
	return &NodeCredentials{Node: node, TrustDomain: ca.TrustDomain, Cert: cert, Key: key}, nil
}

func randomSerial() (*big.Int, error) {
	// 63 bits: positive, and short in DER (the certificate rides in SYNs).
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	if err != nil {
		return nil, fmt.Errorf("random serial: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func nodeURI(trustDomain, node string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/node/" + node}
}

// checkName accepts the characters of DNS names plus '_' (and uppercase
// for node names), 1..253 bytes: names go into URIs and JSON unescaped.
func checkName(what, s string, lowerOnly bool) error {
	if s == "" || len(s) > 253 {
		return fmt.Errorf("%s %q: must be 1 to 253 characters", what, s)
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
		case r >= 'A' && r <= 'Z' && !lowerOnly:
		default:
			return fmt.Errorf("%s %q: character %q not allowed (use a-z, 0-9, '.', '-', '_')", what, s, r)
		}
	}
	return nil
}

// CertTrustDomain returns the trust domain and node name a Bireme
// certificate names in its spiffe:// URI SAN. node is "" for a CA.
func CertTrustDomain(cert *x509.Certificate) (trustDomain, node string, err error) {
	if cert == nil {
		return "", "", errors.New("no certificate")
	}
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" || u.Host == "" {
			continue
		}
		switch {
		case u.Path == "" || u.Path == "/":
			return u.Host, "", nil
		case strings.HasPrefix(u.Path, "/node/") && len(u.Path) > len("/node/"):
			return u.Host, u.Path[len("/node/"):], nil
		}
	}
	return "", "", errors.New("certificate has no spiffe://TRUST-DOMAIN[/node/NAME] URI")
}

// Save writes the CA certificate and key as PEM files with mode 0600.
func (ca *CA) Save(certFile, keyFile string) error {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return errors.New("save CA: no certificate or key")
	}
	return savePair(ca.Cert, ca.Key, certFile, keyFile)
}

// Save writes the node certificate and key as PEM files with mode 0600.
func (n *NodeCredentials) Save(certFile, keyFile string) error {
	if n == nil || n.Cert == nil || n.Key == nil {
		return errors.New("save node credentials: no certificate or key")
	}
	return savePair(n.Cert, n.Key, certFile, keyFile)
}

func savePair(cert *x509.Certificate, key *ecdsa.PrivateKey, certFile, keyFile string) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode private key: %w", err)
	}
	if err := writeFile0600(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})); err != nil {
		return err
	}
	return writeFile0600(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// writeFile0600 writes through a temporary file created 0600 and renamed
// into place, so the file is never readable by others, even briefly or when
// it existed before with wider permissions.
func writeFile0600(name string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp, name); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	ok = true
	return nil
}

// LoadCA reads a CA certificate and its key from PEM files.
func LoadCA(certFile, keyFile string) (*CA, error) {
	cert, key, err := loadPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	if err := checkCAUsage(cert); err != nil {
		return nil, fmt.Errorf("load CA %s: %w", certFile, err)
	}
	td, node, err := CertTrustDomain(cert)
	if err != nil || node != "" {
		return nil, fmt.Errorf("load CA %s: not a Bireme CA certificate (want URI spiffe://TRUST-DOMAIN)", certFile)
	}
	return &CA{TrustDomain: td, Cert: cert, Key: key}, nil
}

// LoadNodeCredentials reads a node certificate and its key from PEM files.
func LoadNodeCredentials(certFile, keyFile string) (*NodeCredentials, error) {
	cert, key, err := loadPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	td, node, err := CertTrustDomain(cert)
	if err != nil || node == "" {
		return nil, fmt.Errorf("load node credentials %s: not a Bireme node certificate (want URI spiffe://TRUST-DOMAIN/node/NAME)", certFile)
	}
	return &NodeCredentials{Node: node, TrustDomain: td, Cert: cert, Key: key}, nil
}

func loadPair(certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certs, err := readCertificates(certFile)
	if err != nil {
		return nil, nil, err
	}
	if len(certs) != 1 {
		return nil, nil, fmt.Errorf("read %s: want exactly one certificate, found %d", certFile, len(certs))
	}
	key, err := readECKey(keyFile)
	if err != nil {
		return nil, nil, err
	}
	if !sameKey(certs[0], key) {
		return nil, nil, fmt.Errorf("key %s does not match certificate %s", keyFile, certFile)
	}
	return certs[0], key, nil
}

func sameKey(cert *x509.Certificate, key *ecdsa.PrivateKey) bool {
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	return ok && key != nil && pub.Equal(&key.PublicKey)
}

// readCertificates reads every CERTIFICATE block of a PEM file.
func readCertificates(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read certificates: %w", err)
	}
	return parseCertificatesPEM(file, data)
}

func parseCertificatesPEM(file string, data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate in %s: %w", file, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("read %s: no PEM CERTIFICATE block", file)
	}
	return certs, nil
}

// readECKey reads a P-256 private key (PKCS#8 "PRIVATE KEY" or SEC1
// "EC PRIVATE KEY") from a PEM file.
func readECKey(file string) (*ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	return parseECKeyPEM(file, data)
}

func parseECKeyPEM(file string, data []byte) (*ecdsa.PrivateKey, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("read %s: no PEM private key block", file)
		}
		var key any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			// The parse error never contains key material.
			return nil, fmt.Errorf("parse private key in %s: %w", file, err)
		}
		ec, ok := key.(*ecdsa.PrivateKey)
		if !ok || ec.Curve != elliptic.P256() {
			return nil, fmt.Errorf("read %s: want an ECDSA P-256 key", file)
		}
		return ec, nil
	}
}

// TrustBundle is the set of CAs a node trusts, each vouching for exactly one
// trust domain (the spiffe:// URI in its certificate). Several CAs of one
// domain (CA rotation) and CAs of several domains (federation) may coexist.
// It is immutable once built and safe for concurrent use.
type TrustBundle struct {
	byDomain  map[string][]*x509.Certificate
	bySubject map[string][]trustedCA
}

type trustedCA struct {
	cert   *x509.Certificate
	domain string
}

// NewTrustBundle builds a bundle from CA certificates. Each must be a CA
// certificate naming its trust domain in a spiffe:// URI.
func NewTrustBundle(cas ...*x509.Certificate) (*TrustBundle, error) {
	if len(cas) == 0 {
		return nil, errors.New("trust bundle: no CA certificate")
	}
	b := &TrustBundle{byDomain: map[string][]*x509.Certificate{}, bySubject: map[string][]trustedCA{}}
	for i, c := range cas {
		if c == nil {
			return nil, fmt.Errorf("trust bundle: certificate %d is nil", i)
		}
		if err := checkCAUsage(c); err != nil {
			return nil, fmt.Errorf("trust bundle: certificate %d (%s): %w", i, certName(c), err)
		}
		if _, ok := c.PublicKey.(*ecdsa.PublicKey); !ok {
			return nil, fmt.Errorf("trust bundle: certificate %d (%s) has no ECDSA key", i, c.Subject)
		}
		td, node, err := CertTrustDomain(c)
		if err != nil || node != "" {
			return nil, fmt.Errorf("trust bundle: certificate %d (%s) names no trust domain (want URI spiffe://TRUST-DOMAIN)", i, c.Subject)
		}
		dup := false
		for _, have := range b.byDomain[td] {
			dup = dup || bytes.Equal(have.Raw, c.Raw)
		}
		if dup {
			continue
		}
		b.byDomain[td] = append(b.byDomain[td], c)
		b.bySubject[string(c.RawSubject)] = append(b.bySubject[string(c.RawSubject)], trustedCA{cert: c, domain: td})
	}
	return b, nil
}

// LoadTrustBundle reads CA certificates from PEM files, each holding one or
// more certificates.
func LoadTrustBundle(pemFiles ...string) (*TrustBundle, error) {
	var all []*x509.Certificate
	for _, f := range pemFiles {
		certs, err := readCertificates(f)
		if err != nil {
			return nil, err
		}
		all = append(all, certs...)
	}
	b, err := NewTrustBundle(all...)
	if err != nil {
		return nil, fmt.Errorf("load trust bundle %s: %w", strings.Join(pemFiles, ","), err)
	}
	return b, nil
}

// TrustDomains lists the bundle's trust domains, sorted.
func (b *TrustBundle) TrustDomains() []string {
	var out []string
	for td := range b.byDomain {
		out = append(out, td)
	}
	sort.Strings(out)
	return out
}

// CAs returns the CA certificates trusted for trustDomain.
func (b *TrustBundle) CAs(trustDomain string) []*x509.Certificate {
	return append([]*x509.Certificate(nil), b.byDomain[trustDomain]...)
}

// verifyNodeCert checks that cert was signed by a CA of the bundle, that the
// CA's trust domain is the one the certificate names, that cert is fit to be
// a node's (checkNodeCertUsage), and that the CA and cert are valid at now
// (± skew). It returns the trust domain and node name.
func (b *TrustBundle) verifyNodeCert(cert *x509.Certificate, now time.Time, skew time.Duration) (trustDomain, node string, ca *x509.Certificate, err error) {
	td, node, err := CertTrustDomain(cert)
	if err != nil || node == "" {
		return "", "", nil, reject(ReasonMalformed, "node certificate: no spiffe://TRUST-DOMAIN/node/NAME URI")
	}
	var signer *trustedCA
	for i, ca := range b.bySubject[string(cert.RawIssuer)] {
		if cert.CheckSignatureFrom(ca.cert) == nil {
			signer = &b.bySubject[string(cert.RawIssuer)][i]
			break
		}
	}
	if signer == nil {
		return "", "", nil, reject(ReasonUnknownCA, "node certificate of %q/%q: not signed by any trusted CA", td, node)
	}
	if signer.domain != td {
		return "", "", nil, reject(ReasonWrongTrustDomain, "node certificate names trust domain %q but its CA vouches for %q", td, signer.domain)
	}
	if err := checkNodeCertUsage(cert); err != nil {
		return "", "", nil, err
	}
	for _, c := range []*x509.Certificate{signer.cert, cert} {
		if now.Add(skew).Before(c.NotBefore) {
			return "", "", nil, reject(ReasonNotYetValid, "certificate %s valid from %s", certName(c), c.NotBefore.UTC().Format(time.RFC3339))
		}
		if now.Add(-skew).After(c.NotAfter) {
			return "", "", nil, reject(ReasonExpired, "certificate %s expired at %s", certName(c), c.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return td, node, signer.cert, nil
}

// nodeKeyUsage is what a node key does, so what its certificate must allow:
// sign the node's identity tokens (digitalSignature) and be the static ECDH
// key of handshake proofs (keyAgreement). IssueNode sets exactly these.
const nodeKeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement

// checkNodeCertUsage refuses a certificate unfit to be a node's: one that
// does not allow both uses of the node key, or one that is a CA, so that a
// CA's certificate (whose key may sit with an operator, not a node) never
// speaks for a node, and a node certificate can never be taken for a CA.
func checkNodeCertUsage(cert *x509.Certificate) error {
	if cert.IsCA {
		return reject(ReasonWrongCertUsage, "node certificate %s is a CA certificate (basic constraints CA:TRUE)", certName(cert))
	}
	if missing := nodeKeyUsage &^ cert.KeyUsage; missing != 0 {
		return reject(ReasonWrongCertUsage, "node certificate %s lacks key usage %s", certName(cert), keyUsageNames(missing))
	}
	return nil
}

// checkCAUsage refuses a certificate offered as a CA that is not one: it
// must say so in its basic constraints and allow certificate signing. Go's
// signature check refuses a parent without certSign only when the key usage
// extension is present, so this is checked here for every CA.
func checkCAUsage(cert *x509.Certificate) error {
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return reject(ReasonWrongCertUsage, "certificate %s is not a CA (no basic constraints CA:TRUE)", certName(cert))
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return reject(ReasonWrongCertUsage, "CA certificate %s lacks key usage certSign", certName(cert))
	}
	return nil
}

// keyUsageNames names the node key usages set in u, as RFC 5280 spells them.
func keyUsageNames(u x509.KeyUsage) string {
	var names []string
	if u&x509.KeyUsageDigitalSignature != 0 {
		names = append(names, "digitalSignature")
	}
	if u&x509.KeyUsageKeyAgreement != 0 {
		names = append(names, "keyAgreement")
	}
	return strings.Join(names, " and ")
}

func certName(c *x509.Certificate) string {
	if len(c.URIs) > 0 {
		return c.URIs[0].String()
	}
	return c.Subject.String()
}

// SaveCertificate writes one certificate as a PEM file with mode 0600.
func SaveCertificate(cert *x509.Certificate, file string) error {
	if cert == nil {
		return errors.New("save certificate: no certificate")
	}
	return writeFile0600(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
}
