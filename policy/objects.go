package policy

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Objects is the input of [Compile]: the Kubernetes objects that policy is
// decided from. The same shape comes from the file store or from informers;
// package k8s decodes and validates them.
type Objects struct {
	Namespaces []*corev1.Namespace
	Pods       []*corev1.Pod
	Policies   []*networkingv1.NetworkPolicy
	// ClusterPolicies are the cluster-wide admin and baseline tiers
	// (sigs.k8s.io/network-policy-api ClusterNetworkPolicy).
	ClusterPolicies []*cnpv1beta1.ClusterNetworkPolicy
}

// Namespace returns the Namespace object called name, or, when the objects
// declare none, a synthesized one with no labels (Kubernetes adds
// kubernetes.io/metadata.name itself; k8s.IdentityOf does the same).
func (o Objects) Namespace(name string) *corev1.Namespace {
	for _, ns := range o.Namespaces {
		if ns.Name == name {
			return ns
		}
	}
	ns := &corev1.Namespace{}
	ns.Name = name
	return ns
}

// Pod returns the pod namespace/name, or nil.
func (o Objects) Pod(namespace, name string) *corev1.Pod {
	for _, p := range o.Pods {
		if p.Namespace == namespace && p.Name == name {
			return p
		}
	}
	return nil
}
