// Package nodecert gets and renews a node's credentials through the
// Kubernetes CertificateSigningRequest API, for `bireme agent`: the node
// makes its key itself (it never leaves the node), asks `bireme signer`
// (signer name bireme.io/node) for a certificate naming the node, waits for
// it, and asks again for a new key's certificate at two thirds of the
// current one's lifetime, while the current one is still valid, so that
// peers never see this node without a valid certificate.
//
// The credentials are kept in a state directory, mode 0600, so a restarted
// agent reuses its key and certificate instead of asking again: node.pem
// holds the key and certificate in use (one file, replaced by rename, so
// key and certificate always match), next-key.pem the key a pending
// request is for (reused if the agent restarts while waiting).
package nodecert

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/bireme/bireme/tokens"
)

// SignerName is the signer of Bireme node certificates (the same name
// package signer serves).
const SignerName = "bireme.io/node"

// State file names inside Config.StateDir.
const (
	CredentialsFile = "node.pem"
	NextKeyFile     = "next-key.pem"
)

// Defaults of Config.
const (
	DefaultLifetime   = 24 * time.Hour
	DefaultRenewAfter = 2.0 / 3
	// minExpirationSeconds is the least expirationSeconds the API server
	// accepts in a request (a signer may still issue for less).
	minExpirationSeconds = 600
)

// Config configures a Manager.
type Config struct {
	// Client creates and reads certificate signing requests (required);
	// it needs create and get on certificatesigningrequests.
	Client kubernetes.Interface
	// Node and TrustDomain are what the certificate must name (required).
	Node, TrustDomain string
	// StateDir keeps the key and certificate (required); created 0700.
	StateDir string
	// Lifetime is the lifetime asked for (expirationSeconds, at least
	// 10 minutes; the signer may cap it). Default DefaultLifetime.
	Lifetime time.Duration
	// RenewAfter is the fraction of a certificate's remaining lifetime
	// (from when it was obtained or loaded) after which a new one is
	// requested (default DefaultRenewAfter).
	RenewAfter float64
	// Poll is how often a pending request is read again (default 500ms).
	Poll time.Duration
	// RequestTimeout bounds the wait for one request to be decided before
	// a new one is made (default 5 minutes).
	RequestTimeout time.Duration
	// Log receives requests, issuances, denials and rotations (nil:
	// discarded). Keys are never logged.
	Log *slog.Logger
}

// Manager gets and renews one node's credentials; see the package
// documentation.
type Manager struct {
	cfg Config
	log *slog.Logger
	// now is the clock (a field so tests can move it).
	now func() time.Time
	// current and renewAt describe the credentials in use.
	current *tokens.NodeCredentials
	renewAt time.Time
}

