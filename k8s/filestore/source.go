// Package filestore is Bireme's first source of desired state: a directory
// of Kubernetes YAML or JSON (Namespaces, Pods, NetworkPolicies) that is
// loaded ([LoadDir], [LoadFiles], [LoadPaths]), polled for changes and
// turned into what one node enforces ([Source]): the pods of
// the node that carry the bireme.io/netns annotation ([SelectWorkloads])
// and the compiled policy.
//
// Decoding, validation and the Pod -> identity mapping are package k8s's;
// this package adds the files. It implements [desired.Source], the
// contract the agent consumes, without importing the agent.
package filestore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/policy"
)

// Config configures a file store Source.
type Config struct {
	// Dir is the store directory.
	Dir string
	// Node is this node's name, matched against pods' spec.nodeName.
	Node string
	// Cluster is the trust domain the workloads' identities belong to.
	Cluster string
	// Poll is how often the store is checked for changes (default 200ms).
	Poll time.Duration
	// Log receives rejected stores and skipped pods (nil: discarded).
	Log *slog.Logger
	// Policy are the policy compile options (the ipBlock mode).
	Policy policy.Options
}

// Source delivers the file store's desired state for one node: the
// workloads [SelectWorkloads] picks and the compiled policy, at start and
// after every valid change. An invalid change is logged and the last good
// set stays in force (no update). It delivers no trust bundle: the CAs come
// from the node's configuration.
type Source struct {
	cfg Config
	log *slog.Logger
}

var _ desired.Source = (*Source)(nil)

// NewSource checks cfg and returns the Source.
func NewSource(cfg Config) (*Source, error) {
	if cfg.Dir == "" || cfg.Node == "" || cfg.Cluster == "" {
		return nil, errors.New("file store: Dir, Node and Cluster are required")
	}
	if cfg.Poll < 0 {
		return nil, fmt.Errorf("file store: poll %v must not be negative", cfg.Poll)
	}
	if cfg.Poll == 0 {
		cfg.Poll = 200 * time.Millisecond
	}
	if st, err := os.Stat(cfg.Dir); err != nil {
		return nil, fmt.Errorf("file store: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("file store: %s is not a directory", cfg.Dir)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{cfg: cfg, log: log.With("store", cfg.Dir)}, nil
}

// Run implements [desired.Source]. A store that does not load or validate
// at start is an error: there is no last good set to keep.
func (s *Source) Run(ctx context.Context, update func(desired.State)) error {
	return FollowWith(ctx, s.cfg.Dir, s.cfg.Poll, s.cfg.Policy, s.log, func(objs policy.Objects, eng *policy.Engine) {
		update(s.state(objs, eng))
	})
}

// Follow loads the store in dir and calls onChange with its objects and
// compiled policy, then again after every valid change, polling every
// interval until ctx ends (then it returns nil). A store that does not
// load or validate at start is an error, since there is no last good set
// to keep; an invalid change later is logged and the last good set stays
// (onChange is not called). Every source that reads policy files (the
// file store, the Docker host) loads them through it, so they validate
// and keep the last good set alike.
func Follow(ctx context.Context, dir string, interval time.Duration, log *slog.Logger, onChange func(policy.Objects, *policy.Engine)) error {
	return FollowWith(ctx, dir, interval, policy.Options{}, log, onChange)
}

// FollowWith is [Follow] compiling with opts (the ipBlock mode).
func FollowWith(ctx context.Context, dir string, interval time.Duration, opts policy.Options, log *slog.Logger, onChange func(policy.Objects, *policy.Engine)) error {
	if interval <= 0 {
		return fmt.Errorf("follow %s: interval must be > 0, got %v", dir, interval)
	}
	w := &dirWatcher{dir: dir, opts: opts}
	objs, eng, changed, err := w.check()
	if err != nil {
		return fmt.Errorf("load store: %w", err)
	}
	if changed {
		onChange(objs, eng)
	}
	// Without a first set (a file vanished while it was read), the first
	// poll of the watch loads it.
	return w.watch(ctx, interval, log, onChange)
}

// state selects this node's workloads from a valid store.
func (s *Source) state(objs policy.Objects, eng *policy.Engine) desired.State {
	sel := SelectWorkloads(objs, s.cfg.Cluster, s.cfg.Node)
	for _, p := range sel.Problems {
		s.log.Warn("workload skipped", "problem", p)
	}
	return desired.State{Workloads: sel.Workloads, Policy: eng, Placement: PlacementOf(objs)}
}
