// Package agent keeps one node's datapath in step with the desired state a
// source delivers.
//
// A [desired.Source] (the file store today; API server informers, Docker
// events and federation bundles next) streams what the node should enforce:
// the workloads it protects, the compiled policy and the trusted CAs. The
// agent puts a new policy and trust bundle in force at once, and has the
// [Datapath] protect each new workload, give a changed identity to the
// enforcer and release a workload that left, retrying what failed and
// noticing a workload namespace that vanished or was replaced.
//
// Stopping fails closed: when Run returns (its context ended: SIGTERM, a
// rolling update; or its source failed), the rules stay in every workload
// namespace, so handshakes queue to a queue nobody reads and are dropped:
// new connections wait, and SYN retransmission carries them across a short
// restart, while connections already authorized keep flowing in the kernel.
// The next agent takes the rules over (see supervisor.Protect). Rules go
// only when a workload leaves the desired state, or on an explicit
// uninstall (`bireme uninstall`).
//
// The agent builds nothing itself: the source, the datapath (the real
// [NodeDatapath] or a fake in tests), the token engine and the metrics are
// passed in; cmd/bireme assembles them.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

// Config is one node agent's configuration.
type Config struct {
	// Source delivers the desired state (required).
	Source desired.Source
	// Datapath protects and releases workloads (required).
	Datapath Datapath
	// Policy is the policy in force, which the datapath decides with; the
	// agent swaps each new policy into it (required).
	Policy *policy.Live
	// Placement is where the source runs each pod, which the datapath
	// checks peer tokens against; the agent swaps each new placement into
	// it (required).
	Placement *LivePlacement
	// Tokens is the token engine the datapath signs and verifies with; the
	// agent gives it new trust bundles and rotated node keys (required).
	Tokens *tokens.Engine
	// NodeKeys, if set, are reloaded into Tokens when they change on disk.
	NodeKeys *NodeKeys
	// Trust, if set, is polled with the node keys: the local CAs and the
	// foreign trust bundles it watches go into Tokens when they change.
	Trust *TrustReloader
	// Poll is how often failed installs are retried, workload namespaces
	// checked and node keys reloaded (default 200ms).
	Poll time.Duration
	// Metrics receives the workload and reconcile metrics (nil: none).
	Metrics *Metrics
	// Health is set ready whenever the source's latest state is applied
	// (nil: no probes).
	Health *Health
	// Log receives the agent's own log (nil: discarded).
	Log *slog.Logger
}

// Agent runs one node; see the package documentation.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	rec    *reconciler
	keys   *keyReloader // nil: keys are not reloaded
	latest latestWorkloads
	// hintErrs are the reasons published node certificates were ignored,
	// as last logged (accept runs on the source's goroutine only).
	hintErrs  map[string]bool
	hintNodes int
}

