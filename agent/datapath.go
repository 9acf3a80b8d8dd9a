package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/enforcer"
	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/supervisor"
	"github.com/bireme/bireme/tokens"
)

// NodeDatapath is the real [Datapath]: the supervisor's iptables rules in
// each workload's namespace and the enforcer's queues reading them.
type NodeDatapath struct {
	sup *supervisor.Supervisor
	enf *enforcer.Enforcer
}

// NodeDatapathConfig configures a [NodeDatapath].
type NodeDatapathConfig struct {
	// Node names this node in flow records.
	Node string
	// Queues is the number of NFQUEUE queues per workload (default 1).
	Queues int
	// Tokens signs the workloads' identities and verifies peers'.
	Tokens *tokens.Engine
	// Policy decides each connection (the agent swaps the policy in it).
	Policy policy.Decider
	// Placement says which node runs each peer's pod (the agent swaps the
	// placement in it); see enforcer.Config.Placement.
	Placement enforcer.Placement
	// Services and Addresses are the cluster's Service addresses and
	// which pod holds each address (nil: none); see enforcer.Config.
	Services  enforcer.Services
	Addresses enforcer.Addresses
	// Flows receives one record per decision (nil: discarded).
	Flows *flowlog.Writer
	// OnDecision is called with every decision, on the packet path (see
	// enforcer.Config.OnDecision); [Metrics.Observe] fits.
	OnDecision func(*flowlog.Record)
	// OnStage is called with the time each queued packet took to decide
	// (see enforcer.Config.OnStage); [Metrics.ObserveStage] fits.
	OnStage func(stage string, outgoing bool, took time.Duration)
	// Log receives the enforcer's messages (nil: discarded).
	Log *slog.Logger
	// IdentityNetworks are where peers run an enforcer: only SYNs to them
	// carry tokens (enforcer.Config.IdentityNetworks; nil: everywhere).
	IdentityNetworks []netip.Prefix
}

// handshakeTimeout bounds how long a half-open handshake is remembered.
const handshakeTimeout = 10 * time.Second

// NewNodeDatapath builds the enforcer; nothing is attached or installed
// until the agent asks.
func NewNodeDatapath(cfg NodeDatapathConfig) (*NodeDatapath, error) {
	if cfg.Queues == 0 {
		cfg.Queues = 1
	}
	if cfg.Queues < 1 || cfg.Queues > 1024 {
		return nil, fmt.Errorf("datapath: queues %d: want 1 to 1024", cfg.Queues)
	}
	// The enforcer must read the queues and set the marks the supervisor's
	// rules use: both get the same layout.
	layout := marks.Layout{Queues: uint16(cfg.Queues)}
	enf, err := enforcer.New(enforcer.Config{
		Layout:           layout,
		Node:             cfg.Node,
		Tokens:           cfg.Tokens,
		Policy:           cfg.Policy,
		Placement:        cfg.Placement,
		Services:         cfg.Services,
		Addresses:        cfg.Addresses,
		Flows:            cfg.Flows,
		OnDecision:       cfg.OnDecision,
		OnStage:          cfg.OnStage,
		Log:              cfg.Log,
		IdentityNetworks: cfg.IdentityNetworks,
		HandshakeTimeout: handshakeTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("enforcer: %w", err)
	}
	return &NodeDatapath{sup: supervisor.New(layout), enf: enf}, nil
}

// Install opens the enforcer's queue first and then installs the rules that
// feed it, so that no handshake is queued to a queue nobody reads yet.
func (d *NodeDatapath) Install(ctx context.Context, w desired.Workload) error {
	if _, err := os.Stat(w.NetNS); err != nil {
		return fmt.Errorf("network namespace: %w", err)
	}
	if err := d.enf.Attach(ctx, enforcer.Workload{Identity: w.Identity, NetNS: w.NetNS}); err != nil {
		return fmt.Errorf("attach enforcer: %w", err)
	}
	if err := d.sup.Protect(ctx, w.NetNS); err != nil {
		return errors.Join(fmt.Errorf("protect: %w", err), d.enf.Detach(w.NetNS))
	}
	return nil
}

// Update gives the enforcer the workload's new identity.
func (d *NodeDatapath) Update(w desired.Workload) error {
	d.enf.Update(enforcer.Workload{Identity: w.Identity, NetNS: w.NetNS})
	return nil
}

// Remove closes the queue before removing the rules: in between, handshakes
// are dropped (fail closed) rather than let through unchecked. A namespace
// that no longer exists took its rules with it.
func (d *NodeDatapath) Remove(ctx context.Context, w desired.Workload) error {
	err := d.enf.Detach(w.NetNS)
	if _, statErr := os.Stat(w.NetNS); errors.Is(statErr, os.ErrNotExist) {
		return nil
	}
	if uerr := d.sup.Unprotect(ctx, w.NetNS); uerr != nil {
		err = errors.Join(err, fmt.Errorf("unprotect: %w", uerr))
	}
	return err
}

// Stats are the enforcer's gauges, for [Metrics.RegisterEnforcer].
func (d *NodeDatapath) Stats() EnforcerStats {
	return EnforcerStats{
		HandshakesInFlight: func() float64 { return float64(d.enf.HandshakesInFlight()) },
		FlowRecordsDropped: func() float64 { return float64(d.enf.FlowRecordsDropped()) },
		BulkDrops: map[string]func() float64{
			"bad-checksum":       func() float64 { return float64(d.enf.BulkDrops().BadChecksum) },
			"over-source-budget": func() float64 { return float64(d.enf.BulkDrops().OverSourceBudget) },
			"over-node-budget":   func() float64 { return float64(d.enf.BulkDrops().OverNodeBudget) },
			"known-bad-token":    func() float64 { return float64(d.enf.BulkDrops().KnownBadToken) },
		},
		QueueDrops: map[string]func() float64{
			"queue-full":  func() float64 { return float64(d.enf.QueueDrops().QueueFull) },
			"socket-full": func() float64 { return float64(d.enf.QueueDrops().SocketFull) },
		},
	}
}

// Close stops the enforcer (its queues close) and writes the flow records
// still queued. Call it after the agent's Run returned. The rules stay:
// until an enforcer reads the queues again, handshakes are dropped.
func (d *NodeDatapath) Close() error { return d.enf.Close() }

// EndConnections ends this node's established connections with workloads
// of trustDomain, one flow record each (enforcer.Enforcer.EndConnections),
// and returns their number.
func (d *NodeDatapath) EndConnections(trustDomain string) int {
	return d.enf.EndConnections(trustDomain)
}
