package k8s

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/bireme/bireme/policy"
)

// Endpoint resolves one end of a connection to explain: "namespace/pod"
// (a pod of objs, with the identity [IdentityOf] gives it in cluster and
// the address of its status.podIP, if any, which ipBlock rules match),
// "cluster/namespace/pod" (a pod of objs taken as a workload of that other,
// federated cluster: a remote end) or an IP address (an anonymous peer).
func Endpoint(objs policy.Objects, cluster, ref string) (policy.Endpoint, error) {
	if a, err := netip.ParseAddr(ref); err == nil {
		return policy.Endpoint{Ref: a.String(), Addr: a.Unmap()}, nil
	}
	// CLUSTER/NAMESPACE/POD: a workload of another cluster, described by
	// its Pod and Namespace objects in the input.
	remote := ""
	if strings.Count(ref, "/") == 2 {
		remote, ref, _ = strings.Cut(ref, "/")
		if remote == "" || remote == cluster {
			return policy.Endpoint{}, fmt.Errorf("%q: CLUSTER/NAMESPACE/POD names another cluster than the local %q", remote+"/"+ref, cluster)
		}
	}
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return policy.Endpoint{}, fmt.Errorf("%q: want NAMESPACE/POD, CLUSTER/NAMESPACE/POD or an IP address", ref)
	}
	p := objs.Pod(ns, name)
	if p == nil {
		return policy.Endpoint{}, fmt.Errorf("no pod %s/%s in the policy input", ns, name)
	}
	if remote != "" {
		return policy.Endpoint{Ref: remote + "/" + ns + "/" + name, Identity: IdentityOf(remote, objs.Namespace(ns), p), Remote: true}, nil
	}
	ep := policy.Endpoint{Ref: ns + "/" + name, Identity: IdentityOf(cluster, objs.Namespace(ns), p)}
	// The pod's address, when its object has one, is what ipBlock rules
	// match (upstream semantics); a pod without status.podIP matches none.
	if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
		ep.Addr = a.Unmap()
	}
	return ep, nil
}

// Explain is [policy.Explain] with both ends named as [Endpoint] reads them,
// resolved among the objects e was compiled from.
func Explain(e *policy.Engine, cluster, from, to, port, protocol string) (*policy.Explanation, error) {
	src, err := Endpoint(e.Objects(), cluster, from)
	if err != nil {
		return nil, fmt.Errorf("from: %w", err)
	}
	dst, err := Endpoint(e.Objects(), cluster, to)
	if err != nil {
		return nil, fmt.Errorf("to: %w", err)
	}
	return policy.Explain(e, src, dst, port, protocol)
}
