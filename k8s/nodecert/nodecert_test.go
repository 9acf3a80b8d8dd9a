package nodecert

import (
	"context"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/bireme/bireme/tokens"
)

// These unit tests use client-go's fake clientset, with a goroutine playing
// the signer; the real API server and `bireme signer` are exercised by
// e2e/kubernetes (TestNodeCertificatesThroughCSR).

// fakeSigner decides every request in client: deny (with a reason) or sign
// for lifetime with ca.
type fakeSigner struct {
	ca       *tokens.CA
	lifetime time.Duration
	mu       sync.Mutex
	deny     string
	seen     []*certv1.CertificateSigningRequest
}

func (s *fakeSigner) run(t *testing.T, ctx context.Context, client kubernetes.Interface) {
	done := map[string]bool{}
	go func() {
		for ctx.Err() == nil {
			list, err := client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
			if err != nil {
				return
			}
			for i := range list.Items {
				csr := &list.Items[i]
				if done[csr.Name] {
					continue
				}
				done[csr.Name] = true
				s.mu.Lock()
				s.seen = append(s.seen, csr.DeepCopy())
				deny := s.deny
				s.mu.Unlock()
				if deny != "" {
					csr.Status.Conditions = append(csr.Status.Conditions, certv1.CertificateSigningRequestCondition{
						Type: certv1.CertificateDenied, Status: corev1.ConditionTrue, Reason: "WrongNode", Message: deny})
				} else {
					req, err := tokens.ParseNodeCSR(csr.Spec.Request)
					if err != nil {
						t.Error(err)
						return
					}
					cert, err := s.ca.SignNode(req.Node, req.PublicKey, s.lifetime)
					if err != nil {
						t.Error(err)
						return
					}
					csr.Status.Certificate = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
				}
				if _, err := client.CertificatesV1().CertificateSigningRequests().UpdateStatus(ctx, csr, metav1.UpdateOptions{}); err != nil {
					t.Error(err)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
}

func (s *fakeSigner) requests() []*certv1.CertificateSigningRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*certv1.CertificateSigningRequest(nil), s.seen...)
}

func setup(t *testing.T, lifetime time.Duration) (*fake.Clientset, *fakeSigner, context.Context) {
	t.Helper()
	ca, err := tokens.NewCA("prod", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	client := fake.NewClientset()
	// The fake does not implement generateName, which the API server does.
	var n atomic.Int64
	client.PrependReactor("create", "certificatesigningrequests", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if csr, ok := a.(k8stesting.CreateAction).GetObject().(*certv1.CertificateSigningRequest); ok && csr.Name == "" {
			csr.Name = csr.GenerateName + strconv.FormatInt(n.Add(1), 10)
		}
		return false, nil, nil
	})
	s := &fakeSigner{ca: ca, lifetime: lifetime}
	s.run(t, ctx, client)
	return client, s, ctx
}

func newManager(t *testing.T, client kubernetes.Interface, dir string) *Manager {
	t.Helper()
	m, err := New(Config{Client: client, Node: "n1", TrustDomain: "prod", StateDir: dir, Lifetime: 10 * time.Minute, Poll: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// The first start requests a certificate for a key made on the node and
// keeps both in the state directory, mode 0600; the next start reuses them
// without a request.
func TestInitialRequestsThenReuses(t *testing.T) {
	client, signer, ctx := setup(t, time.Hour)
	dir := filepath.Join(t.TempDir(), "state")
	creds, err := newManager(t, client, dir).Initial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if creds.Node != "n1" || creds.TrustDomain != "prod" {
		t.Fatalf("credentials for %s/%s", creds.TrustDomain, creds.Node)
	}
	reqs := signer.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	spec := reqs[0].Spec
	if spec.SignerName != SignerName || spec.ExpirationSeconds == nil || *spec.ExpirationSeconds != 600 ||
		len(spec.Usages) != 2 || spec.Usages[0] != certv1.UsageDigitalSignature || spec.Usages[1] != certv1.UsageKeyAgreement {
		t.Errorf("request spec %+v", spec)
	}
	for file, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, CredentialsFile): 0o600} {
		st, err := os.Stat(file)
		if err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", file, st.Mode().Perm(), err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, NextKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pending key still there after issuance (%v)", err)
	}

	again, err := newManager(t, client, dir).Initial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Key.Equal(creds.Key) || !again.Cert.Equal(creds.Cert) {
		t.Error("a restart did not reuse the key and certificate")
	}
	if n := len(signer.requests()); n != 1 {
		t.Errorf("a restart made a request (%d in all)", n)
	}
}

// A denied request is an error that carries the signer's reason, and the
// pending key stays so that the next attempt asks for the same key.
func TestDeniedRequestSaysWhy(t *testing.T) {
	client, signer, ctx := setup(t, time.Hour)
	signer.mu.Lock()
	signer.deny = `request is for node "n1" but the requester's token is bound to pod "p" on node "n2"`
	signer.mu.Unlock()
	dir := t.TempDir()
	m := newManager(t, client, dir)
	_, err := m.obtain(ctx)
	if err == nil || !strings.Contains(err.Error(), "Denied: WrongNode") || !strings.Contains(err.Error(), "bound to pod") {
		t.Fatalf("obtain: %v", err)
	}
	pending, err := os.ReadFile(filepath.Join(dir, NextKeyFile))
	if err != nil {
		t.Fatalf("pending key: %v", err)
	}
	signer.mu.Lock()
	signer.deny = ""
	signer.mu.Unlock()
	creds, err := m.obtain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key, err := tokens.ParseKeyPEM("pending", pending)
	if err != nil {
		t.Fatal(err)
	}
	if !key.Equal(creds.Key) {
		t.Error("the second attempt did not use the pending key")
	}
}

// Run renews at two thirds of the lifetime, with a new key each time, and
// hands each new pair to rotate; the state file follows.
func TestRunRotatesBeforeExpiry(t *testing.T) {
	client, _, ctx := setup(t, 3*time.Second)
	dir := t.TempDir()
	m := newManager(t, client, dir)
	first, err := m.Initial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rotated := make(chan *tokens.NodeCredentials, 4)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- m.Run(runCtx, func(c *tokens.NodeCredentials) error { rotated <- c; return nil })
	}()
	var next *tokens.NodeCredentials
	select {
	case next = <-rotated:
	case <-time.After(15 * time.Second):
		t.Fatal("no rotation within 15s of a 3s certificate")
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if time.Now().After(first.Cert.NotAfter) {
		t.Errorf("rotated only after the first certificate expired (%v)", first.Cert.NotAfter)
	}
	if next.Key.Equal(first.Key) || !next.Cert.NotAfter.After(first.Cert.NotAfter) {
		t.Error("the rotation kept the key or did not extend the validity")
	}
	data, err := os.ReadFile(filepath.Join(dir, CredentialsFile))
	if err != nil {
		t.Fatal(err)
	}
	saved, err := tokens.NodeCredentialsFromPEM("state", data, data)
	if err != nil {
		t.Fatal(err)
	}
	if !saved.Cert.Equal(next.Cert) && !saved.Cert.NotAfter.After(next.Cert.NotAfter) {
		t.Error("the state file does not hold the rotated certificate")
	}
}

func TestNewChecksConfig(t *testing.T) {
	client := fake.NewClientset()
	for name, cfg := range map[string]Config{
		"no client":          {Node: "n1", TrustDomain: "prod", StateDir: "d"},
		"no state dir":       {Client: client, Node: "n1", TrustDomain: "prod"},
		"lifetime below 10m": {Client: client, Node: "n1", TrustDomain: "prod", StateDir: "d", Lifetime: time.Minute},
		"renew after 1":      {Client: client, Node: "n1", TrustDomain: "prod", StateDir: "d", RenewAfter: 1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
