// Package policy decides Kubernetes NetworkPolicy (networking.k8s.io/v1),
// with the ClusterNetworkPolicy admin and baseline tiers around it
// (sigs.k8s.io/network-policy-api) and audit mode, on signed workload
// identities instead of addresses.
//
// Users bring the Namespace, Pod and NetworkPolicy objects they already have;
// this package works on them as typed objects and reads no files. Package
// k8s decodes and validates them (and k8s/filestore reads them from a
// directory); [Compile] builds an immutable [Engine]; [Engine.Decide]
// answers "may this local workload talk to this peer on this port?" with
// the verdict and the reason; [Explain] answers it for both ends of a
// connection. [Live] holds the current Engine and swaps it atomically when
// a source of policy delivers a valid change, so new connections see new
// policy at once while a bad edit keeps the last good set in force.
//
//	eng, err := k8s.Compile(objs) // validates, then policy.Compile
//	live := policy.NewLive(eng)
//	d := live.Decide(local, policy.Peer{Identity: peer}, policy.Ingress, 80, "TCP")
//	fmt.Println(d.Reason) // "allowed by x/allow-web ingress rule 0"
//
// The semantics are the upstream Kubernetes ones, with two product rules that
// follow from deciding on identities (see docs/policy.md):
//
//   - ipBlock peers (and ClusterNetworkPolicy networks) match the peer's
//     observed address, identified or not, as upstream Kubernetes does;
//     the decision says "matched by address". [Options.IPBlockIdentityOnly]
//     is the strict mode, where they match only peers WITHOUT an identity.
//   - A peer from another cluster (Identity.Cluster != local.Cluster) never
//     matches a peer that has only a podSelector (that means "pods of the
//     policy's own namespace", which exists only in the local cluster). A
//     peer with a namespaceSelector matches a workload of another cluster
//     only if the selector names the reserved namespace label
//     bireme.io/cluster (the peer's verified trust domain, set by the
//     receiver): without it, it matches local workloads only, and the
//     namespace labels a federated cluster signs count only next to it.
package policy
