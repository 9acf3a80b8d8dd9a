package agent

import (
	"sort"

	"github.com/bireme/bireme/agent/desired"
)

// Plan is what it takes to go from the workloads installed on a node to the
// workloads the store asks for. Each list is sorted by NetNS.
type Plan struct {
	// Add are workloads to protect and attach: their namespace is new.
	Add []desired.Workload
	// Update are installed workloads whose identity changed (pod or
	// namespace labels, ports, the pod now living in that namespace):
	// the enforcer must sign the new identity; the rules stay.
	Update []desired.Workload
	// Remove are installed workloads the store no longer asks for.
	Remove []desired.Workload
}

// Empty reports whether the plan changes nothing.
func (p Plan) Empty() bool { return len(p.Add)+len(p.Update)+len(p.Remove) == 0 }

// Diff compares installed workloads (keyed by NetNS) with the wanted ones.
// Identities are compared by digest, so a reordered label map is no change.
func Diff(installed map[string]desired.Workload, wanted []desired.Workload) Plan {
	var p Plan
	want := make(map[string]bool, len(wanted))
	for _, w := range wanted {
		want[w.NetNS] = true
		have, ok := installed[w.NetNS]
		switch {
		case !ok:
			p.Add = append(p.Add, w)
		case have.Ref != w.Ref || have.Identity.Digest() != w.Identity.Digest():
			p.Update = append(p.Update, w)
		}
	}
	for path, w := range installed {
		if !want[path] {
			p.Remove = append(p.Remove, w)
		}
	}
	for _, l := range [][]desired.Workload{p.Add, p.Update, p.Remove} {
		sort.Slice(l, func(i, j int) bool { return l[i].NetNS < l[j].NetNS })
	}
	return p
}
