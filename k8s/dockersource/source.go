package dockersource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"strings"
	"time"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/k8s/filestore"
	"github.com/bireme/bireme/policy"
)

// Config configures a Source.
type Config struct {
	// Engine is the Docker engine (required).
	Engine Engine
	// Rules pick the protected containers (Rules.Host required).
	Rules Rules
	// Cluster is the trust domain of the identities (required).
	Cluster string
	// PolicyDir holds the Namespaces, NetworkPolicies and the Pods of
	// other nodes (their placement) as YAML or JSON (required).
	PolicyDir string
	// Poll is how often PolicyDir is checked for changes (default 200ms).
	Poll time.Duration
	// Resync is how often the containers are listed again even without
	// an event (default 30s): a safety net, events do the work.
	Resync time.Duration
	// Log receives containers' status changes, refusals and rejected
	// policy sets (nil: discarded).
	Log *slog.Logger
}

// Source delivers a Docker host's desired state: its protected running
// containers, the policy of PolicyDir and the placement of every pod and
// container it knows.
type Source struct {
	cfg Config
	log *slog.Logger
}

var _ desired.Source = (*Source)(nil)

// New checks cfg and returns the Source.
func New(cfg Config) (*Source, error) {
	if cfg.Engine == nil || cfg.Rules.Host == "" || cfg.Cluster == "" || cfg.PolicyDir == "" {
		return nil, errors.New("docker source: Engine, Rules.Host, Cluster and PolicyDir are required")
	}
	if cfg.Poll < 0 || cfg.Resync < 0 {
		return nil, fmt.Errorf("docker source: intervals must not be negative (poll %v, resync %v)", cfg.Poll, cfg.Resync)
	}
	if cfg.Poll == 0 {
		cfg.Poll = 200 * time.Millisecond
	}
	if cfg.Resync == 0 {
		cfg.Resync = 30 * time.Second
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{cfg: cfg, log: log}, nil
}

// store is one valid load of PolicyDir.
type store struct {
	objs policy.Objects
	eng  *policy.Engine
}

// Run implements [desired.Source]. It subscribes to the engine's events
// before it lists the containers, so nothing that happens in between is
// missed; a broken event stream is opened again (and everything listed
// again) after a second. The first state waits for the first valid load
// of PolicyDir; a PolicyDir that does not load at start is an error.
func (s *Source) Run(ctx context.Context, update func(desired.State)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	stores := make(chan store, 1)
	storeErr := make(chan error, 1)
	go func() {
		storeErr <- filestore.Follow(ctx, s.cfg.PolicyDir, s.cfg.Poll, s.log, func(objs policy.Objects, eng *policy.Engine) {
			// Only the latest valid set matters: replace one not yet taken.
			select {
			case <-stores:
			default:
			}
			stores <- store{objs, eng}
		})
	}()

	dirty := make(chan string, 64) // container IDs events named; "" = everything
	go s.followEvents(ctx, dirty)

	st := &state{src: s, pids: map[string]Container{}, status: map[string]string{}}
	var cur *store
	select {
	case c := <-stores:
		cur = &c
	case err := <-storeErr:
		if err == nil {
			return nil
		}
		return fmt.Errorf("docker source: policy directory: %w", err)
	case <-ctx.Done():
		return nil
	}
	first, _, err := st.compute(ctx, cur, true)
	if err != nil {
		return fmt.Errorf("docker source: %w", err)
	}
	update(first)

	resync := time.NewTicker(s.cfg.Resync)
	defer resync.Stop()
	for {
		newPolicy := false
		select {
		case <-ctx.Done():
			return nil
		case err := <-storeErr:
			if err != nil {
				return fmt.Errorf("docker source: policy directory: %w", err)
			}
			return nil
		case c := <-stores:
			cur, newPolicy = &c, true
		case id := <-dirty:
			st.forget(id)
		case <-resync.C:
			st.forget("")
		}
		// Take every event already queued: a burst is computed once.
	drain:
		for {
			select {
			case id := <-dirty:
				st.forget(id)
			default:
				break drain
			}
		}
		next, differs, err := st.compute(ctx, cur, newPolicy)
		if err != nil {
			// The engine did not answer: keep what is in force (a
			// container that stopped took its namespace with it).
			s.log.Error("list containers; keeping the containers protected", "err", err)
			continue
		}
		if differs {
			update(next)
		}
	}
}

// followEvents sends the ID of every container an event names to dirty,
// and "" (list everything again) whenever the stream had to be opened
// again, until ctx ends.
func (s *Source) followEvents(ctx context.Context, dirty chan<- string) {
	for {
		ids, errs := s.cfg.Engine.Events(ctx)
		send := func(id string) bool {
			select {
			case dirty <- id:
				return true
			case <-ctx.Done():
				return false
			}
		}
		// What happened before the stream was open is found by listing.
		if !send("") {
			return
		}
	stream:
		for {
			select {
			case id, ok := <-ids:
				if !ok {
					break stream
				}
				if !send(id) {
					return
				}
			case err := <-errs:
				if ctx.Err() == nil {
					s.log.Warn("docker event stream broke; opening it again", "err", err)
				}
				break stream
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// state remembers what the source delivered and the inspected containers.
type state struct {
	src *Source

	pids      map[string]Container // container ID -> inspected (Pid, addresses); forgotten on its events
	workloads []desired.Workload   // last delivered
	placement desired.Placement    // last delivered
	status    map[string]string    // container name -> status, as last logged
}

// forget drops an inspected container ("" drops all), so the next compute
// inspects it again.
func (st *state) forget(id string) {
	if id == "" {
		clear(st.pids)
		return
	}
	delete(st.pids, id)
}

// compute lists the running containers and builds the state; differs
// reports whether it differs from the last one delivered.
func (st *state) compute(ctx context.Context, cur *store, newPolicy bool) (next desired.State, differs bool, err error) {
	s := st.src
	running, err := s.cfg.Engine.Running(ctx)
	if err != nil {
		return desired.State{}, false, err
	}
	seen := make(map[string]bool, len(running))
	var containers []Container
	for _, c := range running {
		seen[c.ID] = true
		// Only containers that opted in are inspected: their Pid is needed.
		if d := s.cfg.Rules.Pod(c); d.Pod == nil {
			st.report(c.Name, d.Status)
			continue
		}
		got, ok := st.pids[c.ID]
		if !ok {
			got, err = s.cfg.Engine.Inspect(ctx, c.ID)
			if err != nil {
				// Gone between the list and the inspect: its events follow.
				s.log.Debug("inspect container", "container", c.Name, "err", err)
				continue
			}
			st.pids[c.ID] = got
		}
		containers = append(containers, got)
	}
	for id := range st.pids {
		if !seen[id] {
			delete(st.pids, id)
		}
	}
	workloads, placement := st.selectWorkloads(cur, containers)
	// Workloads is always the complete set; Policy and Placement only when
	// new (nil keeps the ones in force).
	next = desired.State{Workloads: workloads}
	if newPolicy {
		next.Policy, differs = cur.eng, true
		s.log.Info("network policies in force", "dir", s.cfg.PolicyDir, "policies", len(cur.objs.Policies),
			"clusterPolicies", len(cur.objs.ClusterPolicies))
	}
	if st.placement == nil || !maps.Equal(placement, st.placement) {
		next.Placement, st.placement, differs = placement, placement, true
	}
	if !desired.SameWorkloads(workloads, st.workloads) {
		st.workloads, differs = workloads, true
	}
	return next, differs, nil
}

// selectWorkloads turns the opted-in containers into workloads and builds
// the placement: the pods of PolicyDir on their nodes, and this host's
// protected containers here.
func (st *state) selectWorkloads(cur *store, containers []Container) ([]desired.Workload, desired.Placement) {
	s := st.src
	placement := filestore.PlacementOf(cur.objs)
	sort.Slice(containers, func(i, j int) bool { return containers[i].Name < containers[j].Name })
	names := map[string]bool{}
	claimed := map[string]string{} // pod ref -> container name
	var out []desired.Workload
	for _, c := range containers {
		names[c.Name] = true
		d := s.cfg.Rules.Pod(c)
		if !d.Protect {
			st.report(c.Name, d.Status)
			continue
		}
		ref := d.Pod.Namespace + "/" + d.Pod.Name
		if other, dup := claimed[ref]; dup {
			st.report(c.Name, fmt.Sprintf("refused: identity %s already belongs to container %s", ref, other))
			continue
		}
		claimed[ref] = c.Name
		status := "protected as " + ref + " in " + c.NetNS()
		if node, ok := placement[ref]; ok && node != s.cfg.Rules.Host {
			// Logged with the status, so once per change, not per event.
			status += " (the policy directory places a pod " + ref + " on node " + node + "; this host speaks for it)"
		}
		placement[ref] = s.cfg.Rules.Host
		id := k8s.IdentityOf(s.cfg.Cluster, cur.objs.Namespace(d.Pod.Namespace), d.Pod)
		out = append(out, desired.Workload{Ref: ref, NetNS: c.NetNS(), Identity: id})
		if len(d.Ignored) > 0 {
			status += " (labels not valid in Kubernetes, left out of the identity: " + strings.Join(d.Ignored, ", ") + ")"
		}
		st.report(c.Name, status)
	}
	for name := range st.status {
		if !names[name] && strings.HasPrefix(st.status[name], "protected") {
			st.report(name, "")
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NetNS < out[j].NetNS })
	return out, placement
}

// report logs a container's status when it changed; "" means it stopped
// or went.
func (st *state) report(name, status string) {
	if st.status[name] == status {
		return
	}
	log := st.src.log
	switch {
	case status == "":
		delete(st.status, name)
		log.Info("container released (stopped or removed)", "container", name)
		return
	case strings.HasPrefix(status, "protected"):
		log.Info("container status", "container", name, "status", status)
	case strings.HasPrefix(status, "refused"):
		log.Warn("container status", "container", name, "status", status)
	default:
		log.Debug("container status", "container", name, "status", status)
	}
	st.status[name] = status
}
