package agent

import (
	"net/netip"
	"sync/atomic"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/identity"
)

// LivePlacement is the pod placement in force: the enforcer asks it, for
// every peer token, which node runs the peer's pod
// (enforcer.Config.Placement), and the agent swaps in each placement the
// source delivers, as it does the policy. Until the first one it knows no
// pod, so every peer token of the local trust domain is refused (fail
// closed); the agent protects nothing before the first state either.
//
// It holds the rest of what the source says about where things run, swapped
// the same way: the cluster's Service addresses (enforcer.Config.Services)
// and which pod holds each address (enforcer.Config.Addresses). Until the
// source delivers them, no destination is a Service address (a SYN to one
// that the client's identity networks do not cover leaves plain; a SYN
// translated to a local pod is refused, endpoint-mismatch) and UDP peers
// are addresses only.
type LivePlacement struct {
	current   atomic.Pointer[desired.Placement]
	services  atomic.Pointer[desired.Services]
	addresses atomic.Pointer[desired.Addresses]
}

// NewLivePlacement returns a LivePlacement that knows no pod yet.
func NewLivePlacement() *LivePlacement { return &LivePlacement{} }

// Swap puts p in force.
func (l *LivePlacement) Swap(p desired.Placement) { l.current.Store(&p) }

// NodeOf returns the node the placement in force runs the pod on, and
// false for a pod it does not know. Safe for concurrent use; it runs on the
// packet path.
func (l *LivePlacement) NodeOf(namespace, pod string) (node string, known bool) {
	p := l.current.Load()
	if p == nil {
		return "", false
	}
	return p.NodeOf(namespace, pod)
}

// SwapServices puts s in force.
func (l *LivePlacement) SwapServices(s *desired.Services) { l.services.Store(s) }

// SwapAddresses puts a in force.
func (l *LivePlacement) SwapAddresses(a desired.Addresses) { l.addresses.Store(&a) }

// Translates reports whether the Services in force translate a SYN sent to
// dialed to observed, a local pod's address and port (enforcer.Services).
func (l *LivePlacement) Translates(dialed, observed netip.AddrPort) bool {
	return l.services.Load().Translates(dialed, observed)
}

// TargetPort returns the target port of the Service at dst, and false when
// dst is no Service address (enforcer.Services).
func (l *LivePlacement) TargetPort(dst netip.AddrPort) (number uint16, name string, ok bool) {
	t, ok := l.services.Load().Frontend(dst)
	return t.Number, t.Name, ok
}

// PodAt returns the identity of the pod holding addr, or nil
// (enforcer.Addresses).
func (l *LivePlacement) PodAt(addr netip.Addr) *identity.Identity {
	a := l.addresses.Load()
	if a == nil {
		return nil
	}
	return (*a)[addr]
}