// New checks cfg and returns a Manager.
func New(cfg Config) (*Manager, error) {
	if cfg.Client == nil || cfg.Node == "" || cfg.TrustDomain == "" || cfg.StateDir == "" {
		return nil, errors.New("node certificates: Client, Node, TrustDomain and StateDir are required")
	}
	if cfg.Lifetime == 0 {
		cfg.Lifetime = DefaultLifetime
	}
	if cfg.Lifetime < minExpirationSeconds*time.Second {
		return nil, fmt.Errorf("node certificates: lifetime %v is below the API's minimum of %v", cfg.Lifetime, minExpirationSeconds*time.Second)
	}
	if cfg.RenewAfter == 0 {
		cfg.RenewAfter = DefaultRenewAfter
	}
	if cfg.RenewAfter <= 0 || cfg.RenewAfter >= 1 {
		return nil, fmt.Errorf("node certificates: renew-after fraction %v must be between 0 and 1", cfg.RenewAfter)
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 500 * time.Millisecond
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 5 * time.Minute
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{cfg: cfg, log: log, now: time.Now}, nil
}

// Initial returns the credentials to start with: those in the state
// directory if they are this node's and still valid, else new ones
// requested through the API (waiting, and retrying after a denial or a
// timeout, until ctx ends).
func (m *Manager) Initial(ctx context.Context) (*tokens.NodeCredentials, error) {
	if err := os.MkdirAll(m.cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("node certificates: state directory: %w", err)
	}
	creds, err := m.load()
	switch {
	case err == nil:
		m.use(creds)
		m.log.Info("node certificate loaded from the state directory", "file", m.path(CredentialsFile),
			"not_after", creds.Cert.NotAfter.UTC().Format(time.RFC3339), "renew_at", m.renewAt.UTC().Format(time.RFC3339))
		return creds, nil
	case !errors.Is(err, os.ErrNotExist):
		m.log.Warn("node certificate in the state directory not usable; requesting a new one", "err", err)
	}
	for backoff := time.Second; ; backoff = min(2*backoff, time.Minute) {
		creds, err := m.obtain(ctx)
		if err == nil {
			m.use(creds)
			return creds, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("node certificates: %w", ctx.Err())
		}
		m.log.Error("no node certificate yet; trying again", "err", err, "in", backoff)
		if !sleep(ctx, backoff) {
			return nil, fmt.Errorf("node certificates: %w", ctx.Err())
		}
	}
}

// Run renews the credentials until ctx ends: at the renewal time it
// requests a certificate for a new key and, once issued, saves it and
// hands it to rotate (the token engine's Rotate), which puts it in use for
// new handshakes while handshakes in flight finish with the old one. The
// old certificate stays valid until it expires, so connections made or
// being made with it are not affected. A failed renewal is retried with
// backoff while the current certificate is still valid, and after.
// Initial must have returned first.
func (m *Manager) Run(ctx context.Context, rotate func(*tokens.NodeCredentials) error) error {
	if m.current == nil {
		return errors.New("node certificates: Run before Initial")
	}
	backoff := time.Second
	for {
		if !sleep(ctx, m.renewAt.Sub(m.now())) {
			return nil
		}
		creds, err := m.obtain(ctx)
		if err == nil {
			err = rotate(creds)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			m.log.Error("node certificate renewal failed; keeping the current one", "err", err,
				"current_not_after", m.current.Cert.NotAfter.UTC().Format(time.RFC3339), "retry_in", backoff)
			m.renewAt = m.now().Add(backoff)
			backoff = min(2*backoff, time.Minute)
			continue
		}
		backoff = time.Second
		m.use(creds)
		m.log.Info("node certificate rotated", "not_after", creds.Cert.NotAfter.UTC().Format(time.RFC3339),
			"renew_at", m.renewAt.UTC().Format(time.RFC3339))
	}
}

// use makes creds the current credentials and sets their renewal time.
func (m *Manager) use(creds *tokens.NodeCredentials) {
	now := m.now()
	m.current = creds
	m.renewAt = now.Add(time.Duration(float64(creds.Cert.NotAfter.Sub(now)) * m.cfg.RenewAfter))
}

func (m *Manager) path(name string) string { return filepath.Join(m.cfg.StateDir, name) }

// load reads the state directory's credentials and checks they are this
// node's, fit for a node, and valid now.
func (m *Manager) load() (*tokens.NodeCredentials, error) {
	file := m.path(CredentialsFile)
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	creds, err := tokens.NodeCredentialsFromPEM(file, data, data)
	if err != nil {
		return nil, err
	}
	if err := m.check(creds.Cert); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return creds, nil
}

// check accepts a certificate for this node and trust domain, fit for a
// node and valid now.
func (m *Manager) check(cert *x509.Certificate) error {
	if err := tokens.CheckNodeCertificate(cert); err != nil {
		return err
	}
	td, node, _ := tokens.CertTrustDomain(cert)
	if td != m.cfg.TrustDomain || node != m.cfg.Node {
		return fmt.Errorf("certificate is for node %q of %q, not %q of %q", node, td, m.cfg.Node, m.cfg.TrustDomain)
	}
	if now := m.now(); now.Before(cert.NotBefore) || !now.Before(cert.NotAfter) {
		return fmt.Errorf("certificate valid from %s to %s, not now", cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// obtain gets a certificate for the pending key (made and saved first if
// there is none), saves key and certificate as the state, and returns them.
func (m *Manager) obtain(ctx context.Context) (*tokens.NodeCredentials, error) {
	key, err := m.nextKey()
	if err != nil {
		return nil, err
	}
	cert, err := m.request(ctx, key)
	if err != nil {
		return nil, err
	}
	keyPEM, err := tokens.EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	if err := writeFile0600(m.path(CredentialsFile), append(keyPEM, certPEM...)); err != nil {
		return nil, err
	}
	if err := os.Remove(m.path(NextKeyFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.log.Warn("remove the used pending key", "err", err)
	}
	return &tokens.NodeCredentials{Node: m.cfg.Node, TrustDomain: m.cfg.TrustDomain, Cert: cert, Key: key}, nil
}

// nextKey returns the key a request is made for: the pending one if an
// earlier request did not complete, else a new one, saved before it is
// used so that a restart asks for the same key.
func (m *Manager) nextKey() (*ecdsa.PrivateKey, error) {
	file := m.path(NextKeyFile)
	if data, err := os.ReadFile(file); err == nil {
		key, perr := tokens.ParseKeyPEM(file, data)
		if perr == nil {
			return key, nil
		}
		m.log.Warn("pending key unreadable; making a new one", "err", perr)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read pending key: %w", err)
	}
	key, err := tokens.GenerateNodeKey()
	if err != nil {
		return nil, err
	}
	data, err := tokens.EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	if err := writeFile0600(file, data); err != nil {
		return nil, err
	}
	return key, nil
}

// request creates a certificate signing request for key and waits until it
// is issued (the certificate, checked), denied or failed (an error with
// the signer's reason), or RequestTimeout passes.
func (m *Manager) request(ctx context.Context, key *ecdsa.PrivateKey) (*x509.Certificate, error) {
	req, err := tokens.NewNodeCSR(key, m.cfg.TrustDomain, m.cfg.Node)
	if err != nil {
		return nil, err
	}
	seconds := int32(m.cfg.Lifetime / time.Second)
	csrs := m.cfg.Client.CertificatesV1().CertificateSigningRequests()
	csr, err := csrs.Create(ctx, &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "bireme-node-"},
		Spec: certv1.CertificateSigningRequestSpec{
			Request:           req,
			SignerName:        SignerName,
			Usages:            []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageKeyAgreement},
			ExpirationSeconds: &seconds,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create certificate signing request: %w", err)
	}
	name := csr.Name
	m.log.Info("node certificate requested", "csr", name, "signer", SignerName)
	ctx, cancel := context.WithTimeout(ctx, m.cfg.RequestTimeout)
	defer cancel()
	for {
		for _, c := range csr.Status.Conditions {
			if c.Status != corev1.ConditionTrue {
				continue
			}
			if c.Type == certv1.CertificateDenied || c.Type == certv1.CertificateFailed {
				return nil, fmt.Errorf("certificate signing request %s %s: %s: %s", name, c.Type, c.Reason, c.Message)
			}
		}
		if len(csr.Status.Certificate) > 0 {
			cert, err := m.issued(name, csr.Status.Certificate, &key.PublicKey)
			if err != nil {
				return nil, err
			}
			m.log.Info("node certificate issued", "csr", name, "not_after", cert.NotAfter.UTC().Format(time.RFC3339))
			return cert, nil
		}
		if !sleep(ctx, m.cfg.Poll) {
			return nil, fmt.Errorf("certificate signing request %s: not decided in %v (is bireme signer running?): %w", name, m.cfg.RequestTimeout, ctx.Err())
		}
		csr, err = csrs.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("certificate signing request %s deleted before it was decided", name)
		}
		if err != nil {
			// Transient (the API server restarting): read again next time.
			m.log.Debug("read certificate signing request", "csr", name, "err", err)
			csr = &certv1.CertificateSigningRequest{}
		}
	}
}

// issued reads the certificate a signer returned and checks it is this
// node's, for key, fit for a node and valid now: nothing unusable is put
// in use or saved.
func (m *Manager) issued(name string, data []byte, pub *ecdsa.PublicKey) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("certificate signing request %s: status.certificate holds no PEM CERTIFICATE", name)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate signing request %s: %w", name, err)
	}
	if got, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !got.Equal(pub) {
		return nil, fmt.Errorf("certificate signing request %s: the certificate is not for this node's key", name)
	}
	if err := m.check(cert); err != nil {
		return nil, fmt.Errorf("certificate signing request %s: %w", name, err)
	}
	return cert, nil
}

// sleep waits d or until ctx ends; false if ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// writeFile0600 replaces name by a file of mode 0600 through a rename, so
// that readers see the old or the new content, never a mix, and the key is
// never readable by others, even briefly.
func writeFile0600(name string, data []byte) (err error) {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
			err = fmt.Errorf("write %s: %w", name, err)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}
