package signer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"

	"github.com/bireme/bireme/tokens"
)

var testPolicy = Policy{
	TrustDomain:         "prod",
	AgentNamespace:      "bireme-system",
	AgentServiceAccount: "bireme-agent",
	MaxLifetime:         time.Hour,
}

func nodeKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := tokens.GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func nodeRequest(t *testing.T, key *ecdsa.PrivateKey, domain, node string) []byte {
	t.Helper()
	req, err := tokens.NewNodeCSR(key, domain, node)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// rawRequest builds a certificate request from a template, for the shapes
// NewNodeCSR refuses to make.
func rawRequest(t *testing.T, key any, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// agentCSR is a request as the API server stores it when the agent on
// node n1, with its pod-bound token, asks for n1's certificate.
func agentCSR(t *testing.T, key *ecdsa.PrivateKey) *certv1.CertificateSigningRequest {
	return &certv1.CertificateSigningRequest{
		Spec: certv1.CertificateSigningRequestSpec{
			Request:    nodeRequest(t, key, "prod", "n1"),
			SignerName: Name,
			Usages:     []certv1.KeyUsage{certv1.UsageKeyAgreement, certv1.UsageDigitalSignature},
			Username:   "system:serviceaccount:bireme-system:bireme-agent",
			Extra: map[string]certv1.ExtraValue{
				ExtraNodeName:                          {"n1"},
				ExtraPodName:                           {"bireme-agent-x7k2p"},
				"authentication.kubernetes.io/pod-uid": {"0b5c"},
			},
		},
	}
}

func TestDecide(t *testing.T) {
	key := nodeKey(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	seconds := func(s int32) *int32 { return &s }
	tests := []struct {
		name         string
		edit         func(*certv1.CertificateSigningRequest)
		want         string // reason
		wantIn       string // in the message
		wantLifetime time.Duration
	}{
		{name: "the agent asks for its own node", want: ReasonApproved, wantLifetime: time.Hour},
		{name: "a shorter lifetime asked for", edit: func(c *certv1.CertificateSigningRequest) { c.Spec.ExpirationSeconds = seconds(900) },
			want: ReasonApproved, wantLifetime: 15 * time.Minute},
		{name: "a longer lifetime asked for is capped", edit: func(c *certv1.CertificateSigningRequest) { c.Spec.ExpirationSeconds = seconds(86400) },
			want: ReasonApproved, wantLifetime: time.Hour},
		{name: "another node than the token's", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Request = nodeRequest(t, key, "prod", "n2")
		}, want: ReasonWrongNode, wantIn: `for node "n2" but the requester's token is bound to pod "bireme-agent-x7k2p" on node "n1"`},
		{name: "another service account", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Username = "system:serviceaccount:x:default"
		}, want: ReasonWrongRequester, wantIn: "system:serviceaccount:x:default"},
		{name: "the agent's name in another namespace", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Username = "system:serviceaccount:evil:bireme-agent"
		}, want: ReasonWrongRequester},
		{name: "a user", edit: func(c *certv1.CertificateSigningRequest) { c.Spec.Username = "admin" }, want: ReasonWrongRequester},
		{name: "a node's kubelet", edit: func(c *certv1.CertificateSigningRequest) { c.Spec.Username = "system:node:n1" }, want: ReasonWrongRequester},
		{name: "an unbound token", edit: func(c *certv1.CertificateSigningRequest) { c.Spec.Extra = nil }, want: ReasonNotBound},
		{name: "a token bound to a node, not a pod", edit: func(c *certv1.CertificateSigningRequest) {
			delete(c.Spec.Extra, ExtraPodName)
		}, want: ReasonNotBound},
		{name: "two node names", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Extra[ExtraNodeName] = certv1.ExtraValue{"n1", "n2"}
		}, want: ReasonNotBound},
		{name: "an empty node name", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Extra[ExtraNodeName] = certv1.ExtraValue{""}
		}, want: ReasonNotBound},
		{name: "client auth added", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Usages = append(c.Spec.Usages, certv1.UsageClientAuth)
		}, want: ReasonBadKeyUsage},
		{name: "key agreement missing", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Usages = []certv1.KeyUsage{certv1.UsageDigitalSignature}
		}, want: ReasonBadKeyUsage},
		{name: "a usage twice instead of both", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Usages = []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageDigitalSignature}
		}, want: ReasonBadKeyUsage},
		{name: "cert sign", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Usages = []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageCertSign}
		}, want: ReasonBadKeyUsage},
		{name: "another trust domain", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Request = nodeRequest(t, key, "other", "n1")
		}, want: ReasonWrongDomain},
		{name: "another signer", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.SignerName = "kubernetes.io/kube-apiserver-client"
		}, want: ReasonWrongSigner},
		{name: "not PEM", edit: func(c *certv1.CertificateSigningRequest) { c.Spec.Request = []byte("hello") }, want: ReasonBadRequest},
		{name: "a P-384 key", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Request = rawRequest(t, p384, &x509.CertificateRequest{URIs: []*url.URL{{Scheme: "spiffe", Host: "prod", Path: "/node/n1"}}})
		}, want: ReasonBadRequest, wantIn: "P-256"},
		{name: "a DNS name besides", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Request = rawRequest(t, key, &x509.CertificateRequest{DNSNames: []string{"n1"},
				URIs: []*url.URL{{Scheme: "spiffe", Host: "prod", Path: "/node/n1"}}})
		}, want: ReasonBadRequest},
		{name: "a subject", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Request = rawRequest(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n1"},
				URIs: []*url.URL{{Scheme: "spiffe", Host: "prod", Path: "/node/n1"}}})
		}, want: ReasonBadRequest},
		{name: "two node URIs", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Request = rawRequest(t, key, &x509.CertificateRequest{URIs: []*url.URL{
				{Scheme: "spiffe", Host: "prod", Path: "/node/n1"}, {Scheme: "spiffe", Host: "prod", Path: "/node/n2"}}})
		}, want: ReasonBadRequest},
		{name: "a node URI with a query", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Request = rawRequest(t, key, &x509.CertificateRequest{URIs: []*url.URL{
				{Scheme: "spiffe", Host: "prod", Path: "/node/n1", RawQuery: "x=n2"}}})
		}, want: ReasonBadRequest},
		{name: "the CA's URI", edit: func(c *certv1.CertificateSigningRequest) {
			c.Spec.Request = rawRequest(t, key, &x509.CertificateRequest{URIs: []*url.URL{{Scheme: "spiffe", Host: "prod"}}})
		}, want: ReasonBadRequest},
		{name: "a request signed by another key", edit: func(c *certv1.CertificateSigningRequest) {
			block, _ := pem.Decode(c.Spec.Request)
			block.Bytes[len(block.Bytes)-1] ^= 1
			c.Spec.Request = pem.EncodeToMemory(block)
		}, want: ReasonBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr := agentCSR(t, key)
			if tt.edit != nil {
				tt.edit(csr)
			}
			d := Decide(csr, testPolicy)
			if d.Reason != tt.want {
				t.Fatalf("reason %q (%s), want %q", d.Reason, d.Message, tt.want)
			}
			if d.Approve != (tt.want == ReasonApproved) {
				t.Fatalf("approve = %v with reason %q", d.Approve, d.Reason)
			}
			if !strings.Contains(d.Message, tt.wantIn) {
				t.Errorf("message %q does not say %q", d.Message, tt.wantIn)
			}
			if d.Approve {
				if d.Node != "n1" || !d.PublicKey.Equal(&key.PublicKey) || d.Lifetime != tt.wantLifetime {
					t.Errorf("approved node %q, key match %v, lifetime %v; want n1, true, %v", d.Node, d.PublicKey.Equal(&key.PublicKey), d.Lifetime, tt.wantLifetime)
				}
			}
		})
	}
}

