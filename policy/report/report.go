// Package report builds the compliance report of `bireme policy report`:
// for every workload, whether policy isolates it for ingress and egress,
// which policies select it and whom their rules admit on which ports; for a
// label regime (pci=true), whether every workload carrying it is covered;
// and, from flow records, how many connections each policy refused.
//
// It reads no files: the caller gives the compiled engine, the workloads'
// identities (k8s.IdentityOf for a Kubernetes store) and the flow records
// (flowlog.Read), so any store can be reported on. Policies are listed in
// the order they are evaluated: the ClusterNetworkPolicy Admin tier, the
// NetworkPolicies, the Baseline tier.
package report

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/policy"
)

// The tiers, as policy names them.
const (
	TierAdmin         = policy.TierAdmin
	TierNetworkPolicy = policy.TierNetworkPolicy
	TierBaseline      = policy.TierBaseline
)

// Regime is a label that marks workloads under a compliance regime, such as
// pci=true. A workload carries it when its pod labels (pseudo-labels
// included, so bireme.io/service-account=payments is a regime too) or its
// namespace's labels have Key set to Value.
type Regime struct {
	Key, Value string
}

// ParseRegime parses "KEY=VALUE".
func ParseRegime(s string) (Regime, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return Regime{}, fmt.Errorf("regime %q: want KEY=VALUE, for example pci=true", s)
	}
	return Regime{Key: k, Value: v}, nil
}

// String returns "KEY=VALUE".
func (r Regime) String() string { return r.Key + "=" + r.Value }

// Input is what a report is built from.
type Input struct {
	Engine *policy.Engine
	// Workloads are the identities to report on, as their enforcers would
	// sign them.
	Workloads []*identity.Identity
	Regimes   []Regime
	// IgnoredLabels maps a workload ("namespace/pod") to the reserved
	// labels it set itself ("key=value"), which its identity left out
	// (k8s.IgnoredReservedLabels).
	IgnoredLabels map[string][]string
	// Flows are flow records; nil means none were given, and the report
	// has no refusal section.
	Flows []flowlog.Record
}

// Report is the compliance report.
type Report struct {
	// Tiers are the policy tiers evaluated, in evaluation order.
	Tiers []string `json:"tiers"`
	// Workloads: those no policy isolates in either direction first, then
	// those isolated in one direction, then the rest; by name within each.
	Workloads []Workload       `json:"workloads"`
	Regimes   []RegimeCoverage `json:"regimes,omitempty"`
	Refusals  *Refusals        `json:"refusals,omitempty"`
}

// Workload is one workload's coverage.
type Workload struct {
	Workload       string            `json:"workload"` // "namespace/pod"
	ServiceAccount string            `json:"serviceAccount"`
	Labels         map[string]string `json:"labels,omitempty"` // its own labels, without pseudo-labels
	// IgnoredLabels are reserved labels ("key=value") the workload set
	// itself and Bireme ignored: a claim it may not make, worth a look.
	IgnoredLabels []string `json:"ignoredReservedLabels,omitempty"`
	Ingress       Coverage `json:"ingress"`
	Egress        Coverage `json:"egress"`
}

// isolation ranks a workload for ordering: 0 isolated in no direction.
func (w *Workload) isolation() int {
	n := 0
	if w.Ingress.Isolated {
		n++
	}
	if w.Egress.Isolated {
		n++
	}
	return n
}

// Coverage is one direction of a workload. Isolated means every
// connection in that direction is decided by a rule someone wrote: a
// NetworkPolicy in force selects the workload, or a ClusterNetworkPolicy
// denies every peer on every port before anything passes it on
// ([policy.Engine.Isolated]). Not isolated means some peers may connect
// (ingress) or be connected to (egress) because no rule says otherwise.
type Coverage struct {
	Isolated bool `json:"isolated"`
	// Policies are the rule sets selecting the workload in evaluation
	// order: Admin tier by priority, NetworkPolicies by name, Baseline
	// tier by priority.
	Policies []Selection `json:"policies,omitempty"`
}

// Selection is one policy selecting a workload, with its rules in words.
type Selection = policy.SelectingPolicy

// RegimeCoverage answers "is every workload of the regime covered?". A
// workload is covered when at least one rule set isolates it for ingress
// and at least one for egress: only then is every connection to and from
// it decided by a rule someone wrote. A regime no workload carries is not
// compliant either: a misspelt regime must not read as a pass.
type RegimeCoverage struct {
	Regime    string             `json:"regime"`
	Compliant bool               `json:"compliant"`
	Workloads []RegimeMembership `json:"workloads"`
}

// RegimeMembership is one workload carrying a regime label.
type RegimeMembership struct {
	Workload string `json:"workload"`
	Covered  bool   `json:"covered"`
	// Open lists the directions no policy isolates ("ingress", "egress").
	Open []string `json:"open,omitempty"`
}

// Refusals counts refused connections from flow records. Each distinct
// refused connection (node, direction, local and peer address, protocol)
// counts once, however many records its retransmitted handshake packets
// produced. Port reuse by a later connection to the same peer merges the
// two, so counts are a lower bound over long logs.
type Refusals struct {
	Records int `json:"records"` // flow records read
	// ByPolicy: every policy of the store, and any other a record names,
	// with the refused connections counted against it: a policy-denied
	// connection counts against each policy that selected the workload
	// and allowed nothing.
	ByPolicy []PolicyRefusals `json:"byPolicy"`
	// Identity counts connections refused because a token failed
	// verification, by the token reason (unknown-ca, expired, ...).
	Identity map[string]int `json:"identity,omitempty"`
	// Unattributed counts policy refusals whose record names no selecting
	// policy (records from enforcers older than the selectedBy field, or
	// refusals that are not a policy's: no local identity).
	Unattributed int `json:"unattributed,omitempty"`
}

