package report

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/bireme/bireme/policy"
)

// summary says in a few words how one direction of a workload is covered.
func (c Coverage) summary() string {
	var names []string
	for _, p := range c.Policies {
		names = append(names, policyLabel(p))
	}
	switch {
	case c.Isolated:
		return "isolated by " + strings.Join(names, ", ")
	case len(names) > 0:
		return "open, though selected by " + strings.Join(names, ", ")
	}
	return "open"
}

// policyLabel names a selecting policy: a NetworkPolicy by namespace/name,
// a ClusterNetworkPolicy with its tier and priority; audit mode said.
func policyLabel(p Selection) string {
	s := p.Policy
	if p.Tier != TierNetworkPolicy {
		s = fmt.Sprintf("%s (%s tier, priority %d)", p.Policy, p.Tier, p.Priority)
	}
	if p.Audit {
		s += " [audit]"
	}
	return s
}

// ruleLabel names a rule: "rule 0", or for a ClusterNetworkPolicy
// `rule 0 "name": Deny`.
func ruleLabel(r policy.RuleView) string {
	s := fmt.Sprintf("rule %d", r.Index)
	if r.Name != "" {
		s += fmt.Sprintf(" %q", r.Name)
	}
	if r.Action != "" {
		s += ": " + r.Action
	}
	return s
}

// labelList renders labels as k=v, sorted.
func labelList(m map[string]string) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, k+"="+m[k])
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}

// ruleLine is one rule of a policy selecting a workload: who may connect
// and on which ports.
type ruleLine struct {
	workload, direction, policy string
	rule                        string // "rule 0" or "no rule: allows nothing"
	peers, ports                string
}

// ruleLines lists, for every isolated direction of every workload, one line
// per rule (one line saying so for a policy with no rules).
func (r *Report) ruleLines() []ruleLine {
	var out []ruleLine
	for _, w := range r.Workloads {
		for _, d := range []struct {
			name string
			c    Coverage
		}{{"ingress", w.Ingress}, {"egress", w.Egress}} {
			for _, p := range d.c.Policies {
				if len(p.Rules) == 0 {
					out = append(out, ruleLine{w.Workload, d.name, policyLabel(p), "no rules", "nobody", "-"})
				}
				for _, rule := range p.Rules {
					out = append(out, ruleLine{w.Workload, d.name, policyLabel(p), ruleLabel(rule),
						strings.Join(rule.Peers, "; "), strings.Join(rule.Ports, ", ")})
				}
			}
		}
	}
	return out
}

// WriteTable writes the report as aligned text sections.
func WriteTable(w io.Writer, r *Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "WORKLOAD\tSERVICE ACCOUNT\tLABELS\tINGRESS\tEGRESS\n")
	for _, wl := range r.Workloads {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", wl.Workload, wl.ServiceAccount, labelList(wl.Labels), wl.Ingress.summary(), wl.Egress.summary())
	}
	if lines := r.ruleLines(); len(lines) > 0 {
		fmt.Fprintf(tw, "\nWORKLOAD\tDIRECTION\tPOLICY\tRULE\tPEERS\tPORTS\n")
		for _, l := range lines {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", l.workload, l.direction, l.policy, l.rule, l.peers, l.ports)
		}
	}
	if ignored := r.ignoredLines(); len(ignored) > 0 {
		fmt.Fprintf(tw, "\nRESERVED LABELS SET BY WORKLOADS (ignored: Bireme sets them from signed facts)\n")
		for _, l := range ignored {
			fmt.Fprintf(tw, "%s\t%s\n", l[0], l[1])
		}
	}
	for _, rc := range r.Regimes {
		fmt.Fprintf(tw, "\nREGIME %s: %s\n", rc.Regime, verdict(rc))
		for _, m := range rc.Workloads {
			fmt.Fprintf(tw, "  %s\t%s\n", m.Workload, membership(m))
		}
	}
	if rf := r.Refusals; rf != nil {
		fmt.Fprintf(tw, "\nREFUSED CONNECTIONS (%d flow records)\nTIER\tPOLICY\tINGRESS\tEGRESS\n", rf.Records)
		for _, p := range rf.ByPolicy {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", p.Tier, policyName(p), p.Ingress, p.Egress)
		}
		for _, reason := range slices.Sorted(maps.Keys(rf.Identity)) {
			fmt.Fprintf(tw, "-\ttoken rejected: %s\t%d\t\n", reason, rf.Identity[reason])
		}
		if rf.Unattributed > 0 {
			fmt.Fprintf(tw, "-\tno policy named in the record\t%d\t\n", rf.Unattributed)
		}
	}
	return tw.Flush()
}

