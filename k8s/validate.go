package k8s

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/policy"
)

// Validate checks every object as the API server would (see below) and
// that no object is defined twice. The error names the first bad object:
// "Kind namespace/name: field.path: problem". Objects that did not come
// through a [Decoder] (informers, tests, other sources) are checked here.
func Validate(objs policy.Objects) error {
	seen := map[string]bool{}
	check := func(ref string, errs field.ErrorList) error {
		if err := errs.ToAggregate(); err != nil {
			return fmt.Errorf("%s: %w", ref, err)
		}
		if seen[ref] {
			return fmt.Errorf("%s: duplicate object", ref)
		}
		seen[ref] = true
		return nil
	}
	for _, ns := range objs.Namespaces {
		if err := check(objectRef(kindNamespace, "", ns.Name), validateNamespace(ns)); err != nil {
			return err
		}
	}
	for _, p := range objs.Pods {
		if err := check(objectRef(kindPod, p.Namespace, p.Name), validatePod(p)); err != nil {
			return err
		}
	}
	for _, np := range objs.Policies {
		if err := check(objectRef(kindNetworkPolicy, np.Namespace, np.Name), validateNetworkPolicy(np)); err != nil {
			return err
		}
	}
	for _, p := range objs.ClusterPolicies {
		if err := check(objectRef(kindClusterNetworkPolicy, "", p.Name), validateClusterNetworkPolicy(p)); err != nil {
			return err
		}
	}
	return nil
}

// Compile validates objs ([Validate]) and compiles them into a policy
// Engine: either every object is valid and a whole new Engine is returned,
// or nothing is built and the error names the first bad object. This is the
// way in for Kubernetes objects; [policy.Compile] alone trusts that its
// input was validated.
func Compile(objs policy.Objects) (*policy.Engine, error) {
	return CompileWith(objs, policy.Options{})
}

// CompileWith is [Compile] with compile options (the ipBlock mode).
func CompileWith(objs policy.Objects, opts policy.Options) (*policy.Engine, error) {
	if err := Validate(objs); err != nil {
		return nil, err
	}
	return policy.CompileWith(objs, opts)
}

// The checks below follow the API server's own validation of these objects
// (k8s.io/kubernetes/pkg/apis/{core,networking}/validation), limited to the
// fields policy reads, so that whatever the API server would refuse the
// file store refuses too, with the same field paths.

// validateNamespace checks a Namespace's name and labels.
func validateNamespace(ns *corev1.Namespace) field.ErrorList {
	md := field.NewPath("metadata")
	errs := validateName(ns.Name, validation.IsDNS1123Label, md.Child("name"))
	return append(errs, metav1validation.ValidateLabels(ns.Labels, md.Child("labels"))...)
}

// validatePod checks what an identity is built from: names, labels,
// service account and named container ports.
func validatePod(p *corev1.Pod) field.ErrorList {
	md := field.NewPath("metadata")
	errs := validateName(p.Name, validation.IsDNS1123Subdomain, md.Child("name"))
	errs = append(errs, validateName(p.Namespace, validation.IsDNS1123Label, md.Child("namespace"))...)
	errs = append(errs, metav1validation.ValidateLabels(p.Labels, md.Child("labels"))...)
	spec := field.NewPath("spec")
	if sa := p.Spec.ServiceAccountName; sa != "" {
		errs = append(errs, validateName(sa, validation.IsDNS1123Subdomain, spec.Child("serviceAccountName"))...)
	}
	names := map[string]bool{}
	checkPorts := func(c corev1.Container, path *field.Path) {
		for j, port := range c.Ports {
			pp := path.Child("ports").Index(j)
			if port.Name != "" {
				for _, msg := range validation.IsValidPortName(port.Name) {
					errs = append(errs, field.Invalid(pp.Child("name"), port.Name, msg))
				}
				if names[port.Name] {
					errs = append(errs, field.Duplicate(pp.Child("name"), port.Name))
				}
				names[port.Name] = true
			}
			for _, msg := range validation.IsValidPortNum(int(port.ContainerPort)) {
				errs = append(errs, field.Invalid(pp.Child("containerPort"), port.ContainerPort, msg))
			}
			errs = append(errs, validateProtocol(port.Protocol, pp.Child("protocol"))...)
		}
	}
	for i, c := range p.Spec.Containers {
		checkPorts(c, spec.Child("containers").Index(i))
	}
	for i, c := range p.Spec.InitContainers {
		checkPorts(c, spec.Child("initContainers").Index(i))
	}
	return errs
}

