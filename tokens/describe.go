package tokens

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"
)

// DescribePEM returns a human summary of every certificate and private key
// in PEM data: kind (CA or node), subject, trust domain, node, issuer,
// validity at now, and fingerprints. For a private key it prints only the
// fingerprint of its public key, which matches the certificate's "public
// key sha256" line: private key material is never printed.
func DescribePEM(data []byte, now time.Time) (string, error) {
	var b strings.Builder
	n := 0
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if n > 0 {
			b.WriteString("\n")
		}
		n++
		switch block.Type {
		case "CERTIFICATE":
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return "", fmt.Errorf("PEM block %d: parse certificate: %w", n, err)
			}
			describeCert(&b, cert, now)
		case "PRIVATE KEY", "EC PRIVATE KEY":
			key, err := parseECKeyPEM(fmt.Sprintf("PEM block %d", n), pem.EncodeToMemory(block))
			if err != nil {
				return "", err
			}
			fmt.Fprintf(&b, "private key (not shown)\n")
			fmt.Fprintf(&b, "  algorithm:          %s\n", keyAlgorithm(&key.PublicKey))
			fmt.Fprintf(&b, "  public key sha256:  %s\n", publicKeyFingerprint(&key.PublicKey))
		default:
			fmt.Fprintf(&b, "PEM block %q: not a certificate or private key, skipped\n", block.Type)
		}
	}
	if n == 0 {
		return "", errors.New("no PEM block found")
	}
	return b.String(), nil
}

func describeCert(b *strings.Builder, c *x509.Certificate, now time.Time) {
	td, node, err := CertTrustDomain(c)
	kind := "node certificate"
	switch {
	case err != nil:
		kind = "certificate (not a Bireme certificate: no spiffe:// URI)"
	case c.IsCA:
		kind = "CA certificate"
	}
	status := "valid"
	switch {
	case now.Before(c.NotBefore):
		status = "NOT YET VALID"
	case now.After(c.NotAfter):
		status = "EXPIRED"
	}
	subject := c.Subject.String()
	if subject == "" {
		subject = "(empty)"
	}
	fmt.Fprintf(b, "%s\n", kind)
	fmt.Fprintf(b, "  subject:            %s\n", subject)
	if td != "" {
		fmt.Fprintf(b, "  trust domain:       %s\n", td)
	}
	if node != "" {
		fmt.Fprintf(b, "  node:               %s\n", node)
	}
	for _, u := range c.URIs {
		fmt.Fprintf(b, "  URI:                %s\n", u)
	}
	fmt.Fprintf(b, "  issuer:             %s\n", c.Issuer)
	fmt.Fprintf(b, "  serial:             %x\n", c.SerialNumber)
	fmt.Fprintf(b, "  not before:         %s\n", c.NotBefore.UTC().Format(time.RFC3339))
	fmt.Fprintf(b, "  not after:          %s (%s)\n", c.NotAfter.UTC().Format(time.RFC3339), status)
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); ok {
		fmt.Fprintf(b, "  algorithm:          %s\n", keyAlgorithm(pub))
	}
	fmt.Fprintf(b, "  size:               %d bytes DER\n", len(c.Raw))
	fmt.Fprintf(b, "  sha256 fingerprint: %s\n", colonHex(sha256.Sum256(c.Raw)))
	fmt.Fprintf(b, "  public key sha256:  %s\n", colonHex(sha256.Sum256(c.RawSubjectPublicKeyInfo)))
}

func keyAlgorithm(pub *ecdsa.PublicKey) string {
	if pub.Curve == elliptic.P256() {
		return "ECDSA P-256"
	}
	return "ECDSA " + pub.Curve.Params().Name
}

func publicKeyFingerprint(pub *ecdsa.PublicKey) string {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "(unavailable)"
	}
	return colonHex(sha256.Sum256(spki))
}

func colonHex(sum [32]byte) string {
	parts := make([]string, len(sum))
	for i, c := range sum {
		parts[i] = fmt.Sprintf("%02X", c)
	}
	return strings.Join(parts, ":")
}
