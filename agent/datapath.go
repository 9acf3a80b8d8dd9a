package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/bireme/bireme/enforcer"
	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/supervisor"
	"github.com/bireme/bireme/tokens"
)

// nodeDatapath is the real Datapath: the supervisor's iptables rules and
// the enforcer's queues.
type nodeDatapath struct {
	sup *supervisor.Supervisor
	enf *enforcer.Enforcer
}

type nodeDatapathConfig struct {
	Node   string
	Queues uint16
	Tokens *tokens.Engine
	Policy policy.Decider
	Flows  *flowlog.Writer
	Log    *slog.Logger
}

// handshakeTimeout bounds how long a half-open handshake is remembered.
const handshakeTimeout = 10 * time.Second

func newNodeDatapath(cfg nodeDatapathConfig) (*nodeDatapath, error) {
	// The enforcer must read the queues and set the marks the supervisor's
	// rules use: both get the same layout.
	layout := marks.Layout{Queues: cfg.Queues}
	enf, err := enforcer.New(enforcer.Config{
		Layout:           layout,
		Node:             cfg.Node,
		Tokens:           cfg.Tokens,
		Policy:           cfg.Policy,
		Flows:            cfg.Flows,
		Log:              cfg.Log,
		HandshakeTimeout: handshakeTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("enforcer: %w", err)
	}
	return &nodeDatapath{sup: supervisor.New(layout), enf: enf}, nil
}

// Install opens the enforcer's queue first and then installs the rules that
// feed it, so that no handshake is queued to a queue nobody reads yet.
func (d *nodeDatapath) Install(ctx context.Context, w Workload) error {
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

func (d *nodeDatapath) Update(w Workload) error {
	d.enf.Update(enforcer.Workload{Identity: w.Identity, NetNS: w.NetNS})
	return nil
}

// Remove closes the queue before removing the rules: in between, handshakes
// are dropped (fail closed) rather than let through unchecked. A namespace
// that no longer exists took its rules with it.
func (d *nodeDatapath) Remove(ctx context.Context, w Workload) error {
	err := d.enf.Detach(w.NetNS)
	if _, statErr := os.Stat(w.NetNS); errors.Is(statErr, os.ErrNotExist) {
		return nil
	}
	if uerr := d.sup.Unprotect(ctx, w.NetNS); uerr != nil {
		err = errors.Join(err, fmt.Errorf("unprotect: %w", uerr))
	}
	return err
}

func (d *nodeDatapath) Close() error { return d.enf.Close() }
