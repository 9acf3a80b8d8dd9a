package apisource

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net/netip"
	"slices"
	"sort"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/tokens"
)

// Node certificates published ahead of time: `bireme signer` writes each
// node's certificate into the status of that node's request (signer
// bireme.io/node), where every agent allowed to list requests can read
// it. Nothing here is trusted: the certificates go to the tokens engine,
// which uses one only once it verifies against the trust bundle for the
// very node it is listed under (tokens.NodeHint); this package only sorts
// them by the node their SPIFFE ID names. A certificate stays known after
// its request is deleted (the API's cleaner deletes issued requests after
// an hour), until it expires: a node renews its certificate long before
// that.

// trimCSR keeps of a request what the node certificates need: its name,
// resource version and issued certificate (not the request itself).
func trimCSR(obj any) (any, error) {
	c, ok := obj.(*certv1.CertificateSigningRequest)
	if !ok {
		return obj, nil // a tombstone
	}
	return &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: c.Name, UID: c.UID, ResourceVersion: c.ResourceVersion},
		Spec:       certv1.CertificateSigningRequestSpec{SignerName: c.Spec.SignerName},
		Status:     certv1.CertificateSigningRequestStatus{Certificate: c.Status.Certificate},
	}, nil
}

// computeNodeCerts adds the certificates of the node signer's requests to
// those seen before, forgets the expired ones, and returns per node its
// certificates and the addresses of the pods placed on it. This node is
// always listed (its engine uses its own key for its own pods).
func (s *state) computeNodeCerts(now time.Time) (*desired.NodeCerts, error) {
	csrs, err := s.l.csrs.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	for _, csr := range csrs {
		if csr.Spec.SignerName != nodeSignerName {
			continue // the field selector already left these out
		}
		for _, c := range parseCertificates(csr.Status.Certificate) {
			td, node, err := tokens.CertTrustDomain(c)
			if err != nil || td != s.cfg.Cluster || node == "" || !now.Before(c.NotAfter) {
				continue
			}
			if s.published[node] == nil {
				s.published[node] = map[string]*x509.Certificate{}
			}
			s.published[node][string(c.Raw)] = c
		}
	}
	for node, certs := range s.published {
		for raw, c := range certs {
			if !now.Before(c.NotAfter) {
				delete(certs, raw)
			}
		}
		if len(certs) == 0 {
			delete(s.published, node)
		}
	}
	addrs, err := s.addressesByNode()
	if err != nil {
		return nil, err
	}
	out := &desired.NodeCerts{}
	nodes := []string{s.cfg.Node}
	for node := range s.published {
		if node != s.cfg.Node {
			nodes = append(nodes, node)
		}
	}
	sort.Strings(nodes[1:])
	for _, node := range nodes {
		h := tokens.NodeHint{Node: node, Addrs: addrs[node]}
		for _, c := range s.published[node] {
			h.Certs = append(h.Certs, c)
		}
		sort.Slice(h.Certs, func(i, j int) bool { return bytes.Compare(h.Certs[i].Raw, h.Certs[j].Raw) < 0 })
		if node == s.cfg.Node || len(h.Addrs) > 0 {
			out.Nodes = append(out.Nodes, h)
		}
	}
	return out, nil
}

// addressesByNode maps each node to the addresses of the pods placed on
// it, as placement does for identities: pods on the host network (their
// address is the node's, shared with every host-network pod) and pods
// that finished are left out, and so is an address two pods claim.
func (s *state) addressesByNode() (map[string][]netip.Addr, error) {
	pods, err := s.l.allPods.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	owner := map[netip.Addr]string{}
	for _, pod := range pods {
		if pod.Spec.NodeName == "" || pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, ip := range podIPs(pod) {
			if prev, dup := owner[ip]; dup && prev != pod.Spec.NodeName {
				owner[ip] = "" // claimed on two nodes: neither
				continue
			}
			owner[ip] = pod.Spec.NodeName
		}
	}
	out := map[string][]netip.Addr{}
	for ip, node := range owner {
		if node != "" {
			out[node] = append(out[node], ip)
		}
	}
	for _, as := range out {
		slices.SortFunc(as, func(a, b netip.Addr) int { return a.Compare(b) })
	}
	return out, nil
}

// parseCertificates reads the PEM certificates of a request's status
// (the issued certificate, possibly followed by its chain); what does not
// parse is skipped.
func parseCertificates(data []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for len(data) > 0 {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// sameNodeCerts compares two deliveries (sorted as computeNodeCerts sorts).
func sameNodeCerts(a, b *desired.NodeCerts) bool {
	if a == nil || b == nil {
		return a == b
	}
	return slices.EqualFunc(a.Nodes, b.Nodes, func(x, y tokens.NodeHint) bool {
		return x.Node == y.Node && slices.Equal(x.Addrs, y.Addrs) &&
			slices.EqualFunc(x.Certs, y.Certs, func(c, d *x509.Certificate) bool { return bytes.Equal(c.Raw, d.Raw) })
	})
}
