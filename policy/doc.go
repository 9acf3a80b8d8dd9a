// Package policy decides Kubernetes NetworkPolicy (networking.k8s.io/v1)
// on signed workload identities instead of addresses.
//
// Users bring the Namespace, Pod and NetworkPolicy objects they already have.
// [LoadFiles] and [LoadDir] read them from multi-document YAML or JSON (the
// embedded file store); [Compile] validates them and builds an immutable
// [Engine]; [Engine.Decide] answers "may this local workload talk to this
// peer on this port?" with the verdict and the reason. [Live] holds the
// current Engine and swaps it atomically when [WatchDir] sees a valid change,
// so new connections see new policy at once while a bad edit keeps the last
// good set in force.
//
//	objs, err := policy.LoadDir("/etc/bireme/store")
//	eng, err := policy.Compile(objs)
//	live := policy.NewLive(eng)
//	d := live.Decide(local, policy.Peer{Identity: peer}, policy.Ingress, 80, "TCP")
//	fmt.Println(d.Reason) // "allowed by x/allow-web ingress rule 0"
//
// The semantics are the upstream Kubernetes ones, with two product rules that
// follow from deciding on identities (see docs/policy.md):
//
//   - ipBlock peers match only peers WITHOUT an identity (Peer.Identity ==
//     nil). An identified peer is decided by its signed labels alone; its
//     address carries no trust and never matches an ipBlock.
//   - A peer from another cluster (Identity.Cluster != local.Cluster) never
//     matches a peer that has only a podSelector (that means "pods of the
//     policy's own namespace", which exists only in the local cluster). Peers
//     with a namespaceSelector match on the signed namespace labels of any
//     cluster whose CA the node trusts.
package policy
