package lab

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/bireme/bireme/policy"
)

// NetNSAnnotation tells an enforcer which network namespace a pod runs in
// (a name under /run/netns); see `bireme enforce`.
const NetNSAnnotation = "bireme.io/netns"

// UnprotectedAnnotation, set to "true" on a pod in the lab's input, keeps
// the pod outside Bireme: it gets its namespace, address and server, but
// the enforcers are not told about it (the store has it without
// NetNSAnnotation), so it presents no identity, as a machine outside the
// cluster would. Applying the pod again without it protects the pod.
const UnprotectedAnnotation = "lab.bireme.io/unprotected"

// The store is a directory the enforcers read (`bireme enforce --store`):
// one YAML file per object, so that a change rewrites exactly one file.
// Files are written under a dot-name and renamed into place, so a reader
// never sees half a file (filestore.LoadDir skips dot-files).

func namespaceFile(name string) string { return "namespace_" + name + ".yaml" }
func podFile(ns, name string) string   { return "pod_" + ns + "_" + name + ".yaml" }
func policyFile(ns, name string) string {
	return "networkpolicy_" + ns + "_" + name + ".yaml"
}
func clusterPolicyFile(name string) string { return "clusternetworkpolicy_" + name + ".yaml" }

func writeObject(dir, file string, obj any) error {
	data, err := yaml.Marshal(obj)
	if err != nil {
		return fmt.Errorf("store %s: %w", file, err)
	}
	// Unchanged objects are not rewritten, so the enforcers do not reload
	// for nothing.
	if old, err := os.ReadFile(filepath.Join(dir, file)); err == nil && bytes.Equal(old, data) {
		return nil
	}
	tmp := filepath.Join(dir, "."+file+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("store %s: %w", file, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, file)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("store %s: %w", file, err)
	}
	return nil
}

