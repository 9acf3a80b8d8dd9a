package filestore

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/policy"
)

// NetNSAnnotation names the network namespace a pod runs in: a name under
// /run/netns (as "ip netns" shows it) or an absolute path such as
// /proc/PID/ns/net.
const NetNSAnnotation = "bireme.io/netns"

// Selection is the outcome of reading a store for one node: the workloads
// to protect and the pods that claim the node but cannot be protected, each
// with the reason, so that a bad annotation is reported instead of ignored.
type Selection struct {
	Workloads []desired.Workload // sorted by NetNS, Ref "namespace/pod"
	Problems  []string
}

// SelectWorkloads returns the pods of objs that run on node and carry the
// bireme.io/netns annotation, with their identities in cluster. Pods of other
// nodes and pods without the annotation are not this node's business and are
// skipped silently; a pod with an unusable annotation, or a second pod
// claiming a namespace already claimed, is skipped with a problem.
func SelectWorkloads(objs policy.Objects, cluster, node string) Selection {
	namespaces := make(map[string]*corev1.Namespace, len(objs.Namespaces))
	for _, ns := range objs.Namespaces {
		namespaces[ns.Name] = ns
	}
	pods := append([]*corev1.Pod(nil), objs.Pods...)
	// Sorted so that which of two pods claiming one netns wins is stable.
	sort.Slice(pods, func(i, j int) bool { return podRef(pods[i]) < podRef(pods[j]) })

	var sel Selection
	claimed := make(map[string]string) // netns path -> pod ref
	for _, pod := range pods {
		if pod.Spec.NodeName != node {
			continue
		}
		annotation, ok := pod.Annotations[NetNSAnnotation]
		if !ok {
			continue
		}
		ref := podRef(pod)
		path, err := NetNSPath(annotation)
		if err != nil {
			sel.Problems = append(sel.Problems, fmt.Sprintf("pod %s: %v", ref, err))
			continue
		}
		if other, dup := claimed[path]; dup {
			sel.Problems = append(sel.Problems, fmt.Sprintf("pod %s: network namespace %s is already claimed by pod %s", ref, path, other))
			continue
		}
		claimed[path] = ref
		// A pod whose namespace is missing from the store gets the identity
		// the API server would give it: no namespace labels but its name.
		ns := namespaces[pod.Namespace]
		sel.Workloads = append(sel.Workloads, desired.Workload{
			Ref:      ref,
			NetNS:    path,
			Identity: k8s.IdentityOf(cluster, ns, pod),
		})
	}
	sort.Slice(sel.Workloads, func(i, j int) bool { return sel.Workloads[i].NetNS < sel.Workloads[j].NetNS })
	return sel
}

// PlacementOf returns where the store runs every pod: its spec.nodeName,
// for the pods of every node (a peer's token is checked against it). A pod
// with no nodeName runs nowhere and is left out, so a token for it is
// refused as unknown.
func PlacementOf(objs policy.Objects) desired.Placement {
	p := make(desired.Placement, len(objs.Pods))
	for _, pod := range objs.Pods {
		if pod.Spec.NodeName != "" {
			p[podRef(pod)] = pod.Spec.NodeName
		}
	}
	return p
}

// NetNSPath turns a bireme.io/netns annotation into the namespace's path: an
// absolute path is kept (cleaned), a bare name is looked up under /run/netns.
func NetNSPath(annotation string) (string, error) {
	switch {
	case annotation == "":
		return "", fmt.Errorf("annotation %s is empty", NetNSAnnotation)
	case filepath.IsAbs(annotation):
		return filepath.Clean(annotation), nil
	case strings.Contains(annotation, "/") || annotation == "." || annotation == "..":
		return "", fmt.Errorf("annotation %s=%q is neither a namespace name nor an absolute path", NetNSAnnotation, annotation)
	default:
		return netns.RunDir + "/" + annotation, nil
	}
}

func podRef(p *corev1.Pod) string {
	ns := p.Namespace
	if ns == "" {
		ns = "default"
	}
	return ns + "/" + p.Name
}
