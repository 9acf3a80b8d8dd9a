// Package desired is the contract between the node agent and its sources:
// what a node should enforce ([State]) and how a source delivers it
// ([Source]).
//
// It lives apart from package agent so that a source (the file store today;
// API server informers, Docker events, federation bundles next) depends on
// these few types only, not on the agent and through it on the enforcer and
// the supervisor: package agent imports the sources' contract, the sources
// do not import the agent.
package desired

import (
	"context"
	"net/netip"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

// State is what a node should enforce, as one source sees it at one moment.
type State struct {
	// Workloads is the complete set of workloads this node protects (not a
	// change): a workload missing from it is released.
	Workloads []Workload
	// Policy is the compiled policy to decide with; nil leaves the policy
	// in force unchanged.
	Policy *policy.Engine
	// Trust is the set of CAs whose nodes this node trusts; nil leaves the
	// trust in force unchanged.
	Trust *tokens.TrustBundle
	// Placement is where the source places every pod it knows, those of
	// other nodes included; nil leaves the placement in force unchanged.
	Placement Placement
	// Services are the cluster's TCP Services as the datapath needs them:
	// which destinations are Service addresses and which lead to this
	// node's pods. nil leaves the Services in force unchanged.
	Services *Services
	// Addresses maps each pod address to the pod that holds it, for the
	// protocols that carry no identity (UDP, SCTP: decided by address).
	// nil leaves the map in force unchanged.
	Addresses Addresses
	// NodeCerts are node certificates the cluster publishes ahead of
	// time, with the addresses of the pods on each node: the tokens
	// engine pre-learns which node key answers at each address, so the
	// first connection there takes the two-message handshake. nil leaves
	// them unchanged.
	NodeCerts *NodeCerts
}

// NodeCerts are the node certificates a source found published, per node
// with the addresses of the pods it places there. They are unverified:
// the tokens engine uses a certificate only once it verifies against the
// trust bundle for the node it is listed under (tokens.NodeHint). A value
// is not changed once delivered.
type NodeCerts struct {
	Nodes []tokens.NodeHint
}

// Services are the cluster's TCP Services (ClusterIP and port) whose
// endpoints a selector picks, as a Source computed them from the API.
// A Services value is not changed once delivered.
type Services struct {
	// Frontends maps each Service address (cluster IP and port, every
	// Service with a selector, cluster-wide) to its target port. A client
	// dialing one sends its token (the backends are pods, which run an
	// enforcer), and decides its egress policy on the target port, the
	// server pod's port, as NetworkPolicy does.
	Frontends map[netip.AddrPort]TargetPort
	// Backends maps a Service address to the address and target port of
	// each pod of this node the Service selects: a SYN the client sent to
	// the Service address may arrive at one of those (kube-proxy
	// translated it on the client's node), and at no other.
	Backends map[netip.AddrPort][]netip.AddrPort
}

// TargetPort is a Service port's targetPort: a number, or the name of a
// container port of each backend pod.
type TargetPort struct {
	Number uint16
	Name   string
}

// Translates reports whether a SYN sent to dialed may arrive at observed,
// a local pod's address and port: dialed is a Service address whose
// endpoints include that pod and port.
func (s *Services) Translates(dialed, observed netip.AddrPort) bool {
	if s == nil {
		return false
	}
	for _, b := range s.Backends[dialed] {
		if b == observed {
			return true
		}
	}
	return false
}

// Frontend returns the target port of the Service at dst, and false when
// dst is no Service address.
func (s *Services) Frontend(dst netip.AddrPort) (TargetPort, bool) {
	if s == nil {
		return TargetPort{}, false
	}
	t, ok := s.Frontends[dst]
	return t, ok
}

// Addresses maps a pod address to the identity of the one pod the API
// says holds it (pods on the host network, and addresses two pods claim,
// are left out). A map is not changed once delivered.
type Addresses map[netip.Addr]*identity.Identity

// Placement maps each pod a source knows to the node it runs on, keyed
// "namespace/pod". A node speaks only for its own workloads: the enforcer
// refuses a peer token of the local trust domain unless its signing node is
// the one the placement gives the pod. A Placement is not changed once
// delivered; a new state brings a new one.
type Placement map[string]string

// NodeOf returns the node the pod runs on, and false when the source does
// not know the pod (or it is not scheduled on any node).
func (p Placement) NodeOf(namespace, pod string) (node string, known bool) {
	node, known = p[namespace+"/"+pod]
	return node, known
}

// Workload is one workload this node protects: where its network namespace
// is and who it is.
type Workload struct {
	// Ref names the workload in logs, e.g. "namespace/pod".
	Ref string
	// NetNS is the absolute path of the workload's network namespace; the
	// datapath keys on it.
	NetNS string
	// Identity is what the enforcer signs for the workload and what policy
	// selects it by.
	Identity *identity.Identity
}

// Source delivers desired states.
type Source interface {
	// Run calls update with the first state as soon as it has one, then
	// with a new state whenever it changes, until ctx ends; then it returns
	// nil. It returns an error when it cannot deliver a first state (the
	// node cannot start) or can deliver no more. update is called from one
	// goroutine at a time and must not block for long.
	Run(ctx context.Context, update func(State)) error
}

// SameWorkloads compares two sorted workload sets by what the datapath
// uses: reference, namespace path and identity. Sources call it to send a
// state only when it changed.
func SameWorkloads(a, b []Workload) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Ref != b[i].Ref || a[i].NetNS != b[i].NetNS || digestOf(a[i].Identity) != digestOf(b[i].Identity) {
			return false
		}
	}
	return true
}

func digestOf(id *identity.Identity) identity.Digest {
	if id == nil {
		return identity.Digest{}
	}
	return id.Digest()
}
