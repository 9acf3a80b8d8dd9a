package agent

import (
	"context"
	"log/slog"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/bireme/bireme/agent/desired"
)

// Datapath is what the agent drives for each workload: the supervisor's
// rules in the workload's namespace and the enforcer's queue reading them.
type Datapath interface {
	// Install makes the workload protected. Install and Remove are called
	// concurrently for different workloads. Install may be called again for a
	// workload whose earlier Install failed, and after a restart on a
	// namespace that still holds rules from the previous run.
	Install(ctx context.Context, w desired.Workload) error
	// Update gives the enforcer the workload's new identity.
	Update(w desired.Workload) error
	// Remove undoes Install.
	Remove(ctx context.Context, w desired.Workload) error
}

// reconciler keeps the set of installed workloads equal to the desired set,
// retrying what failed. It is used from one goroutine; it calls the
// Datapath's Install and Remove for different workloads concurrently.
type reconciler struct {
	dp        Datapath
	log       *slog.Logger
	metrics   *Metrics // may be nil
	installed map[string]desired.Workload
	// failing remembers the last error per namespace so that a workload
	// failing at every poll is logged once per distinct error, not forever.
	failing map[string]string
	desired []desired.Workload
	// nsIDs identifies the namespace each installed workload's path named
	// when it was installed, so that a namespace deleted (or deleted and
	// made again under the same name, rules and queue gone) is noticed.
	nsIDs map[string]nsID
	stat  func(path string) (nsID, error)
}

// nsID identifies a network namespace: the device and inode of its file.
type nsID struct{ dev, ino uint64 }

func statNS(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

func newReconciler(dp Datapath, log *slog.Logger, m *Metrics) *reconciler {
	return &reconciler{
		dp: dp, log: log, metrics: m,
		installed: map[string]desired.Workload{}, failing: map[string]string{},
		nsIDs: map[string]nsID{}, stat: statNS,
	}
}

// dropVanished forgets installed workloads whose namespace is gone or is
// no longer the one installed (its rules and the enforcer's queue went
// with the old one), releasing what is left of them, so that the next
// reconcile installs them afresh. It reports whether it dropped any.
func (r *reconciler) dropVanished(ctx context.Context) bool {
	dropped := false
	for path, id := range r.nsIDs {
		now, err := r.stat(path)
		if err == nil && now == id {
			continue
		}
		w := r.installed[path]
		// The old queue is detached; rules in a namespace that replaced
		// the old one are not ours to keep either way.
		if rerr := r.dp.Remove(ctx, w); rerr != nil {
			r.log.Warn("release of a vanished namespace", "pod", w.Ref, "netns", path, "err", rerr)
		}
		delete(r.installed, path)
		delete(r.nsIDs, path)
		dropped = true
		r.log.Warn("workload namespace gone or replaced; protecting it again when it exists", "pod", w.Ref, "netns", path)
	}
	if dropped && r.metrics != nil {
		r.metrics.workloads.Set(float64(len(r.installed)))
	}
	return dropped
}

// setDesired records the workloads to converge to.
func (r *reconciler) setDesired(ws []desired.Workload) { r.desired = ws }

// parallelism bounds how many workloads are installed or removed at once.
// Each install runs a few dozen iptables commands in the workload's
// namespace; doing several namespaces at once cuts a node's start and stop
// time roughly by this factor.
const parallelism = 8

// each runs fn on every workload, at most parallelism at a time, and
// returns the errors by index.
func each(ws []desired.Workload, fn func(desired.Workload) error) []error {
	errs := make([]error, len(ws))
	sem := make(chan struct{}, parallelism)
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = fn(w)
		}()
	}
	wg.Wait()
	return errs
}

// reconcile applies the difference between installed and desired, and
// reports whether everything converged (false means: call again later).
func (r *reconciler) reconcile(ctx context.Context) bool {
	plan := Diff(r.installed, r.desired)
	ok := true
	removeErrs := each(plan.Remove, func(w desired.Workload) error { return r.dp.Remove(ctx, w) })
	for i, w := range plan.Remove {
		if err := removeErrs[i]; err != nil {
			r.fail(w, "release", err)
			ok = false
			continue
		}
		delete(r.installed, w.NetNS)
		delete(r.nsIDs, w.NetNS)
		delete(r.failing, w.NetNS)
		r.log.Info("workload released", "pod", w.Ref, "netns", w.NetNS)
	}
	for _, w := range plan.Update {
		if err := r.dp.Update(w); err != nil {
			r.fail(w, "update", err)
			ok = false
			continue
		}
		r.installed[w.NetNS] = w
		delete(r.failing, w.NetNS)
		r.log.Info("workload identity updated", "pod", w.Ref, "netns", w.NetNS)
	}
	addErrs := each(plan.Add, func(w desired.Workload) error { return r.dp.Install(ctx, w) })
	for i, w := range plan.Add {
		if err := addErrs[i]; err != nil {
			r.fail(w, "protect", err)
			ok = false
			continue
		}
		r.installed[w.NetNS] = w
		if id, err := r.stat(w.NetNS); err == nil {
			r.nsIDs[w.NetNS] = id
		}
		delete(r.failing, w.NetNS)
		r.log.Info("workload protected", "pod", w.Ref, "netns", w.NetNS)
	}
	// Forget errors of workloads that are neither desired nor installed.
	for path := range r.failing {
		if _, ok := r.installed[path]; !ok && !r.isDesired(path) {
			delete(r.failing, path)
		}
	}
	if r.metrics != nil {
		r.metrics.workloads.Set(float64(len(r.installed)))
	}
	return ok
}

func (r *reconciler) isDesired(path string) bool {
	for _, w := range r.desired {
		if w.NetNS == path {
			return true
		}
	}
	return false
}

func (r *reconciler) fail(w desired.Workload, what string, err error) {
	if r.metrics != nil {
		r.metrics.reconcileErrors.Inc()
	}
	if r.failing[w.NetNS] == err.Error() {
		return
	}
	r.failing[w.NetNS] = err.Error()
	r.log.Error("workload "+what+" failed; will retry", "pod", w.Ref, "netns", w.NetNS, "err", err)
}
