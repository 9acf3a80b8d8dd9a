package signer

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	certlisters "k8s.io/client-go/listers/certificates/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/bireme/bireme/tokens"
)

// DefaultMaxLifetime caps node certificates when Config.MaxLifetime is 0:
// a day, so that a node taken out of the cluster loses its identity within
// a day without any revocation list; agents renew at two thirds of it.
const DefaultMaxLifetime = 24 * time.Hour

// Config configures a Signer.
type Config struct {
	// Client reads requests and writes decisions and certificates
	// (required). It needs get/list/watch on certificatesigningrequests,
	// update on their approval and status, and approve and sign on the
	// signer bireme.io/node.
	Client kubernetes.Interface
	// CA signs the certificates (required); its trust domain is the one
	// requests must name.
	CA *tokens.CA
	// AgentNamespace and AgentServiceAccount name the only requester
	// allowed (required).
	AgentNamespace, AgentServiceAccount string
	// MaxLifetime caps each certificate's lifetime (default
	// DefaultMaxLifetime).
	MaxLifetime time.Duration
	// Log receives one line per decision (nil: discarded).
	Log *slog.Logger
	// Metrics, if set, gets bireme_signer_decisions_total.
	Metrics prometheus.Registerer
}

// Signer watches bireme.io/node requests and approves and signs, or
// denies, each one once; see the package documentation.
type Signer struct {
	client kubernetes.Interface
	ca     *tokens.CA
	policy Policy
	log    *slog.Logger
	// decisions counts outcomes by decision (signed, denied, failed) and
	// reason; never nil (unregistered when Config.Metrics is nil).
	decisions *prometheus.CounterVec
	ready     atomic.Bool
}

// Ready reports whether the signer has its first complete list of
// requests and is deciding them: its /readyz.
func (s *Signer) Ready() bool { return s.ready.Load() }

// New checks cfg and returns a Signer ready to Run.
func New(cfg Config) (*Signer, error) {
	if cfg.Client == nil || cfg.CA == nil || cfg.CA.Key == nil || cfg.CA.Cert == nil {
		return nil, errors.New("signer: Client and a CA with its key are required")
	}
	if cfg.AgentNamespace == "" || cfg.AgentServiceAccount == "" {
		return nil, errors.New("signer: the agents' service account (namespace and name) is required")
	}
	if cfg.MaxLifetime < 0 {
		return nil, fmt.Errorf("signer: max lifetime %v must not be negative", cfg.MaxLifetime)
	}
	if cfg.MaxLifetime == 0 {
		cfg.MaxLifetime = DefaultMaxLifetime
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bireme_signer_decisions_total",
		Help: "Node certificate requests decided, by decision (signed, denied, failed) and reason.",
	}, []string{"decision", "reason"})
	if cfg.Metrics != nil {
		if err := cfg.Metrics.Register(decisions); err != nil {
			return nil, fmt.Errorf("signer: metrics: %w", err)
		}
	}
	return &Signer{
		decisions: decisions,
		client:    cfg.Client,
		ca:        cfg.CA,
		policy: Policy{
			TrustDomain:         cfg.CA.TrustDomain,
			AgentNamespace:      cfg.AgentNamespace,
			AgentServiceAccount: cfg.AgentServiceAccount,
			MaxLifetime:         cfg.MaxLifetime,
		},
		log: log,
	}, nil
}

// Run handles requests until ctx ends (nil) or the first list of requests
// cannot be had (an error). A request whose update fails (a conflict, the
// API server unreachable) is retried with backoff.
func (s *Signer) Run(ctx context.Context) error {
	// Only our signer's requests: the API server filters by signer name.
	factory := informers.NewSharedInformerFactoryWithOptions(s.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.signerName", Name).String()
		}))
	inf := factory.Certificates().V1().CertificateSigningRequests()
	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "bireme-signer"})
	defer queue.ShutDown()
	enqueue := func(obj any) {
		if csr, ok := obj.(*certv1.CertificateSigningRequest); ok {
			queue.Add(csr.Name)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		return fmt.Errorf("signer: watch requests: %w", err)
	}
	lister := inf.Lister()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	syncCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), inf.Informer().HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("signer: no list of certificate signing requests from the API server within a minute")
	}
	s.ready.Store(true)
	defer s.ready.Store(false)
	s.log.Info("signer started", "signer", Name, "trust_domain", s.policy.TrustDomain,
		"requester", s.policy.Username(), "max_lifetime", s.policy.MaxLifetime)
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	for s.next(ctx, queue, lister) {
	}
	return nil
}

