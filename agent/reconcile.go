package agent

import (
	"context"
	"errors"
	"log/slog"
)

// Datapath is what the agent drives for each workload: the supervisor's
// rules in the workload's namespace and the enforcer's queue reading them.
type Datapath interface {
	// Install makes the workload protected. It may be called again for a
	// workload whose earlier Install failed, and after a restart on a
	// namespace that still holds rules from the previous run.
	Install(ctx context.Context, w Workload) error
	// Update gives the enforcer the workload's new identity.
	Update(w Workload) error
	// Remove undoes Install.
	Remove(ctx context.Context, w Workload) error
}

// reconciler keeps the set of installed workloads equal to the desired set,
// retrying what failed. It is used from one goroutine.
type reconciler struct {
	dp        Datapath
	log       *slog.Logger
	metrics   *Metrics // may be nil
	installed map[string]Workload
	// failing remembers the last error per namespace so that a workload
	// failing at every poll is logged once per distinct error, not forever.
	failing map[string]string
	desired []Workload
}

func newReconciler(dp Datapath, log *slog.Logger, m *Metrics) *reconciler {
	return &reconciler{dp: dp, log: log, metrics: m, installed: map[string]Workload{}, failing: map[string]string{}}
}

// setDesired records the selection to converge to and logs its problems.
func (r *reconciler) setDesired(sel Selection) {
	for _, p := range sel.Problems {
		r.log.Warn("workload skipped", "problem", p)
	}
	r.desired = sel.Workloads
}

// reconcile applies the difference between installed and desired, and
// reports whether everything converged (false means: call again later).
func (r *reconciler) reconcile(ctx context.Context) bool {
	plan := Diff(r.installed, r.desired)
	ok := true
	for _, w := range plan.Remove {
		if err := r.dp.Remove(ctx, w); err != nil {
			r.fail(w, "release", err)
			ok = false
			continue
		}
		delete(r.installed, w.NetNS)
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
	for _, w := range plan.Add {
		if err := r.dp.Install(ctx, w); err != nil {
			r.fail(w, "protect", err)
			ok = false
			continue
		}
		r.installed[w.NetNS] = w
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

func (r *reconciler) fail(w Workload, what string, err error) {
	if r.metrics != nil {
		r.metrics.reconcileErrors.Inc()
	}
	if r.failing[w.NetNS] == err.Error() {
		return
	}
	r.failing[w.NetNS] = err.Error()
	r.log.Error("workload "+what+" failed; will retry", "pod", w.Ref, "netns", w.NetNS, "err", err)
}

// removeAll releases every installed workload; it is the agent's shutdown.
// Every removal is tried; the errors are joined.
func (r *reconciler) removeAll(ctx context.Context) error {
	r.desired = nil
	var errs []error
	for _, w := range Diff(r.installed, nil).Remove {
		if err := r.dp.Remove(ctx, w); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(r.installed, w.NetNS)
		r.log.Info("workload released", "pod", w.Ref, "netns", w.NetNS)
	}
	if r.metrics != nil {
		r.metrics.workloads.Set(float64(len(r.installed)))
	}
	return errors.Join(errs...)
}
