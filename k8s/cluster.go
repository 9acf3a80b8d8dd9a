package k8s

import (
	"fmt"
	"net/netip"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/bireme/bireme/policy"
)

// ClusterNetworkPolicy (sigs.k8s.io/network-policy-api, the admin and
// baseline tiers). v1beta1 is the storage version; v1alpha2 has the same
// schema (the project's v0.3.0 release notes), so both decode into the
// v1beta1 Go type.
const (
	kindClusterNetworkPolicy = "ClusterNetworkPolicy"
	apiPolicyV1beta1         = "policy.networking.k8s.io/v1beta1"
	apiPolicyV1alpha2        = "policy.networking.k8s.io/v1alpha2"
)

// API limits of the CRD's schema.
const (
	maxClusterRules    = 25
	maxClusterPeers    = 25
	maxClusterRuleName = 100
)

// validateClusterNetworkPolicy checks a ClusterNetworkPolicy as the API
// server would with the CRD's schema and CEL rules, limited to what policy
// reads, and refuses the peers Bireme cannot decide (nodes, domainNames)
// rather than ignoring them: an ignored peer in a Deny rule lets through
// what the rule denies.
func validateClusterNetworkPolicy(p *cnp.ClusterNetworkPolicy) field.ErrorList {
	md := field.NewPath("metadata")
	errs := validateName(p.Name, validation.IsDNS1123Subdomain, md.Child("name"))
	errs = append(errs, validateEnforcement(p.Annotations, md.Child("annotations"))...)
	spec := field.NewPath("spec")
	switch p.Spec.Tier {
	case cnp.AdminTier, cnp.BaselineTier:
	case "":
		errs = append(errs, field.Required(spec.Child("tier"), ""))
	default:
		errs = append(errs, field.NotSupported(spec.Child("tier"), p.Spec.Tier, []string{string(cnp.AdminTier), string(cnp.BaselineTier)}))
	}
	if p.Spec.Priority < 0 || p.Spec.Priority > 1000 {
		errs = append(errs, field.Invalid(spec.Child("priority"), p.Spec.Priority, "must be between 0 and 1000"))
	}
	subj := spec.Child("subject")
	switch s := p.Spec.Subject; {
	case s.Namespaces != nil && s.Pods != nil:
		errs = append(errs, field.Forbidden(subj, "exactly one of namespaces, pods may be set"))
	case s.Namespaces != nil:
		errs = append(errs, validateSelector(s.Namespaces, namespaceLabels, subj.Child("namespaces"))...)
	case s.Pods != nil:
		errs = append(errs, validateNamespacedPod(s.Pods, subj.Child("pods"))...)
	default:
		errs = append(errs, field.Required(subj, "one of namespaces, pods"))
	}
	if n := len(p.Spec.Ingress); n > maxClusterRules {
		errs = append(errs, field.TooMany(spec.Child("ingress"), n, maxClusterRules))
	}
	for i, r := range p.Spec.Ingress {
		path := spec.Child("ingress").Index(i)
		errs = append(errs, validateClusterRule(r.Name, r.Action, r.Protocols, len(r.From), path, path.Child("from"))...)
		for j, f := range r.From {
			errs = append(errs, validateClusterPeer(cnp.ClusterNetworkPolicyEgressPeer{Namespaces: f.Namespaces, Pods: f.Pods}, path.Child("from").Index(j))...)
		}
	}
	if n := len(p.Spec.Egress); n > maxClusterRules {
		errs = append(errs, field.TooMany(spec.Child("egress"), n, maxClusterRules))
	}
	for i, r := range p.Spec.Egress {
		path := spec.Child("egress").Index(i)
		errs = append(errs, validateClusterRule(r.Name, r.Action, r.Protocols, len(r.To), path, path.Child("to"))...)
		networks := false
		for j, t := range r.To {
			errs = append(errs, validateClusterPeer(t, path.Child("to").Index(j))...)
			networks = networks || len(t.Networks) > 0
		}
		for j, pr := range r.Protocols {
			if networks && pr.DestinationNamedPort != "" {
				errs = append(errs, field.Forbidden(path.Child("protocols").Index(j).Child("destinationNamedPort"),
					"networks peers have no named ports"))
			}
		}
	}
	return errs
}

// validateClusterRule checks what ingress and egress rules share.
func validateClusterRule(name string, act cnp.ClusterNetworkPolicyRuleAction, protocols []cnp.ClusterNetworkPolicyProtocol, peers int, path, peersPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(name) > maxClusterRuleName {
		errs = append(errs, field.TooLong(path.Child("name"), name, maxClusterRuleName))
	}
	switch act {
	case cnp.ClusterNetworkPolicyRuleActionAccept, cnp.ClusterNetworkPolicyRuleActionDeny, cnp.ClusterNetworkPolicyRuleActionPass:
	case "":
		errs = append(errs, field.Required(path.Child("action"), ""))
	default:
		errs = append(errs, field.NotSupported(path.Child("action"), act, []string{"Accept", "Deny", "Pass"}))
	}
	switch {
	case peers == 0:
		errs = append(errs, field.Required(peersPath, "at least one peer"))
	case peers > maxClusterPeers:
		errs = append(errs, field.TooMany(peersPath, peers, maxClusterPeers))
	}
	if len(protocols) > maxClusterPeers {
		errs = append(errs, field.TooMany(path.Child("protocols"), len(protocols), maxClusterPeers))
	}
	for i, pr := range protocols {
		errs = append(errs, validateClusterProtocol(pr, path.Child("protocols").Index(i))...)
	}
	return errs
}

