// Package signer is `bireme signer`: the one holder of the cluster CA's key
// on a cluster, which issues node certificates through the Kubernetes
// CertificateSigningRequest API (signer name bireme.io/node).
//
// A node certificate lets its holder speak for every pod on that node, so a
// request is signed only when the API server itself vouches that the
// requester runs on the node it asks a certificate for: the request must
// come from the Bireme agent's service account, with a token bound to a pod
// (TokenRequest boundObjectRef kind Pod, which is what a kubelet mounts),
// and the API server then records the node that pod is scheduled on in the
// request's spec.extra["authentication.kubernetes.io/node-name"]. The node
// named in the certificate request must be that node. The requester cannot
// write spec.username or spec.extra: the API server fills them from the
// credentials of the create call. Everything else is denied, with a
// condition saying why.
//
// Decide is the decision on one request, a pure function; Signer is the
// controller that watches requests and writes decisions and certificates.
package signer

import (
	"crypto/ecdsa"
	"fmt"
	"slices"
	"time"

	certv1 "k8s.io/api/certificates/v1"

	"github.com/bireme/bireme/tokens"
)

// Name is the signerName of Bireme node certificate requests.
const Name = "bireme.io/node"

// Keys of spec.extra the API server sets from a bound service account
// token: the node its pod runs on, and the pod.
const (
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
)

// Usages are the key usages a node certificate request must ask for,
// exactly: a node key signs identity tokens and is the static ECDH key of
// handshake proofs (what tokens requires of a node certificate).
var Usages = []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageKeyAgreement}

// Reasons of the conditions the signer writes.
const (
	ReasonApproved       = "BiremeNodeBound"
	ReasonWrongSigner    = "WrongSigner"
	ReasonWrongRequester = "WrongRequester"
	ReasonNotBound       = "NotBoundToNode"
	ReasonBadRequest     = "BadRequest"
	ReasonBadKeyUsage    = "BadKeyUsage"
	ReasonWrongDomain    = "WrongTrustDomain"
	ReasonWrongNode      = "WrongNode"
)

// Policy is what the signer accepts.
type Policy struct {
	// TrustDomain is the CA's: requests must name it.
	TrustDomain string
	// AgentNamespace and AgentServiceAccount name the agents' service
	// account, the only requester allowed.
	AgentNamespace, AgentServiceAccount string
	// MaxLifetime caps a certificate's lifetime; a request's
	// expirationSeconds may ask for less, never more.
	MaxLifetime time.Duration
}

// Username is the user name the API server gives the agents' service
// account.
func (p Policy) Username() string {
	return "system:serviceaccount:" + p.AgentNamespace + ":" + p.AgentServiceAccount
}

// Decision is the signer's answer to one request.
type Decision struct {
	// Approve is true when the request is to be signed.
	Approve bool
	// Reason (CamelCase) and Message go into the Approved or Denied
	// condition.
	Reason, Message string
	// Node, PublicKey and Lifetime are what to sign, when approved.
	Node      string
	PublicKey *ecdsa.PublicKey
	Lifetime  time.Duration
}

func deny(reason, format string, args ...any) Decision {
	return Decision{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// Decide checks one request against p. It never looks at anything the
// requester could choose to make the requester look like someone else:
// identity and node come from spec.username and spec.extra, which the API
// server writes.
func Decide(csr *certv1.CertificateSigningRequest, p Policy) Decision {
	if csr.Spec.SignerName != Name {
		return deny(ReasonWrongSigner, "signer name %q is not %q", csr.Spec.SignerName, Name)
	}
	if csr.Spec.Username != p.Username() {
		return deny(ReasonWrongRequester, "requested by %q: only the Bireme agent's service account %q may request node certificates", csr.Spec.Username, p.Username())
	}
	nodes, pods := csr.Spec.Extra[ExtraNodeName], csr.Spec.Extra[ExtraPodName]
	if len(nodes) != 1 || nodes[0] == "" || len(pods) != 1 || pods[0] == "" {
		return deny(ReasonNotBound, "the requester's token is not bound to a pod on a node (no single %s and %s in spec.extra): use the pod's projected service account token", ExtraNodeName, ExtraPodName)
	}
	boundNode := nodes[0]
	if !sameUsages(csr.Spec.Usages, Usages) {
		return deny(ReasonBadKeyUsage, "usages %v: a node certificate has exactly %v", csr.Spec.Usages, Usages)
	}
	req, err := tokens.ParseNodeCSR(csr.Spec.Request)
	if err != nil {
		return deny(ReasonBadRequest, "request: %v", err)
	}
	if req.TrustDomain != p.TrustDomain {
		return deny(ReasonWrongDomain, "request names trust domain %q; this signer's CA vouches for %q", req.TrustDomain, p.TrustDomain)
	}
	if req.Node != boundNode {
		return deny(ReasonWrongNode, "request is for node %q but the requester's token is bound to pod %q on node %q", req.Node, pods[0], boundNode)
	}
	lifetime := p.MaxLifetime
	if s := csr.Spec.ExpirationSeconds; s != nil && *s > 0 {
		if asked := time.Duration(*s) * time.Second; asked < lifetime {
			lifetime = asked
		}
	}
	return Decision{
		Approve: true, Reason: ReasonApproved,
		Message:   fmt.Sprintf("node %q: requester's token is bound to pod %q on that node", req.Node, pods[0]),
		Node:      req.Node,
		PublicKey: req.PublicKey,
		Lifetime:  lifetime,
	}
}

// sameUsages reports whether got holds exactly the usages of want, each
// once, in any order.
func sameUsages(got, want []certv1.KeyUsage) bool {
	if len(got) != len(want) {
		return false
	}
	sorted := func(u []certv1.KeyUsage) []string {
		s := make([]string, len(u))
		for i, x := range u {
			s[i] = string(x)
		}
		slices.Sort(s)
		return s
	}
	return slices.Equal(sorted(got), sorted(want))
}
