package topology

import (
	"fmt"
	"net/netip"

	"github.com/bireme/bireme/netns"
)

// State is what a running topology is made of, in a form that can be saved
// (it marshals to JSON) and handed to Restore by a later process, for
// example a lab command run after the one that built the lab.
type State struct {
	Prefix string      `json:"prefix"`
	NAT    bool        `json:"nat"`
	Nodes  []NodeState `json:"nodes"`
	Hosts  []HostState `json:"hosts"`
}

// NodeState is a saved node.
type NodeState struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
}

// HostState is a saved host.
type HostState struct {
	Name string     `json:"name"`
	Node string     `json:"node"`
	Addr netip.Addr `json:"addr"`
}

// State returns the topology's current state.
func (t *Topology) State() State {
	s := State{Prefix: t.prefix, NAT: t.nat}
	for _, n := range t.Nodes() {
		s.Nodes = append(s.Nodes, NodeState{Name: n.Name, Index: n.Index})
	}
	for _, h := range t.Hosts() {
		s.Hosts = append(s.Hosts, HostState{Name: h.Name, Node: h.Node, Addr: h.Addr})
	}
	return s
}

// Restore returns the running topology described by s. It checks that every
// namespace of s still exists, and creates nothing.
func Restore(s State) (*Topology, error) {
	if err := checkPrefix(s.Prefix); err != nil {
		return nil, err
	}
	router, err := netns.Open(RouterName(s.Prefix))
	if err != nil {
		return nil, fmt.Errorf("restore topology %s: %w", s.Prefix, err)
	}
	t := &Topology{prefix: s.Prefix, nat: s.NAT, router: router, nodes: map[string]*Node{}, hosts: map[string]*Host{}}
	for _, ns := range s.Nodes {
		if ns.Index < 1 || ns.Index > MaxNodes {
			return nil, fmt.Errorf("restore topology %s: node %q has index %d", s.Prefix, ns.Name, ns.Index)
		}
		n, err := netns.Open(NodeNSName(s.Prefix, ns.Name))
		if err != nil {
			return nil, fmt.Errorf("restore topology %s: %w", s.Prefix, err)
		}
		t.nodes[ns.Name] = &Node{Name: ns.Name, Index: ns.Index, NS: n, Addr: nodeAddr(ns.Index), Subnet: subnet(ns.Index)}
	}
	for _, hs := range s.Hosts {
		if t.nodes[hs.Node] == nil {
			return nil, fmt.Errorf("restore topology %s: host %q on unknown node %q", s.Prefix, hs.Name, hs.Node)
		}
		h, err := netns.Open(HostNSName(s.Prefix, hs.Name))
		if err != nil {
			return nil, fmt.Errorf("restore topology %s: %w", s.Prefix, err)
		}
		t.hosts[hs.Name] = &Host{Name: hs.Name, Node: hs.Node, NS: h, Addr: hs.Addr}
	}
	return t, nil
}
