package apisource

import (
	"context"
	"encoding/pem"
	"fmt"
	"net/netip"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/k8s/nodecert"
	"github.com/bireme/bireme/tokens"
)

func issuedCSR(t *testing.T, name, signer string, ca *tokens.CA, node string) *certv1.CertificateSigningRequest {
	t.Helper()
	creds, err := ca.IssueNode(node, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       certv1.CertificateSigningRequestSpec{SignerName: signer},
		Status:     certv1.CertificateSigningRequestStatus{Certificate: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: creds.Cert.Raw})},
	}
}

// describe renders node certificates as "node:certs:addrs ...".
func describe(nc *desired.NodeCerts) string {
	if nc == nil {
		return "<nil>"
	}
	out := ""
	for _, h := range nc.Nodes {
		out += fmt.Sprintf("%s:%d:%v ", h.Node, len(h.Certs), h.Addrs)
	}
	return out
}

// The node certificates of signer bireme.io/node's requests, per node with
// its pods' addresses (host-network pods left out), this node always;
// other signers' certificates and other trust domains' are not; a
// certificate stays after its request is deleted.
func TestSourcePublishesNodeCertificates(t *testing.T) {
	if nodeSignerName != nodecert.SignerName {
		t.Fatalf("signer %q, nodecert asks %q", nodeSignerName, nodecert.SignerName)
	}
	ca, err := tokens.NewCA("c1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := tokens.NewCA("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	host := pod("kube-system", "proxy", "n2", "198.18.9.1", corev1.PodRunning, nil)
	host.Spec.HostNetwork = true
	client := fake.NewClientset(
		pod("x", "a", "n1", "198.18.0.2", corev1.PodRunning, nil),
		pod("x", "b", "n2", "198.18.0.3", corev1.PodRunning, nil),
		host,
		issuedCSR(t, "n2-cert", nodecert.SignerName, ca, "n2"),
		issuedCSR(t, "n3-client", "kubernetes.io/kube-apiserver-client", ca, "n3"),
		issuedCSR(t, "n4-foreign", nodecert.SignerName, foreign, "n4"),
	)
	scan := &fixedScan{byAddr: map[netip.Addr][]string{}}
	s := runSource(t, Config{Client: client, Node: "n1", Cluster: "c1", NetNS: scan, NodeCertificates: true})
	want := "n1:0:[198.18.0.2] n2:1:[198.18.0.3] "
	if got := describe(s.next("start").NodeCerts); got != want {
		t.Fatalf("node certificates %q, want %q", got, want)
	}

	ctx := context.Background()
	if err := client.CertificatesV1().CertificateSigningRequests().Delete(ctx, "n2-cert", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Pods("x").Create(ctx, pod("x", "c", "n2", "198.18.0.4", corev1.PodRunning, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want = "n1:0:[198.18.0.2] n2:1:[198.18.0.3 198.18.0.4] "
	s.until("a pod on n2 and its certificate's request deleted", func(st desired.State) bool {
		return describe(st.NodeCerts) == want
	})

	// Without the option: none.
	plain := runSource(t, Config{Client: client, Node: "n1", Cluster: "c1", NetNS: scan})
	if nc := plain.next("start").NodeCerts; nc != nil {
		t.Fatalf("node certificates delivered without NodeCertificates: %s", describe(nc))
	}
}