// validateNetworkPolicy checks a NetworkPolicy as the API server would.
func validateNetworkPolicy(np *networkingv1.NetworkPolicy) field.ErrorList {
	md := field.NewPath("metadata")
	errs := validateName(np.Name, validation.IsDNS1123Subdomain, md.Child("name"))
	errs = append(errs, validateName(np.Namespace, validation.IsDNS1123Label, md.Child("namespace"))...)
	errs = append(errs, validateEnforcement(np.Annotations, md.Child("annotations"))...)
	spec := field.NewPath("spec")
	errs = append(errs, validateSelector(&np.Spec.PodSelector, podLabels, spec.Child("podSelector"))...)
	for i, rule := range np.Spec.Ingress {
		p := spec.Child("ingress").Index(i)
		errs = append(errs, validatePorts(rule.Ports, p.Child("ports"))...)
		errs = append(errs, validatePeers(rule.From, p.Child("from"))...)
	}
	for i, rule := range np.Spec.Egress {
		p := spec.Child("egress").Index(i)
		errs = append(errs, validatePorts(rule.Ports, p.Child("ports"))...)
		errs = append(errs, validatePeers(rule.To, p.Child("to"))...)
	}
	pt := spec.Child("policyTypes")
	if len(np.Spec.PolicyTypes) > 2 {
		errs = append(errs, field.TooMany(pt, len(np.Spec.PolicyTypes), 2))
	}
	// Like the API server, repeated types are not an error.
	for i, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress:
		default:
			errs = append(errs, field.NotSupported(pt.Index(i), t, []string{"Ingress", "Egress"}))
		}
	}
	return errs
}

// validateName applies a name rule; an empty name is "Required".
func validateName(name string, rule func(string) []string, path *field.Path) field.ErrorList {
	if name == "" {
		return field.ErrorList{field.Required(path, "")}
	}
	var errs field.ErrorList
	for _, msg := range rule(name) {
		errs = append(errs, field.Invalid(path, name, msg))
	}
	return errs
}

// selectorSide says whose labels a selector is matched against.
type selectorSide bool

const (
	podLabels       selectorSide = false
	namespaceLabels selectorSide = true
)

// validateSelector checks keys, operators and the values rule of each
// operator (In/NotIn need values, Exists/DoesNotExist must have none), and,
// beyond the API server, that a reserved bireme.io/ key is one Bireme sets
// on that side (identity.CheckSelectorKey): a selector on a label that
// never exists selects nothing, which for a podSelector isolates nothing.
func validateSelector(sel *metav1.LabelSelector, side selectorSide, path *field.Path) field.ErrorList {
	errs := metav1validation.ValidateLabelSelector(sel, metav1validation.LabelSelectorValidationOptions{}, path)
	keys := slices.Sorted(maps.Keys(sel.MatchLabels))
	for _, k := range keys {
		if err := identity.CheckSelectorKey(k, bool(side)); err != nil {
			errs = append(errs, field.Invalid(path.Child("matchLabels"), k, err.Error()))
		}
	}
	for i, e := range sel.MatchExpressions {
		if err := identity.CheckSelectorKey(e.Key, bool(side)); err != nil {
			errs = append(errs, field.Invalid(path.Child("matchExpressions").Index(i).Child("key"), e.Key, err.Error()))
		}
	}
	return errs
}

