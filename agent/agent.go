// Package agent keeps a node's supervisor and enforcer in step with the
// workloads and policies in a store.
//
// The store is a directory of Kubernetes YAML/JSON (Namespaces, Pods,
// NetworkPolicies). The pods this node protects are those whose
// spec.nodeName is the node and which carry the bireme.io/netns annotation
// (a name under /run/netns or an absolute path). For each, the agent has
// the supervisor install the BIREME-* rules in that namespace and the
// enforcer open its queue there; when a pod's identity changes (labels,
// namespace labels, ports) the enforcer gets the new one; when a pod leaves
// the store its queue and rules go. Policies are recompiled on every valid
// change of the store; an invalid change is logged and the last good set is
// kept. When Run's context ends, everything the agent installed is removed.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

// Config is one node agent's configuration.
type Config struct {
	// Node is this node's name, matched against pods' spec.nodeName.
	Node string
	// Cluster is the trust domain the workloads' identities belong to.
	Cluster string
	// StoreDir is the file store of Namespaces, Pods and NetworkPolicies.
	StoreDir string
	// Poll is how often the store and the key files are checked for
	// changes, and how often failed installs are retried (default 200ms).
	Poll time.Duration
	// TokenLifetime bounds how long a signed identity token is valid
	// (0: the tokens package default).
	TokenLifetime time.Duration
	// NATGateways declares the trust domains whose nodes reach this one
	// through source NAT, and their gateways (tokens.Config.NATGateways).
	NATGateways tokens.NATGateways
	// CertFile and KeyFile are this node's credentials, issued by the
	// cluster CA; they are reloaded when they change on disk.
	CertFile, KeyFile string
	// CABundle lists PEM files of the CAs whose nodes this node trusts.
	CABundle []string
	// Queues is the number of NFQUEUE queues per workload (default 1).
	Queues int
	// Flows receives one JSON line per decision (nil: discarded).
	Flows io.Writer
	// Metrics is the registry the agent's metrics go in (nil: none).
	Metrics prometheus.Registerer
	// Log receives the agent's own log (nil: discarded).
	Log *slog.Logger

	// testDatapath replaces the supervisor and enforcer in unit tests.
	testDatapath datapathCloser
}

// datapathCloser is a Datapath that is shut down when the agent stops.
type datapathCloser interface {
	Datapath
	Close() error
}

func (c *Config) validate() error {
	var missing []string
	for _, f := range []struct{ name, v string }{
		{"node", c.Node}, {"cluster", c.Cluster}, {"store", c.StoreDir},
		{"cert", c.CertFile}, {"key", c.KeyFile},
	} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if len(c.CABundle) == 0 {
		missing = append(missing, "ca-bundle")
	}
	if len(missing) > 0 {
		return fmt.Errorf("agent config: missing %v", missing)
	}
	if c.Poll < 0 || c.TokenLifetime < 0 {
		return errors.New("agent config: poll and token lifetime must not be negative")
	}
	if c.Queues < 0 || c.Queues > 1024 {
		return fmt.Errorf("agent config: queues %d: want 1 to 1024", c.Queues)
	}
	if st, err := os.Stat(c.StoreDir); err != nil {
		return fmt.Errorf("agent config: store: %w", err)
	} else if !st.IsDir() {
		return fmt.Errorf("agent config: store %s is not a directory", c.StoreDir)
	}
	return nil
}