// validateClusterPeer checks one peer: exactly one field set; nodes and
// domainNames are refused (Bireme cannot decide them).
func validateClusterPeer(p cnp.ClusterNetworkPolicyEgressPeer, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	n := 0
	if p.Namespaces != nil {
		n++
		errs = append(errs, validateSelector(p.Namespaces, namespaceLabels, path.Child("namespaces"))...)
	}
	if p.Pods != nil {
		n++
		errs = append(errs, validateNamespacedPod(p.Pods, path.Child("pods"))...)
	}
	if p.Networks != nil {
		n++
		if len(p.Networks) == 0 || len(p.Networks) > maxClusterPeers {
			errs = append(errs, field.Invalid(path.Child("networks"), len(p.Networks), "must list 1 to 25 CIDRs"))
		}
		for i, c := range p.Networks {
			pfx, err := netip.ParsePrefix(string(c))
			if err != nil || pfx.Masked() != pfx {
				errs = append(errs, field.Invalid(path.Child("networks").Index(i), c, "Invalid CIDR format provided (a masked CIDR such as 198.18.0.0/16)"))
			}
		}
	}
	if p.Nodes != nil {
		n++
		errs = append(errs, field.NotSupported(path.Child("nodes"), "nodes", []string{"namespaces", "pods", "networks"}))
	}
	if p.DomainNames != nil {
		n++
		errs = append(errs, field.NotSupported(path.Child("domainNames"), "domainNames", []string{"namespaces", "pods", "networks"}))
	}
	if n != 1 {
		errs = append(errs, field.Invalid(path, n, "exactly one of namespaces, pods, networks must be set"))
	}
	return errs
}

// validateNamespacedPod checks a pods subject or peer.
func validateNamespacedPod(p *cnp.NamespacedPod, path *field.Path) field.ErrorList {
	errs := validateSelector(&p.NamespaceSelector, namespaceLabels, path.Child("namespaceSelector"))
	return append(errs, validateSelector(&p.PodSelector, podLabels, path.Child("podSelector"))...)
}

// validateClusterProtocol checks one protocols entry: exactly one of tcp,
// udp, sctp, destinationNamedPort; a port number or a start < end range.
func validateClusterProtocol(pr cnp.ClusterNetworkPolicyProtocol, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	n := 0
	port := func(name string, dp *cnp.Port) {
		n++
		p := path.Child(name).Child("destinationPort")
		switch {
		case dp == nil:
			errs = append(errs, field.Required(p, ""))
		case dp.Range != nil && dp.Number != 0, dp.Range == nil && dp.Number == 0:
			errs = append(errs, field.Invalid(p, dp, "exactly one of number, range must be set"))
		case dp.Range != nil:
			for _, v := range []int32{dp.Range.Start, dp.Range.End} {
				for _, msg := range validation.IsValidPortNum(int(v)) {
					errs = append(errs, field.Invalid(p.Child("range"), v, msg))
				}
			}
			if dp.Range.Start >= dp.Range.End {
				errs = append(errs, field.Invalid(p.Child("range"), fmt.Sprintf("%d-%d", dp.Range.Start, dp.Range.End), "Start port must be less than End port"))
			}
		default:
			for _, msg := range validation.IsValidPortNum(int(dp.Number)) {
				errs = append(errs, field.Invalid(p.Child("number"), dp.Number, msg))
			}
		}
	}
	if pr.TCP != nil {
		port("tcp", pr.TCP.DestinationPort)
	}
	if pr.UDP != nil {
		port("udp", pr.UDP.DestinationPort)
	}
	if pr.SCTP != nil {
		port("sctp", pr.SCTP.DestinationPort)
	}
	if pr.DestinationNamedPort != "" {
		n++
		for _, msg := range validation.IsValidPortName(pr.DestinationNamedPort) {
			errs = append(errs, field.Invalid(path.Child("destinationNamedPort"), pr.DestinationNamedPort, msg))
		}
	}
	if n != 1 {
		errs = append(errs, field.Invalid(path, n, "exactly one of tcp, udp, sctp, destinationNamedPort must be set"))
	}
	return errs
}

// validateEnforcement checks the bireme.io/enforcement annotation (audit
// mode): absent, "audit" or "enforce". A typo is an error rather than a
// guess either way.
func validateEnforcement(annotations map[string]string, path *field.Path) field.ErrorList {
	v, ok := annotations[policy.AnnotationEnforcement]
	if !ok || v == policy.EnforcementAudit || v == policy.EnforcementEnforce {
		return nil
	}
	return field.ErrorList{field.NotSupported(path.Key(policy.AnnotationEnforcement), v, []string{policy.EnforcementAudit, policy.EnforcementEnforce})}
}