// validateProtocol accepts "" (meaning TCP), TCP, UDP and SCTP, case-sensitively
// as the API server does.
func validateProtocol(p corev1.Protocol, path *field.Path) field.ErrorList {
	switch p {
	case "", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		return nil
	}
	return field.ErrorList{field.NotSupported(path, p, []string{"TCP", "UDP", "SCTP"})}
}

// validatePorts checks each NetworkPolicyPort: protocol, a port number or
// IANA port name, and endPort (only with a numeric port, >= port).
func validatePorts(ports []networkingv1.NetworkPolicyPort, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i, port := range ports {
		p := path.Index(i)
		if port.Protocol != nil {
			errs = append(errs, validateProtocol(*port.Protocol, p.Child("protocol"))...)
		}
		if port.Port != nil {
			if port.Port.Type == intstr.Int {
				for _, msg := range validation.IsValidPortNum(int(port.Port.IntVal)) {
					errs = append(errs, field.Invalid(p.Child("port"), port.Port.IntVal, msg))
				}
			} else {
				for _, msg := range validation.IsValidPortName(port.Port.StrVal) {
					errs = append(errs, field.Invalid(p.Child("port"), port.Port.StrVal, msg))
				}
			}
		}
		if port.EndPort == nil {
			continue
		}
		ep := p.Child("endPort")
		switch {
		case port.Port == nil:
			errs = append(errs, field.Required(p.Child("port"), "when endPort is specified"))
		case port.Port.Type != intstr.Int:
			errs = append(errs, field.Forbidden(ep, "may not be specified when port is a named port"))
		case *port.EndPort < port.Port.IntVal:
			errs = append(errs, field.Invalid(ep, *port.EndPort, fmt.Sprintf("must be >= port (%d)", port.Port.IntVal)))
		}
		for _, msg := range validation.IsValidPortNum(int(*port.EndPort)) {
			errs = append(errs, field.Invalid(ep, *port.EndPort, msg))
		}
	}
	return errs
}

// validatePeers checks each NetworkPolicyPeer: at least one of the three
// kinds, ipBlock never combined with a selector, valid selectors and CIDRs.
func validatePeers(peers []networkingv1.NetworkPolicyPeer, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i, peer := range peers {
		p := path.Index(i)
		n := 0
		if peer.PodSelector != nil {
			n++
			errs = append(errs, validateSelector(peer.PodSelector, podLabels, p.Child("podSelector"))...)
		}
		if peer.NamespaceSelector != nil {
			n++
			errs = append(errs, validateSelector(peer.NamespaceSelector, namespaceLabels, p.Child("namespaceSelector"))...)
		}
		if peer.IPBlock != nil {
			n++
			errs = append(errs, validateIPBlock(peer.IPBlock, p.Child("ipBlock"))...)
		}
		switch {
		case n == 0:
			errs = append(errs, field.Required(p, "must specify a peer"))
		case n > 1 && peer.IPBlock != nil:
			errs = append(errs, field.Forbidden(p, "may not specify both ipBlock and another peer"))
		}
	}
	return errs
}

// validateIPBlock checks the CIDR and that every except is a CIDR of the
// same family strictly inside it.
func validateIPBlock(b *networkingv1.IPBlock, path *field.Path) field.ErrorList {
	if b.CIDR == "" {
		return field.ErrorList{field.Required(path.Child("cidr"), "")}
	}
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return field.ErrorList{field.Invalid(path.Child("cidr"), b.CIDR, "must be a valid CIDR (e.g. 198.18.0.0/16)")}
	}
	cidr = cidr.Masked()
	var errs field.ErrorList
	for i, e := range b.Except {
		p := path.Child("except").Index(i)
		ex, err := netip.ParsePrefix(e)
		if err != nil {
			errs = append(errs, field.Invalid(p, e, "must be a valid CIDR"))
			continue
		}
		if ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() <= cidr.Bits() || !cidr.Contains(ex.Addr()) {
			errs = append(errs, field.Invalid(p, e, "must be a strict subset of cidr "+cidr.String()))
		}
	}
	return errs
}