func removeObject(dir, file string) error {
	if err := os.Remove(filepath.Join(dir, file)); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// storeNamespace, storePod and storePolicy write one object with its type
// set (objects loaded from files may have it cleared).
func storeNamespace(dir string, ns *corev1.Namespace) error {
	c := ns.DeepCopy()
	c.APIVersion, c.Kind = "v1", "Namespace"
	return writeObject(dir, namespaceFile(c.Name), c)
}

func storePod(dir string, p *corev1.Pod) error {
	c := p.DeepCopy()
	c.APIVersion, c.Kind = "v1", "Pod"
	return writeObject(dir, podFile(c.Namespace, c.Name), c)
}

func storePolicy(dir string, np *networkingv1.NetworkPolicy) error {
	c := np.DeepCopy()
	c.APIVersion, c.Kind = "networking.k8s.io/v1", "NetworkPolicy"
	return writeObject(dir, policyFile(c.Namespace, c.Name), c)
}

func storeClusterPolicy(dir string, p *cnp.ClusterNetworkPolicy) error {
	c := p.DeepCopy()
	c.APIVersion, c.Kind = "policy.networking.k8s.io/v1beta1", "ClusterNetworkPolicy"
	return writeObject(dir, clusterPolicyFile(c.Name), c)
}

// podRef is "namespace/name".
func podRef(p *corev1.Pod) string { return p.Namespace + "/" + p.Name }

// hostName is the topology host of a pod. "_" never appears in Kubernetes
// names, so distinct pods always get distinct hosts.
func hostName(p *corev1.Pod) string { return p.Namespace + "_" + p.Name }

// tcpPorts returns a pod's declared TCP container ports, sorted, without
// duplicates.
func tcpPorts(p *corev1.Pod) []uint16 {
	seen := map[uint16]bool{}
	var out []uint16
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) && cp.ContainerPort > 0 && cp.ContainerPort < 65536 && !seen[uint16(cp.ContainerPort)] {
				seen[uint16(cp.ContainerPort)] = true
				out = append(out, uint16(cp.ContainerPort))
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// merge returns base with every object of update added or replaced (by
// kind, namespace and name).
func merge(base, update policy.Objects) policy.Objects {
	out := policy.Objects{
		Namespaces:      append([]*corev1.Namespace(nil), base.Namespaces...),
		Pods:            append([]*corev1.Pod(nil), base.Pods...),
		Policies:        append([]*networkingv1.NetworkPolicy(nil), base.Policies...),
		ClusterPolicies: append([]*cnp.ClusterNetworkPolicy(nil), base.ClusterPolicies...),
	}
	for _, ns := range update.Namespaces {
		out.Namespaces = replaceOrAppend(out.Namespaces, ns, func(a *corev1.Namespace) bool { return a.Name == ns.Name })
	}
	for _, p := range update.Pods {
		out.Pods = replaceOrAppend(out.Pods, p, func(a *corev1.Pod) bool { return a.Namespace == p.Namespace && a.Name == p.Name })
	}
	for _, np := range update.Policies {
		out.Policies = replaceOrAppend(out.Policies, np, func(a *networkingv1.NetworkPolicy) bool {
			return a.Namespace == np.Namespace && a.Name == np.Name
		})
	}
	for _, cp := range update.ClusterPolicies {
		out.ClusterPolicies = replaceOrAppend(out.ClusterPolicies, cp, func(a *cnp.ClusterNetworkPolicy) bool { return a.Name == cp.Name })
	}
	return out
}

func replaceOrAppend[T any](list []T, v T, same func(T) bool) []T {
	for i, x := range list {
		if same(x) {
			list[i] = v
			return list
		}
	}
	return append(list, v)
}

// without returns base minus every object named in del. Deleting a
// namespace also deletes the pods and policies in it, as Kubernetes does.
func without(base, del policy.Objects) policy.Objects {
	goneNS := map[string]bool{}
	for _, ns := range del.Namespaces {
		goneNS[ns.Name] = true
	}
	gonePod := map[string]bool{}
	for _, p := range del.Pods {
		gonePod[podRef(p)] = true
	}
	gonePol := map[string]bool{}
	for _, np := range del.Policies {
		gonePol[np.Namespace+"/"+np.Name] = true
	}
	var out policy.Objects
	for _, ns := range base.Namespaces {
		if !goneNS[ns.Name] {
			out.Namespaces = append(out.Namespaces, ns)
		}
	}
	for _, p := range base.Pods {
		if !goneNS[p.Namespace] && !gonePod[podRef(p)] {
			out.Pods = append(out.Pods, p)
		}
	}
	for _, np := range base.Policies {
		if !goneNS[np.Namespace] && !gonePol[np.Namespace+"/"+np.Name] {
			out.Policies = append(out.Policies, np)
		}
	}
	goneCluster := map[string]bool{}
	for _, cp := range del.ClusterPolicies {
		goneCluster[cp.Name] = true
	}
	for _, cp := range base.ClusterPolicies {
		if !goneCluster[cp.Name] {
			out.ClusterPolicies = append(out.ClusterPolicies, cp)
		}
	}
	return out
}

// syncStore makes dir hold exactly objs: it writes every object and removes
// the files of objects no longer there. Pods are written as given (the
// caller has set nodeName and the netns annotation).
func syncStore(dir string, objs policy.Objects) error {
	want := map[string]bool{}
	for _, ns := range objs.Namespaces {
		want[namespaceFile(ns.Name)] = true
		if err := storeNamespace(dir, ns); err != nil {
			return err
		}
	}
	for _, np := range objs.Policies {
		want[policyFile(np.Namespace, np.Name)] = true
		if err := storePolicy(dir, np); err != nil {
			return err
		}
	}
	for _, cp := range objs.ClusterPolicies {
		want[clusterPolicyFile(cp.Name)] = true
		if err := storeClusterPolicy(dir, cp); err != nil {
			return err
		}
	}
	for _, p := range objs.Pods {
		want[podFile(p.Namespace, p.Name)] = true
		if err := storePod(dir, p); err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() && !strings.HasPrefix(e.Name(), ".") && !want[e.Name()] {
			if err := removeObject(dir, e.Name()); err != nil {
				return err
			}
		}
	}
	return nil
}
