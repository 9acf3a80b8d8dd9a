package k8s

import (
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/bireme/bireme/identity"
)

// namespaceNameLabel is the label the API server puts on every namespace.
const namespaceNameLabel = identity.LabelKubernetesNamespaceName

// IdentityOf builds the identity a pod is given in tokens: its labels, its
// namespace's labels plus kubernetes.io/metadata.name (as the API server
// adds), its service account ("default" when unset) and its named container
// ports (regular containers and restartable init containers, i.e. sidecars;
// protocol defaulted to TCP). ns may be nil (a namespace with no labels).
// The result shares nothing with the inputs.
//
// Labels with the reserved prefix bireme.io/ that the pod or namespace set
// themselves are left out: the API server accepts them, so refusing them
// here would leave an informer-fed node unable to protect such a pod (and a
// file store unable to load any change while one is there). Policy sees
// Bireme's own values instead, derived from the service account and the
// namespace (see identity.LabelServiceAccount).
func IdentityOf(cluster string, ns *corev1.Namespace, pod *corev1.Pod) *identity.Identity {
	nsName := pod.Namespace
	if nsName == "" {
		nsName = "default"
	}
	id := &identity.Identity{
		Cluster:         cluster,
		Namespace:       nsName,
		Pod:             pod.Name,
		ServiceAccount:  pod.Spec.ServiceAccountName,
		Labels:          maps.Clone(identity.WithoutReserved(pod.Labels)),
		NamespaceLabels: map[string]string{},
	}
	if id.ServiceAccount == "" {
		id.ServiceAccount = pod.Spec.DeprecatedServiceAccount
	}
	if id.ServiceAccount == "" {
		id.ServiceAccount = "default"
	}
	if ns != nil {
		maps.Copy(id.NamespaceLabels, identity.WithoutReserved(ns.Labels))
	}
	id.NamespaceLabels[namespaceNameLabel] = nsName
	add := func(c corev1.Container) {
		for _, p := range c.Ports {
			if p.Name == "" {
				continue
			}
			proto := string(p.Protocol)
			if proto == "" {
				proto = string(corev1.ProtocolTCP)
			}
			id.Ports = append(id.Ports, identity.Port{Name: p.Name, Protocol: proto, Port: uint16(p.ContainerPort)})
		}
	}
	for _, c := range pod.Spec.Containers {
		add(c)
	}
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			add(c)
		}
	}
	return id
}

// IgnoredReservedLabels returns the labels with the reserved prefix
// bireme.io/ that pod set itself, as sorted "key=value": labels
// [IdentityOf] leaves out. A pod that claims, say, another service account
// this way is worth an auditor's attention even though it gains nothing.
func IgnoredReservedLabels(pod *corev1.Pod) []string {
	var out []string
	for k, v := range pod.Labels {
		if identity.IsReserved(k) {
			out = append(out, k+"="+v)
		}
	}
	slices.Sort(out)
	return out
}
