package enforcer

import (
	"net/netip"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/tokens"
)

// Services says which destinations are Kubernetes Service addresses
// (cluster IP and port) and which of them lead to this node's pods; the
// agent passes a live view, swapped when the state changes. Its methods
// run on the packet path, possibly from several queue goroutines at once.
type Services interface {
	// Translates reports whether a SYN the client sent to dialed may
	// arrive at observed, a local pod's address and port: dialed is the
	// address of a Service whose endpoints include that pod and port.
	Translates(dialed, observed netip.AddrPort) bool
	// TargetPort returns the target port of the Service at dst (a number,
	// or the name of a port of each backend pod), and false when dst is
	// no Service address.
	TargetPort(dst netip.AddrPort) (number uint16, name string, ok bool)
}

// Addresses says which pod holds an address, as the API server has it:
// the peer of a UDP or SCTP flow, which carries no identity, is that pod
// (flow records say "by address").
type Addresses interface {
	// PodAt returns the identity of the pod holding addr, or nil.
	PodAt(addr netip.Addr) *identity.Identity
}

// translation is the destination NAT the server side vouches for: a
// Service address translated to one of its local endpoints (nil: none).
func (e *Enforcer) translation() tokens.Translation {
	if e.cfg.Services == nil {
		return nil
	}
	return e.cfg.Services.Translates
}

// serviceFrontend reports whether dst is a Service address: a SYN to it
// carries the workload's token, since its backends are pods.
func (e *Enforcer) serviceFrontend(dst netip.AddrPort) bool {
	if e.cfg.Services == nil {
		return false
	}
	_, _, ok := e.cfg.Services.TargetPort(dst)
	return ok
}

// serverPort is the port the client's egress policy decides on for a
// connection it dialed to remote: the server pod's port. For a Service
// address that is its target port (NetworkPolicy sees connections after
// kube-proxy's translation), a named one resolved on the proven server
// identity; if the name does not resolve, 0, which no port rule matches.
func (e *Enforcer) serverPort(remote netip.AddrPort, server *identity.Identity) uint16 {
	if e.cfg.Services == nil {
		return remote.Port()
	}
	number, name, ok := e.cfg.Services.TargetPort(remote)
	switch {
	case !ok:
		return remote.Port()
	case name == "":
		return number
	case server == nil:
		return 0
	}
	port, _ := server.NamedPort(name, "TCP")
	return port
}

// peerByAddress returns the pod the API says holds addr, for a flow with
// no identity (nil if none, or no address map).
func (e *Enforcer) peerByAddress(addr netip.Addr) *identity.Identity {
	if e.cfg.Addresses == nil {
		return nil
	}
	return e.cfg.Addresses.PodAt(addr.Unmap())
}
