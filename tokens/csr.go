package tokens

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"time"
)

// Node credentials through certificate signing requests: a node makes its
// key and asks for a certificate naming itself (NewNodeCSR); a signer holding
// the CA reads the request (ParseNodeCSR), decides whether the requester may
// speak for that node, and signs (SignNode). The certificate SignNode makes
// is exactly the one IssueNode makes, so that what every verifier checks
// (checkNodeCertUsage, validity, trust domain) holds by construction.

// GenerateNodeKey makes a node key: ECDSA P-256, the only kind a node
// certificate carries.
func GenerateNodeKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate node key: %w", err)
	}
	return key, nil
}

// NewNodeCSR returns a PEM certificate request for node of trustDomain,
// signed by key: an empty subject and the one URI SAN a node certificate
// carries, spiffe://TRUST-DOMAIN/node/NODE.
func NewNodeCSR(key *ecdsa.PrivateKey, trustDomain, node string) ([]byte, error) {
	if key == nil {
		return nil, errors.New("node certificate request: no key")
	}
	if err := checkName("trust domain", trustDomain, true); err != nil {
		return nil, fmt.Errorf("node certificate request: %w", err)
	}
	if err := checkName("node name", node, false); err != nil {
		return nil, fmt.Errorf("node certificate request: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		URIs: []*url.URL{nodeURI(trustDomain, node)},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("node certificate request for %q: %w", node, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// NodeCSR is what a parsed node certificate request asks for.
type NodeCSR struct {
	TrustDomain string
	Node        string
	PublicKey   *ecdsa.PublicKey
}

// ParseNodeCSR reads a PEM certificate request and checks that it is one a
// node may make: exactly one CERTIFICATE REQUEST block, a valid
// self-signature (the requester holds the key), an ECDSA P-256 key, an
// empty subject, and as its only name one spiffe://TRUST-DOMAIN/node/NODE
// URI with valid names. The error says which of these failed; whether the
// requester may have a certificate for that node is the signer's decision.
func ParseNodeCSR(data []byte) (*NodeCSR, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("not a PEM CERTIFICATE REQUEST")
	}
	if next, _ := pem.Decode(rest); next != nil {
		return nil, errors.New("more than one PEM block")
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate request: %w", err)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature: %w", err)
	}
	pub, ok := req.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("certificate request key: want ECDSA P-256")
	}
	if len(req.Subject.Names) > 0 {
		return nil, fmt.Errorf("certificate request subject %q: a node certificate has an empty subject", req.Subject)
	}
	if len(req.DNSNames)+len(req.EmailAddresses)+len(req.IPAddresses) > 0 {
		return nil, errors.New("certificate request names DNS, e-mail or IP addresses: a node certificate has one spiffe:// URI only")
	}
	if len(req.URIs) != 1 {
		return nil, fmt.Errorf("certificate request has %d URIs: want exactly spiffe://TRUST-DOMAIN/node/NODE", len(req.URIs))
	}
	td, node, err := CertTrustDomain(&x509.Certificate{URIs: req.URIs})
	if err != nil || node == "" {
		return nil, fmt.Errorf("certificate request URI %q: want spiffe://TRUST-DOMAIN/node/NODE", req.URIs[0])
	}
	if u := nodeURI(td, node); u.String() != req.URIs[0].String() {
		return nil, fmt.Errorf("certificate request URI %q: want exactly %q", req.URIs[0], u)
	}
	if err := checkName("trust domain", td, true); err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	if err := checkName("node name", node, false); err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	return &NodeCSR{TrustDomain: td, Node: node, PublicKey: pub}, nil
}

// SignNode makes node's certificate for pub, valid from now (backdated a
// little for clock skew) for validity (<= 0: DefaultNodeValidity) and never
// beyond the CA's own expiry. It refuses when the CA is not valid now: a
// certificate it made would be refused by every verifier.
func (ca *CA) SignNode(node string, pub *ecdsa.PublicKey, validity time.Duration) (*x509.Certificate, error) {
	return ca.signNode(node, pub, validity, time.Now())
}

func (ca *CA) signNode(node string, pub *ecdsa.PublicKey, validity time.Duration, now time.Time) (*x509.Certificate, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, errors.New("sign node certificate: CA has no certificate or key")
	}
	if err := checkName("node name", node, false); err != nil {
		return nil, err
	}
	if pub == nil || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("sign node certificate for %q: want an ECDSA P-256 key", node)
	}
	if now.Before(ca.Cert.NotBefore) || !now.Before(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("sign node certificate for %q: CA certificate valid %s to %s, not now", node,
			ca.Cert.NotBefore.UTC().Format(time.RFC3339), ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if validity <= 0 {
		validity = DefaultNodeValidity
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	notBefore := now.Add(-backdate)
	if notBefore.Before(ca.Cert.NotBefore) {
		notBefore = ca.Cert.NotBefore
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     nodeKeyUsage,
		URIs:         []*url.URL{nodeURI(ca.TrustDomain, node)},
	}
	// A copy of the CA certificate without its subject key ID: Go would
	// otherwise add an authority key identifier (31 bytes of every SYN).
	parent := *ca.Cert
	parent.SubjectKeyId = nil
	der, err := x509.CreateCertificate(rand.Reader, tmpl, &parent, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("create certificate for node %q: %w", node, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new node certificate: %w", err)
	}
	return cert, nil
}

// NodeCredentialsFromPEM reads a node's certificate and key from PEM data
// (both may be in one buffer, in any order): what LoadNodeCredentials does
// for files, for credentials kept or received elsewhere. what names the
// source in errors.
func NodeCredentialsFromPEM(what string, certPEM, keyPEM []byte) (*NodeCredentials, error) {
	certs, err := parseCertificatesPEM(what, certPEM)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("read %s: want exactly one certificate, found %d", what, len(certs))
	}
	key, err := parseECKeyPEM(what, keyPEM)
	if err != nil {
		return nil, err
	}
	if !sameKey(certs[0], key) {
		return nil, fmt.Errorf("%s: key does not match certificate", what)
	}
	td, node, err := CertTrustDomain(certs[0])
	if err != nil || node == "" {
		return nil, fmt.Errorf("%s: not a Bireme node certificate (want URI spiffe://TRUST-DOMAIN/node/NAME)", what)
	}
	return &NodeCredentials{Node: node, TrustDomain: td, Cert: certs[0], Key: key}, nil
}

// CheckNodeCertificate reports whether cert is fit to be a node's
// certificate (the key usages every verifier demands, not a CA) and names
// a node: what a node checks on a certificate a signer returned before
// putting it in use.
func CheckNodeCertificate(cert *x509.Certificate) error {
	if cert == nil {
		return errors.New("no certificate")
	}
	if _, node, err := CertTrustDomain(cert); err != nil || node == "" {
		return errors.New("not a Bireme node certificate (want URI spiffe://TRUST-DOMAIN/node/NAME)")
	}
	return checkNodeCertUsage(cert)
}

// EncodeKeyPEM encodes a node key as a PKCS#8 PEM block, the form the
// tokens package writes and reads.
func EncodeKeyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKeyPEM reads a P-256 private key from PEM data; what names the
// source in errors.
func ParseKeyPEM(what string, data []byte) (*ecdsa.PrivateKey, error) {
	return parseECKeyPEM(what, data)
}