// What an approved request is signed into is a certificate every Bireme
// verifier accepts as the node's: the same form tokens.IssueNode makes,
// valid now, capped by the decision's lifetime.
func TestApprovedRequestSignsANodeCertificate(t *testing.T) {
	ca, err := tokens.NewCA("prod", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key := nodeKey(t)
	d := Decide(agentCSR(t, key), Policy{TrustDomain: "prod", AgentNamespace: "bireme-system", AgentServiceAccount: "bireme-agent", MaxLifetime: 10 * time.Minute})
	if !d.Approve {
		t.Fatalf("denied: %s", d.Message)
	}
	cert, err := ca.SignNode(d.Node, d.PublicKey, d.Lifetime)
	if err != nil {
		t.Fatal(err)
	}
	if err := tokens.CheckNodeCertificate(cert); err != nil {
		t.Fatal(err)
	}
	td, node, err := tokens.CertTrustDomain(cert)
	if err != nil || td != "prod" || node != "n1" {
		t.Fatalf("certificate names %q/%q (%v), want prod/n1", td, node, err)
	}
	if time.Until(cert.NotAfter) > 10*time.Minute || time.Until(cert.NotAfter) < 9*time.Minute {
		t.Errorf("certificate expires in %v, want 10m", time.Until(cert.NotAfter))
	}
	if cert.NotBefore.After(time.Now()) {
		t.Errorf("certificate valid only from %v", cert.NotBefore)
	}
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatal(err)
	}
	// The node's credentials, made of its own key and this certificate,
	// start a token engine: peers configured alike accept them.
	bundle, err := tokens.NewTrustBundle(ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.NewEngine(tokens.Config{Credentials: &tokens.NodeCredentials{Node: "n1", TrustDomain: "prod", Cert: cert, Key: key}, Trust: bundle}); err != nil {
		t.Fatal(err)
	}
}