// PolicyRefusals is one policy's refused connections by direction.
type PolicyRefusals struct {
	Tier    string `json:"tier"`
	Policy  string `json:"policy"`
	InStore bool   `json:"inStore"` // false: named by records, absent from the store now
	Ingress int    `json:"ingress"`
	Egress  int    `json:"egress"`
}

// Build builds the report.
func Build(in Input) *Report {
	r := &Report{Tiers: []string{TierAdmin, TierNetworkPolicy, TierBaseline}, Workloads: []Workload{}}
	for _, id := range in.Workloads {
		w := workloadOf(in.Engine, id)
		w.IgnoredLabels = in.IgnoredLabels[w.Workload]
		r.Workloads = append(r.Workloads, w)
	}
	slices.SortStableFunc(r.Workloads, func(a, b Workload) int {
		return cmp.Or(cmp.Compare(a.isolation(), b.isolation()), cmp.Compare(a.Workload, b.Workload))
	})
	for _, reg := range in.Regimes {
		r.Regimes = append(r.Regimes, regimeCoverage(reg, in.Workloads, r.Workloads))
	}
	if in.Flows != nil {
		r.Refusals = refusals(in.Engine, in.Flows)
	}
	return r
}

func workloadOf(e *policy.Engine, id *identity.Identity) Workload {
	w := Workload{Workload: id.Ref(), ServiceAccount: id.ServiceAccount, Labels: identity.WithoutReserved(id.Labels)}
	w.Ingress = Coverage{Isolated: e.Isolated(id, policy.Ingress), Policies: e.SelectingTiers(id, policy.Ingress)}
	w.Egress = Coverage{Isolated: e.Isolated(id, policy.Egress), Policies: e.SelectingTiers(id, policy.Egress)}
	return w
}

// carries reports whether id is under reg (pod or namespace label).
func carries(id *identity.Identity, reg Regime) bool {
	if v, ok := id.PodLabel(reg.Key); ok && v == reg.Value {
		return true
	}
	v, ok := id.NamespaceLabel(reg.Key)
	return ok && v == reg.Value
}

func regimeCoverage(reg Regime, ids []*identity.Identity, workloads []Workload) RegimeCoverage {
	byRef := map[string]*Workload{}
	for i := range workloads {
		byRef[workloads[i].Workload] = &workloads[i]
	}
	rc := RegimeCoverage{Regime: reg.String(), Workloads: []RegimeMembership{}}
	for _, id := range ids {
		if !carries(id, reg) {
			continue
		}
		w := byRef[id.Ref()]
		m := RegimeMembership{Workload: w.Workload}
		if !w.Ingress.Isolated {
			m.Open = append(m.Open, policy.Ingress.String())
		}
		if !w.Egress.Isolated {
			m.Open = append(m.Open, policy.Egress.String())
		}
		m.Covered = len(m.Open) == 0
		rc.Workloads = append(rc.Workloads, m)
	}
	slices.SortFunc(rc.Workloads, func(a, b RegimeMembership) int { return cmp.Compare(a.Workload, b.Workload) })
	rc.Compliant = len(rc.Workloads) > 0
	for _, m := range rc.Workloads {
		rc.Compliant = rc.Compliant && m.Covered
	}
	return rc
}

// connection identifies one connection as one enforcer saw it.
type connection struct {
	node, direction, local, peer, protocol string
}

func refusals(e *policy.Engine, records []flowlog.Record) *Refusals {
	out := &Refusals{Records: len(records), Identity: map[string]int{}}
	byPolicy := map[string]*PolicyRefusals{}
	for _, np := range e.Objects().Policies {
		name := np.Namespace + "/" + np.Name
		byPolicy[name] = &PolicyRefusals{Tier: TierNetworkPolicy, Policy: name, InStore: true}
	}
	// ClusterNetworkPolicy names have no slash: they cannot collide.
	for _, cp := range e.Objects().ClusterPolicies {
		byPolicy[cp.Name] = &PolicyRefusals{Tier: string(cp.Spec.Tier), Policy: cp.Name, InStore: true}
	}
	seen := map[connection]bool{}
	for i := range records {
		rec := &records[i]
		if rec.Verdict != flowlog.Deny {
			continue
		}
		c := connection{rec.Node, rec.Direction, rec.LocalAddr, rec.PeerAddr, rec.Protocol}
		if seen[c] {
			continue
		}
		seen[c] = true
		switch {
		case rec.TokenError != "":
			out.Identity[rec.TokenError]++
		case len(rec.SelectedBy) == 0:
			out.Unattributed++
		default:
			for _, name := range rec.SelectedBy {
				p := byPolicy[name]
				if p == nil {
					p = &PolicyRefusals{Tier: recordTier(rec.Tier), Policy: name}
					byPolicy[name] = p
				}
				if rec.Direction == policy.Egress.String() {
					p.Egress++
				} else {
					p.Ingress++
				}
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(byPolicy)) {
		out.ByPolicy = append(out.ByPolicy, *byPolicy[name])
	}
	if out.ByPolicy == nil {
		out.ByPolicy = []PolicyRefusals{}
	}
	return out
}

// recordTier names the tier of a flow record ("admin", "baseline", or
// none: a NetworkPolicy) as the report does.
func recordTier(t string) string {
	switch strings.ToLower(t) {
	case strings.ToLower(TierAdmin):
		return TierAdmin
	case strings.ToLower(TierBaseline):
		return TierBaseline
	}
	return TierNetworkPolicy
}
