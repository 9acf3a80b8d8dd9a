// Package identity defines what a workload is to Bireme: the names, labels
// and ports that tokens sign and that policy selects on.
//
// It is the one vocabulary shared by tokens/ (which signs and verifies an
// Identity), policy/ (which decides on a pair of them) and enforcer/ (which
// carries them through the TCP handshake). It has no dependencies of its own.
package identity

import (
	"crypto/sha256"
	"encoding/binary"
	"sort"
	"strings"
)

// Identity is a workload's signed identity: everything a policy may select on.
//
// Labels and NamespaceLabels are both carried because a NetworkPolicy's
// namespaceSelector is decided from the peer's token, not from an address.
type Identity struct {
	// Cluster is the trust domain. A CA vouches for exactly one cluster.
	Cluster string `json:"cluster"`
	// Namespace and Pod name the workload inside its cluster.
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	// ServiceAccount is the workload's Kubernetes service account.
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// Labels are the pod's labels; NamespaceLabels its namespace's labels.
	Labels          map[string]string `json:"labels,omitempty"`
	NamespaceLabels map[string]string `json:"namespaceLabels,omitempty"`
	// Ports are the pod's named container ports, so that a peer's egress
	// policy can resolve a named port against this (destination) workload.
	Ports []Port `json:"ports,omitempty"`
}

// Port is a named container port.
type Port struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"` // "TCP", "UDP" or "SCTP"
	Port     uint16 `json:"port"`
}

// String returns "cluster/namespace/pod", the form used in logs and flow records.
func (id *Identity) String() string {
	if id == nil {
		return "<none>"
	}
	return id.Cluster + "/" + id.Namespace + "/" + id.Pod
}

// Ref returns "namespace/pod".
func (id *Identity) Ref() string {
	if id == nil {
		return ""
	}
	return id.Namespace + "/" + id.Pod
}

// NamedPort resolves a named port for protocol proto ("" means TCP).
func (id *Identity) NamedPort(name, proto string) (uint16, bool) {
	if proto == "" {
		proto = "TCP"
	}
	for _, p := range id.Ports {
		pp := p.Protocol
		if pp == "" {
			pp = "TCP"
		}
		if p.Name == name && strings.EqualFold(pp, proto) {
			return p.Port, true
		}
	}
	return 0, false
}

// Digest is a SHA-256 over a canonical encoding of every field. Two identities
// with the same digest are the same identity; caches key on it.
type Digest [32]byte

// Digest computes the identity's canonical digest.
func (id *Identity) Digest() Digest {
	h := sha256.New()
	var n [4]byte
	put := func(s string) {
		binary.BigEndian.PutUint32(n[:], uint32(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	putMap := func(m map[string]string) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		binary.BigEndian.PutUint32(n[:], uint32(len(keys)))
		h.Write(n[:])
		for _, k := range keys {
			put(k)
			put(m[k])
		}
	}
	put(id.Cluster)
	put(id.Namespace)
	put(id.Pod)
	put(id.ServiceAccount)
	putMap(id.Labels)
	putMap(id.NamespaceLabels)
	ports := append([]Port(nil), id.Ports...)
	sort.Slice(ports, func(i, j int) bool {
		if ports[i].Name != ports[j].Name {
			return ports[i].Name < ports[j].Name
		}
		return ports[i].Protocol < ports[j].Protocol
	})
	binary.BigEndian.PutUint32(n[:], uint32(len(ports)))
	h.Write(n[:])
	for _, p := range ports {
		put(p.Name)
		put(p.Protocol)
		var port [2]byte
		binary.BigEndian.PutUint16(port[:], p.Port)
		h.Write(port[:])
	}
	var d Digest
	h.Sum(d[:0])
	return d
}

// Clone returns a deep copy, so a cached identity is never mutated through
// a caller's reference.
func (id *Identity) Clone() *Identity {
	if id == nil {
		return nil
	}
	c := *id
	c.Labels = cloneMap(id.Labels)
	c.NamespaceLabels = cloneMap(id.NamespaceLabels)
	c.Ports = append([]Port(nil), id.Ports...)
	return &c
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