// New checks cfg and returns an Agent ready to Run.
func New(cfg Config) (*Agent, error) {
	if cfg.Source == nil || cfg.Datapath == nil || cfg.Policy == nil || cfg.Placement == nil || cfg.Tokens == nil {
		return nil, errors.New("agent: Source, Datapath, Policy, Placement and Tokens are required")
	}
	if cfg.Poll < 0 {
		return nil, fmt.Errorf("agent: poll %v must not be negative", cfg.Poll)
	}
	if cfg.Poll == 0 {
		cfg.Poll = 200 * time.Millisecond
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{cfg: cfg, log: log, rec: newReconciler(cfg.Datapath, log, cfg.Metrics)}
	a.latest.ch = make(chan []desired.Workload, 1)
	if cfg.NodeKeys != nil {
		a.keys = newKeyReloader(*cfg.NodeKeys, cfg.Tokens, log)
	}
	return a, nil
}

// Run protects the workloads the source asks for until ctx ends, and then
// leaves their rules in place (see the package documentation): it stops
// following the source and returns; closing the datapath's queues is the
// caller's. It returns an error when the source fails (at start: an
// invalid store, for example); a workload that cannot be protected is
// logged and retried, and does not stop the others. Run may be called once.
func (a *Agent) Run(ctx context.Context) error {
	sourceCtx, stopSource := context.WithCancel(ctx)
	sourceDone := make(chan error, 1)
	go func() { sourceDone <- a.cfg.Source.Run(sourceCtx, a.accept) }()

	err := a.follow(ctx, sourceDone)
	stopSource()
	if err == nil {
		err = <-sourceDone // nil: it stopped because ctx ended
	}
	a.log.Info("stopped; rules left in place: new connections of the protected workloads wait until an enforcer runs again",
		"workloads", len(a.rec.installed))
	return err
}

// accept takes a desired state from the source's goroutine: policy and
// trust go in force at once, the workloads to the agent's loop.
func (a *Agent) accept(s desired.State) {
	if s.Trust != nil {
		if err := a.cfg.Tokens.SetTrust(s.Trust); err != nil {
			a.log.Error("trust bundle refused; keeping the current one", "err", err)
		}
	}
	if s.Policy != nil {
		a.cfg.Policy.Swap(s.Policy)
	}
	if s.Placement != nil {
		a.cfg.Placement.Swap(s.Placement)
	}
	if s.Services != nil {
		a.cfg.Placement.SwapServices(s.Services)
	}
	if s.Addresses != nil {
		a.cfg.Placement.SwapAddresses(s.Addresses)
	}
	if s.NodeCerts != nil {
		a.setNodeCerts(s.NodeCerts)
	}
	a.latest.put(s.Workloads)
}

// setNodeCerts hands published node certificates to the tokens engine and
// logs what it made of them; a certificate it ignored is logged once per
// distinct reason, not at every state.
func (a *Agent) setNodeCerts(nc *desired.NodeCerts) {
	rep := a.cfg.Tokens.SetNodeHints(nc.Nodes)
	level := slog.LevelDebug // a pod added or gone somewhere
	if rep.Nodes != a.hintNodes {
		level = slog.LevelInfo
	}
	a.hintNodes = rep.Nodes
	a.log.Log(context.Background(), level, "node certificates published ahead of time", "nodes", rep.Nodes,
		"addresses", rep.Addresses, "behind_nat", rep.NAT, "ignored", len(rep.Ignored))
	errs := make(map[string]bool, len(rep.Ignored))
	for _, err := range rep.Ignored {
		msg := err.Error()
		errs[msg] = true
		if !a.hintErrs[msg] {
			a.log.Warn("published node certificate ignored (its pods use three messages at first contact)", "err", msg)
		}
	}
	a.hintErrs = errs
}

// follow reconciles each new workload set and, every Poll, retries what
// failed, notices vanished namespaces and reloads the node keys, until ctx
// ends (nil) or the source stops (its error).
func (a *Agent) follow(ctx context.Context, sourceDone chan error) error {
	tick := time.NewTicker(a.cfg.Poll)
	defer tick.Stop()
	started, converged := false, true
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-sourceDone:
			if err == nil && ctx.Err() != nil {
				// The source saw ctx end before this loop did: a stop, not
				// a failure. Run collects the source's result once more.
				sourceDone <- nil
				return nil
			}
			// A set the source handed over before it stopped is still its
			// word: put it in force, so what Run leaves behind does not
			// depend on which of the two channels select read first.
			select {
			case ws := <-a.latest.ch:
				a.rec.setDesired(ws)
				a.rec.reconcile(ctx)
			default:
			}
			if err == nil {
				err = errors.New("stopped before its context ended")
			}
			return fmt.Errorf("source: %w", err)
		case ws := <-a.latest.ch:
			a.cfg.Health.setReady(false)
			a.rec.setDesired(ws)
			converged = a.rec.reconcile(ctx)
			a.cfg.Health.setReady(converged)
			if !started {
				started = true
				a.log.Info("started", "workloads", len(a.rec.installed))
			}
		case <-tick.C:
			if a.rec.dropVanished(ctx) {
				converged = false
			}
			if !converged {
				converged = a.rec.reconcile(ctx)
			}
			// Before the first state, "converged" means nothing to do yet.
			a.cfg.Health.setReady(started && converged)
			if a.keys != nil {
				a.keys.reload()
			}
			if a.cfg.Trust != nil {
				a.cfg.Trust.Reload()
			}
		}
	}
}

// latestWorkloads hands the newest workload set from the source's
// goroutine to the agent's: a set superseded before the agent read it is
// dropped, since each set is complete.
type latestWorkloads struct {
	mu sync.Mutex
	ch chan []desired.Workload // capacity 1
}

func (l *latestWorkloads) put(ws []desired.Workload) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.ch:
	default:
	}
	l.ch <- ws
}