func (c *Config) withDefaults() {
	if c.Poll == 0 {
		c.Poll = 200 * time.Millisecond
	}
	if c.Queues == 0 {
		c.Queues = 1
	}
	if c.Flows == nil {
		c.Flows = io.Discard
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// cleanupTimeout bounds how long shutdown may spend removing rules and
// closing queues once Run's context has ended.
const cleanupTimeout = 10 * time.Second

// Run protects this node's workloads until ctx ends, then removes every
// rule and queue it installed. It returns an error when it cannot start
// (bad config, unreadable keys, an invalid store at start) or when cleanup
// failed; a workload that cannot be protected is logged and retried, and
// does not stop the others.
func Run(ctx context.Context, cfg Config) (err error) {
	if err := cfg.validate(); err != nil {
		return err
	}
	cfg.withDefaults()
	log := cfg.Log.With("node", cfg.Node)

	creds, err := tokens.LoadNodeCredentials(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return fmt.Errorf("load node credentials: %w", err)
	}
	trust, err := tokens.LoadTrustBundle(cfg.CABundle...)
	if err != nil {
		return fmt.Errorf("load CA bundle: %w", err)
	}
	if creds.TrustDomain != cfg.Cluster {
		return fmt.Errorf("node certificate is for trust domain %q, not cluster %q", creds.TrustDomain, cfg.Cluster)
	}
	engine, err := tokens.NewEngine(tokens.Config{Credentials: creds, Trust: trust, TokenLifetime: cfg.TokenLifetime, NATGateways: cfg.NATGateways})
	if err != nil {
		return fmt.Errorf("token engine: %w", err)
	}

	objs, err := policy.LoadDir(cfg.StoreDir)
	if err != nil {
		return fmt.Errorf("load store: %w", err)
	}
	compiled, err := policy.Compile(objs)
	if err != nil {
		return fmt.Errorf("compile store: %w", err)
	}
	live := policy.NewLive(compiled)

	var metrics *Metrics
	flowsOut := cfg.Flows
	var dpRef atomic.Pointer[nodeDatapath] // read by the enforcer metrics
	if cfg.Metrics != nil {
		// The enforcer does not exist yet: read it through dpRef.
		fromEnforcer := func(read func(*nodeDatapath) float64) func() float64 {
			return func() float64 {
				if d := dpRef.Load(); d != nil {
					return read(d)
				}
				return 0
			}
		}
		metrics, err = NewMetrics(cfg.Metrics, EnforcerStats{
			HandshakesInFlight: fromEnforcer(func(d *nodeDatapath) float64 { return float64(d.enf.HandshakesInFlight()) }),
			FlowRecordsDropped: fromEnforcer(func(d *nodeDatapath) float64 { return float64(d.enf.FlowRecordsDropped()) }),
		})
		if err != nil {
			return err
		}
		flowsOut = &countingWriter{out: cfg.Flows, metrics: metrics}
	}

	dpCfg := nodeDatapathConfig{
		Node:   cfg.Node,
		Queues: uint16(cfg.Queues),
		Tokens: engine,
		Policy: live,
		Flows:  flowlog.NewWriter(flowsOut),
		Log:    log,
	}
	var dp datapathCloser
	if cfg.testDatapath != nil {
		dp = cfg.testDatapath
	} else {
		real, err := newNodeDatapath(dpCfg)
		if err != nil {
			return err
		}
		dpRef.Store(real)
		dp = real
	}
	rec := newReconciler(dp, log, metrics)
	defer func() {
		cleanupCtx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if cerr := rec.removeAll(cleanupCtx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
		if cerr := dp.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close enforcer: %w", cerr))
		}
		if err != nil {
			log.Error("stopped; cleanup incomplete", "err", err)
		} else {
			log.Info("stopped; every rule and queue removed")
		}
	}()

	// The watcher runs in its own goroutine; the reconciler only ever runs
	// in this one. The channel holds the latest store, older ones are
	// dropped unread.
	changes := make(chan policy.Objects, 1)
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- policy.WatchDirLog(ctx, cfg.StoreDir, cfg.Poll, log, func(o policy.Objects, e *policy.Engine) {
			live.Swap(e)
			select {
			case <-changes:
			default:
			}
			changes <- o
		})
	}()
	defer func() { <-watchDone }()

	keys := newKeyWatcher(cfg.CertFile, cfg.KeyFile)
	lastKeyErr := ""
	rec.setDesired(SelectWorkloads(objs, cfg.Cluster, cfg.Node))
	converged := rec.reconcile(ctx)
	log.Info("started", "workloads", len(rec.installed), "store", cfg.StoreDir)

	tick := time.NewTicker(cfg.Poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case o := <-changes:
			rec.setDesired(SelectWorkloads(o, cfg.Cluster, cfg.Node))
			converged = rec.reconcile(ctx)
		case <-tick.C:
			if rec.dropVanished(ctx) {
				converged = false
			}
			if !converged {
				converged = rec.reconcile(ctx)
			}
			if newCreds, changed, err := keys.check(); err != nil {
				// Logged once per distinct error, not at every poll.
				if msg := err.Error(); msg != lastKeyErr {
					lastKeyErr = msg
					log.Error("reload node credentials; keeping the current ones", "err", err)
				}
			} else if changed {
				lastKeyErr = ""
				if err := engine.Rotate(newCreds); err != nil {
					log.Error("rotate node credentials; keeping the current ones", "err", err)
				} else {
					log.Info("node credentials rotated", "cert", cfg.CertFile)
				}
			}
		}
	}
}
