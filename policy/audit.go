package policy

import "fmt"

// Audit (staged) mode. A NetworkPolicy or ClusterNetworkPolicy annotated
//
//	bireme.io/enforcement: audit
//
// is evaluated as if it were enforced, but what it alone would deny
// passes: the decision is the one the enforced policies make, and it carries
// the audit outcome ([Decision.IfEnforced]) and, when that outcome is a
// denial the enforced policies do not make, [Decision.WouldDeny]. Flow
// records carry it, so an operator rolls a policy out by applying it in
// audit mode, reading the would-deny records, and then removing the
// annotation (or setting it to "enforce").
const (
	AnnotationEnforcement = "bireme.io/enforcement"
	EnforcementAudit      = "audit"
	EnforcementEnforce    = "enforce"
)

// auditMode reads the enforcement annotation. An unknown value is an error,
// not a guess: read as audit a typo would let traffic through, read as
// enforce it would cut traffic its author meant only to observe.
func auditMode(annotations map[string]string) (bool, error) {
	v, ok := annotations[AnnotationEnforcement]
	if !ok {
		return false, nil
	}
	switch v {
	case EnforcementAudit:
		return true, nil
	case EnforcementEnforce:
		return false, nil
	}
	return false, fmt.Errorf("metadata.annotations[%s]: unknown value %q (want %q or %q)", AnnotationEnforcement, v, EnforcementAudit, EnforcementEnforce)
}

// WouldDeny is the denial an audited policy would make of a connection the
// enforced policies allow: the policy and rule (Rule -1 when the policy
// denies because it isolates the workload and no rule allows), its tier and
// the reason.
type WouldDeny struct {
	Tier     string `json:"tier"`
	Policy   string `json:"policy"`
	Rule     int    `json:"rule"`
	RuleName string `json:"ruleName,omitempty"`
	Reason   string `json:"reason"`
}
