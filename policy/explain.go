package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/bireme/bireme/identity"
)

// Explanation is the answer to "may FROM connect to TO on PORT?": the
// client's egress decision and the server's ingress decision, each made as
// its node's enforcer would make it. A connection is allowed only if both
// allow. An end given as an address runs no enforcer: it has no decision
// of its own (nil) and is seen by the other end as an anonymous peer.
type Explanation struct {
	From     string    `json:"from"`
	To       string    `json:"to"`
	Port     uint16    `json:"port"`
	PortName string    `json:"portName,omitempty"`
	Protocol string    `json:"protocol"`
	Egress   *Decision `json:"egress,omitempty"`
	Ingress  *Decision `json:"ingress,omitempty"`
	Allowed  bool      `json:"allowed"`
	// AllowedIfEnforced is the verdict if the policies in audit mode were
	// enforced (equal to Allowed when none applies).
	AllowedIfEnforced bool `json:"allowedIfEnforced"`
	// Notes say what else a reader needs to know, such as which cluster
	// decides the side of a remote workload.
	Notes []string `json:"notes,omitempty"`
}

// Endpoint is one end of an explained connection: a workload, with the
// identity its enforcer would sign, or an address (Identity nil), which runs
// no enforcer and is seen by the other end as an anonymous peer.
type Endpoint struct {
	// Ref names the end in the explanation ("namespace/pod" or the address).
	Ref      string
	Identity *identity.Identity
	// Addr is the address the end is seen from: ipBlock rules match it
	// (for a pod too, unless the engine is in the strict identity-only
	// mode); the zero Addr matches no address rule.
	Addr netip.Addr
	// Remote marks a workload of another, federated cluster: its own
	// cluster's enforcer decides its side with that cluster's policy, so
	// Explain decides only the local end's side.
	Remote bool
}

// Explain decides a connection from src to dst as the two ends' enforcers
// would. port is a number or a port name, resolved on dst's identity.
// protocol "" means TCP. Resolving names such as "namespace/pod" into
// Endpoints is the caller's business (k8s.Explain does it for Kubernetes
// objects).
func Explain(e *Engine, src, dst Endpoint, port, protocol string) (*Explanation, error) {
	proto, ok := parseProtocol(protocol)
	if !ok {
		return nil, fmt.Errorf("protocol %q: must be TCP, UDP or SCTP", protocol)
	}
	if src.Identity == nil && dst.Identity == nil {
		return nil, errors.New("at least one end must be a pod: Bireme decides nothing between two addresses")
	}
	x := &Explanation{From: src.Ref, To: dst.Ref, Protocol: proto.String()}
	if n, err := strconv.ParseUint(port, 10, 16); err == nil && n > 0 {
		x.Port = uint16(n)
	} else {
		if dst.Identity == nil {
			return nil, fmt.Errorf("port %q: a named port needs a pod as destination", port)
		}
		n, ok := dst.Identity.NamedPort(port, x.Protocol)
		if !ok {
			return nil, fmt.Errorf("port %q: not a port number (1-65535) nor a %s port name of %s", port, x.Protocol, dst.Ref)
		}
		x.Port, x.PortName = n, port
	}
	x.Allowed, x.AllowedIfEnforced = true, true
	both := func(d *Decision) {
		x.Allowed = x.Allowed && d.Allowed
		if d.IfEnforced != nil {
			x.AllowedIfEnforced = x.AllowedIfEnforced && d.IfEnforced.Allowed
		} else {
			x.AllowedIfEnforced = x.AllowedIfEnforced && d.Allowed
		}
	}
	for _, end := range []Endpoint{src, dst} {
		if end.Remote && end.Identity != nil {
			x.Notes = append(x.Notes, fmt.Sprintf("%s is a workload of cluster %q: its side is decided by that cluster's enforcer and policy, not shown here; "+
				"this side admits it only through a namespaceSelector naming %s: %s (docs/policy.md)",
				end.Ref, end.Identity.Cluster, identity.LabelCluster, end.Identity.Cluster))
		}
	}
	if src.Identity != nil && !src.Remote {
		d := e.Decide(src.Identity, Peer{Identity: dst.Identity, Addr: dst.Addr}, Egress, x.Port, x.Protocol)
		x.Egress = &d
		both(&d)
	}
	if dst.Identity != nil && !dst.Remote {
		d := e.Decide(dst.Identity, Peer{Identity: src.Identity, Addr: src.Addr}, Ingress, x.Port, x.Protocol)
		x.Ingress = &d
		both(&d)
	}
	return x, nil
}

// String renders the explanation for humans, one line per decision and the
// verdict last.
func (x *Explanation) String() string {
	var b strings.Builder
	port := strconv.Itoa(int(x.Port))
	if x.PortName != "" {
		port += " (" + x.PortName + ")"
	}
	fmt.Fprintf(&b, "%s -> %s port %s/%s\n", x.From, x.To, port, x.Protocol)
	audit := func(d *Decision) {
		if d.IfEnforced != nil {
			fmt.Fprintf(&b, "          with audit-mode policies enforced: %s\n", d.IfEnforced.Reason)
		}
	}
	notDecided := func(ref string) string {
		if strings.Count(ref, "/") == 2 {
			return "not decided here (a remote cluster's workload: its own cluster decides)"
		}
		return "not decided (an address runs no enforcer)"
	}
	if x.Egress != nil {
		fmt.Fprintf(&b, "  egress  of %s: %s\n", x.From, x.Egress.Reason)
		audit(x.Egress)
	} else {
		fmt.Fprintf(&b, "  egress  of %s: %s\n", x.From, notDecided(x.From))
	}
	if x.Ingress != nil {
		fmt.Fprintf(&b, "  ingress of %s: %s\n", x.To, x.Ingress.Reason)
		audit(x.Ingress)
	} else {
		fmt.Fprintf(&b, "  ingress of %s: %s\n", x.To, notDecided(x.To))
	}
	for _, n := range x.Notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	verdict := "denied"
	if x.Allowed {
		verdict = "allowed"
	}
	if x.AllowedIfEnforced != x.Allowed {
		if x.AllowedIfEnforced {
			verdict += " (audit mode: would be allowed if enforced)"
		} else {
			verdict += " (audit mode: would be denied if enforced)"
		}
	}
	fmt.Fprintf(&b, "verdict: %s\n", verdict)
	return b.String()
}