func verdict(rc RegimeCoverage) string {
	switch {
	case rc.Compliant:
		return "every workload covered"
	case len(rc.Workloads) == 0:
		return "NO WORKLOAD carries this label (check its spelling)"
	}
	return "NOT every workload covered"
}

func membership(m RegimeMembership) string {
	if m.Covered {
		return "covered (isolated for ingress and egress)"
	}
	return "NOT covered: open for " + strings.Join(m.Open, " and ")
}

func policyName(p PolicyRefusals) string {
	if p.InStore {
		return p.Policy
	}
	return p.Policy + " (no longer in the store)"
}

// WriteMarkdown writes the report as a Markdown document for auditors.
func WriteMarkdown(w io.Writer, r *Report) error {
	var b strings.Builder
	b.WriteString("# Network policy compliance report\n\n")
	fmt.Fprintf(&b, "Policy tiers evaluated, in order: %s. A direction is isolated when every connection in it is decided by a written rule: a NetworkPolicy selects the workload, or a ClusterNetworkPolicy denies every peer on every port before any rule passes the connection on. Otherwise a connection no rule matches is allowed. Workloads isolated in neither direction come first.\n\n", strings.Join(r.Tiers, ", "))
	b.WriteString("## Workloads\n\n| Workload | Service account | Labels | Ingress | Egress |\n|---|---|---|---|---|\n")
	for _, wl := range r.Workloads {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", cell(wl.Workload), cell(wl.ServiceAccount), cell(labelList(wl.Labels)), cell(wl.Ingress.summary()), cell(wl.Egress.summary()))
	}
	if lines := r.ruleLines(); len(lines) > 0 {
		b.WriteString("\n## What the policies allow\n\nThe first ClusterNetworkPolicy rule (Admin tier) matching a connection's peer and port accepts, denies or passes it on; then a connection is allowed when one rule of one selecting NetworkPolicy matches both; then the Baseline tier's rules apply.\n\n| Workload | Direction | Policy | Rule | Peers | Ports |\n|---|---|---|---|---|---|\n")
		for _, l := range lines {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", cell(l.workload), l.direction, cell(l.policy), l.rule, cell(l.peers), cell(l.ports))
		}
	}
	if ignored := r.ignoredLines(); len(ignored) > 0 {
		b.WriteString("\n## Reserved labels set by workloads\n\nBireme ignores these and uses the signed facts instead; a workload that claims them is worth a look.\n\n| Workload | Ignored labels |\n|---|---|\n")
		for _, l := range ignored {
			fmt.Fprintf(&b, "| %s | %s |\n", cell(l[0]), cell(l[1]))
		}
	}
	for _, rc := range r.Regimes {
		fmt.Fprintf(&b, "\n## Regime `%s`: %s\n\nA workload is covered when at least one policy isolates it for ingress and at least one for egress.\n\n", rc.Regime, verdict(rc))
		if len(rc.Workloads) > 0 {
			b.WriteString("| Workload | Coverage |\n|---|---|\n")
			for _, m := range rc.Workloads {
				fmt.Fprintf(&b, "| %s | %s |\n", cell(m.Workload), cell(membership(m)))
			}
		}
	}
	if rf := r.Refusals; rf != nil {
		fmt.Fprintf(&b, "\n## Refused connections\n\nFrom %d flow records; each refused connection counts once, against every policy that selected the refusing workload.\n\n| Tier | Policy | Ingress | Egress |\n|---|---|---|---|\n", rf.Records)
		for _, p := range rf.ByPolicy {
			fmt.Fprintf(&b, "| %s | %s | %d | %d |\n", p.Tier, cell(policyName(p)), p.Ingress, p.Egress)
		}
		if len(rf.Identity) > 0 || rf.Unattributed > 0 {
			b.WriteString("\n| Refused for | Connections |\n|---|---|\n")
			for _, reason := range slices.Sorted(maps.Keys(rf.Identity)) {
				fmt.Fprintf(&b, "| token rejected: %s | %d |\n", cell(reason), rf.Identity[reason])
			}
			if rf.Unattributed > 0 {
				fmt.Fprintf(&b, "| no policy named in the record | %d |\n", rf.Unattributed)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// cell escapes a Markdown table cell.
func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// ignoredLines pairs each workload that set reserved labels with them and
// the signed service account they are measured against.
func (r *Report) ignoredLines() [][2]string {
	var out [][2]string
	for _, w := range r.Workloads {
		if len(w.IgnoredLabels) > 0 {
			out = append(out, [2]string{w.Workload, strings.Join(w.IgnoredLabels, ", ") + " (runs as service account " + w.ServiceAccount + ")"})
		}
	}
	return out
}
