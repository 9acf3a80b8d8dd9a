package identity

import (
	"fmt"
	"strings"
)

// Reserved labels. Policy selects on a workload's service account and
// namespace as if they were labels, so standard NetworkPolicy YAML can name
// them (`podSelector: {matchLabels: {bireme.io/service-account: payments}}`).
// Their values are never read from a labels map: they come from the
// identity's ServiceAccount and Namespace fields, which on a peer are the
// signed "sa" and "ns" claims of its token. A label with the reserved prefix
// that a pod or namespace sets itself is dropped (see [WithoutReserved]):
// Bireme's value always wins, so a pod cannot claim another service account
// by labelling itself.
const (
	// ReservedPrefix is the label key prefix Bireme keeps for itself.
	ReservedPrefix = "bireme.io/"
	// LabelServiceAccount is a pod pseudo-label: the service account the
	// workload runs as.
	LabelServiceAccount = ReservedPrefix + "service-account"
	// LabelNamespace is a pseudo-label of both the pod and its namespace:
	// the namespace's name. On a namespaceSelector it means what
	// LabelKubernetesNamespaceName means.
	LabelNamespace = ReservedPrefix + "namespace"
	// LabelKubernetesNamespaceName is the label the API server itself sets
	// on every namespace (and overwrites when a user sets it). Policy reads
	// it from the Namespace field too, for the same reason as the reserved
	// labels.
	LabelKubernetesNamespaceName = "kubernetes.io/metadata.name"
	// LabelCluster is a namespace pseudo-label: the trust domain (cluster)
	// of the workload, which for a peer is the trust domain of the CA that
	// verified its node, set by the receiver. A namespaceSelector that does
	// not name it matches local workloads only (package policy); naming it
	// is how a policy admits workloads of a federated cluster.
	LabelCluster = ReservedPrefix + "cluster"
)

// IsReserved reports whether a label key belongs to Bireme (prefix
// "bireme.io/"): set from signed facts, never from the labels a workload
// chose.
func IsReserved(key string) bool { return strings.HasPrefix(key, ReservedPrefix) }

// CheckSelectorKey says whether a selector may use key: any key outside the
// reserved prefix, and of the reserved ones only those that exist on that
// side (pod labels: service account and namespace; namespace labels:
// namespace). A selector on any other reserved key could never match, and a
// podSelector that selects nothing isolates nothing: that fails open, so
// it is an error, not a silent no-op.
func CheckSelectorKey(key string, namespaceSide bool) error {
	if !IsReserved(key) {
		return nil
	}
	switch {
	case key == LabelNamespace:
		return nil
	case key == LabelCluster && namespaceSide:
		return nil
	case key == LabelCluster:
		return fmt.Errorf("label %q is a namespace's, not a pod's: select it in a namespaceSelector", key)
	case key == LabelServiceAccount && !namespaceSide:
		return nil
	case key == LabelServiceAccount:
		return fmt.Errorf("label %q is a pod's, not a namespace's: select it in a podSelector", key)
	}
	return fmt.Errorf("label %q: the %s prefix is reserved; the labels Bireme sets are %s (pods), %s (pods and namespaces) and %s (namespaces)",
		key, ReservedPrefix, LabelServiceAccount, LabelNamespace, LabelCluster)
}

// PodLabel returns the value of a pod label as policy sees it: a reserved
// key from the signed fields (absent unless it is a pseudo-label), any other
// from Labels.
func (id *Identity) PodLabel(key string) (string, bool) {
	if IsReserved(key) {
		switch key {
		case LabelServiceAccount:
			return id.ServiceAccount, true
		case LabelNamespace:
			return id.Namespace, true
		}
		return "", false
	}
	v, ok := id.Labels[key]
	return v, ok
}

// NamespaceLabel returns the value of a label of the identity's namespace
// as policy sees it: the namespace's name under LabelNamespace and
// LabelKubernetesNamespaceName, the trust domain under LabelCluster, no
// other reserved key, any other key from NamespaceLabels.
func (id *Identity) NamespaceLabel(key string) (string, bool) {
	if key == LabelNamespace || key == LabelKubernetesNamespaceName {
		return id.Namespace, true
	}
	if key == LabelCluster {
		return id.Cluster, id.Cluster != ""
	}
	if IsReserved(key) {
		return "", false
	}
	v, ok := id.NamespaceLabels[key]
	return v, ok
}

// SelectableLabels returns a new map of the pod labels policy selects on:
// Labels without reserved keys, plus the pseudo-labels. For showing people
// (explain, reports); matching uses [Identity.PodLabel] and allocates
// nothing.
func (id *Identity) SelectableLabels() map[string]string {
	m := withoutReservedCopy(id.Labels)
	m[LabelServiceAccount] = id.ServiceAccount
	m[LabelNamespace] = id.Namespace
	return m
}

// SelectableNamespaceLabels is [Identity.SelectableLabels] for the
// namespace's labels.
func (id *Identity) SelectableNamespaceLabels() map[string]string {
	m := withoutReservedCopy(id.NamespaceLabels)
	m[LabelNamespace] = id.Namespace
	m[LabelKubernetesNamespaceName] = id.Namespace
	if id.Cluster != "" {
		m[LabelCluster] = id.Cluster
	}
	return m
}

// WithoutReserved returns labels without the reserved keys: labels itself
// when it has none (the common case, no copy), else a new map.
func WithoutReserved(labels map[string]string) map[string]string {
	reserved := 0
	for k := range labels {
		if IsReserved(k) {
			reserved++
		}
	}
	if reserved == 0 {
		return labels
	}
	return withoutReservedCopy(labels)
}

// withoutReservedCopy returns a new map of labels' unreserved entries.
func withoutReservedCopy(labels map[string]string) map[string]string {
	out := make(map[string]string, len(labels)+2)
	for k, v := range labels {
		if !IsReserved(k) {
			out[k] = v
		}
	}
	return out
}