// next handles one queued request; false once the queue is shut down.
func (s *Signer) next(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string], lister certlisters.CertificateSigningRequestLister) bool {
	name, shutdown := queue.Get()
	if shutdown {
		return false
	}
	defer queue.Done(name)
	csr, err := lister.Get(name)
	if err != nil {
		queue.Forget(name) // deleted
		return true
	}
	if err := s.handle(ctx, csr); err != nil {
		if ctx.Err() == nil {
			s.log.Warn("request not handled; retrying", "csr", name, "err", err)
			queue.AddRateLimited(name)
		}
		return true
	}
	queue.Forget(name)
	return true
}

// handle decides one request and writes the outcome. A request already
// decided (denied, failed, or holding a certificate) is left alone.
func (s *Signer) handle(ctx context.Context, csr *certv1.CertificateSigningRequest) error {
	if len(csr.Status.Certificate) > 0 || hasCondition(csr, certv1.CertificateDenied) || hasCondition(csr, certv1.CertificateFailed) {
		return nil
	}
	d := Decide(csr, s.policy)
	approved := hasCondition(csr, certv1.CertificateApproved)
	csrs := s.client.CertificatesV1().CertificateSigningRequests()
	if !d.Approve {
		csr = csr.DeepCopy()
		if approved {
			// Someone else approved it: this signer never signs what it
			// would have denied.
			addCondition(csr, certv1.CertificateFailed, d.Reason, "not signed although approved: "+d.Message)
			if _, err := csrs.UpdateStatus(ctx, csr, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("mark failed: %w", err)
			}
		} else {
			addCondition(csr, certv1.CertificateDenied, d.Reason, d.Message)
			if _, err := csrs.UpdateApproval(ctx, csr.Name, csr, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("deny: %w", err)
			}
		}
		if approved {
			s.decisions.WithLabelValues("failed", d.Reason).Inc()
		} else {
			s.decisions.WithLabelValues("denied", d.Reason).Inc()
		}
		s.log.Warn("denied", "csr", csr.Name, "requester", csr.Spec.Username, "reason", d.Reason, "why", d.Message)
		return nil
	}
	if !approved {
		csr = csr.DeepCopy()
		addCondition(csr, certv1.CertificateApproved, d.Reason, d.Message)
		var err error
		if csr, err = csrs.UpdateApproval(ctx, csr.Name, csr, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("approve: %w", err)
		}
	} else {
		csr = csr.DeepCopy()
	}
	cert, err := s.ca.SignNode(d.Node, d.PublicKey, d.Lifetime)
	if err != nil {
		// The CA itself is unfit (expired): no retry helps this request.
		addCondition(csr, certv1.CertificateFailed, "SigningFailed", err.Error())
		if _, uerr := csrs.UpdateStatus(ctx, csr, metav1.UpdateOptions{}); uerr != nil {
			return errors.Join(err, fmt.Errorf("mark failed: %w", uerr))
		}
		s.decisions.WithLabelValues("failed", "SigningFailed").Inc()
		s.log.Error("signing failed", "csr", csr.Name, "node", d.Node, "err", err)
		return nil
	}
	csr.Status.Certificate = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	if _, err := csrs.UpdateStatus(ctx, csr, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("write certificate: %w", err)
	}
	s.decisions.WithLabelValues("signed", d.Reason).Inc()
	s.log.Info("signed", "csr", csr.Name, "node", d.Node, "not_after", cert.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

func hasCondition(csr *certv1.CertificateSigningRequest, t certv1.RequestConditionType) bool {
	for _, c := range csr.Status.Conditions {
		if c.Type == t && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func addCondition(csr *certv1.CertificateSigningRequest, t certv1.RequestConditionType, reason, message string) {
	now := metav1.Now()
	csr.Status.Conditions = append(csr.Status.Conditions, certv1.CertificateSigningRequestCondition{
		Type: t, Status: corev1.ConditionTrue, Reason: reason, Message: message,
		LastUpdateTime: now, LastTransitionTime: now,
	})
}
