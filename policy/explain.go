package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/bireme/bireme/identity"
)

// LoadPaths loads files and directories together: a directory contributes
// the files [LoadDir] would read. Duplicates across all of them are errors.
func LoadPaths(paths ...string) (Objects, error) {
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return Objects{}, fmt.Errorf("read policy input: %w", err)
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		fs, err := storeFiles(p)
		if err != nil {
			return Objects{}, err
		}
		files = append(files, fs...)
	}
	return LoadFiles(files...)
}

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
}

// endpoint is one end of an explained connection.
type endpoint struct {
	ref string
	id  *identity.Identity // nil for an address
	ip  netip.Addr
}

// Explain decides a connection between two ends named "namespace/pod" (pods
// in e's objects, identities built with [IdentityOf] in cluster) or IP
// addresses (anonymous). port is a number or a port name, resolved on the
// destination pod's container ports. protocol "" means TCP.
func Explain(e *Engine, cluster, from, to, port, protocol string) (*Explanation, error) {
	proto, ok := parseProtocol(protocol)
	if !ok {
		return nil, fmt.Errorf("protocol %q: must be TCP, UDP or SCTP", protocol)
	}
	src, err := e.endpoint(cluster, from)
	if err != nil {
		return nil, fmt.Errorf("from: %w", err)
	}
	dst, err := e.endpoint(cluster, to)
	if err != nil {
		return nil, fmt.Errorf("to: %w", err)
	}
	if src.id == nil && dst.id == nil {
		return nil, errors.New("at least one end must be a pod: Bireme decides nothing between two addresses")
	}
	x := &Explanation{From: src.ref, To: dst.ref, Protocol: proto.String()}
	if n, err := strconv.ParseUint(port, 10, 16); err == nil && n > 0 {
		x.Port = uint16(n)
	} else {
		if dst.id == nil {
			return nil, fmt.Errorf("port %q: a named port needs a pod as destination", port)
		}
		n, ok := dst.id.NamedPort(port, x.Protocol)
		if !ok {
			return nil, fmt.Errorf("port %q: not a port number (1-65535) nor a %s port name of %s", port, x.Protocol, dst.ref)
		}
		x.Port, x.PortName = n, port
	}
	x.Allowed = true
	if src.id != nil {
		d := e.Decide(src.id, Peer{Identity: dst.id, Addr: dst.ip}, Egress, x.Port, x.Protocol)
		x.Egress = &d
		x.Allowed = x.Allowed && d.Allowed
	}
	if dst.id != nil {
		d := e.Decide(dst.id, Peer{Identity: src.id, Addr: src.ip}, Ingress, x.Port, x.Protocol)
		x.Ingress = &d
		x.Allowed = x.Allowed && d.Allowed
	}
	return x, nil
}

// endpoint resolves "ns/pod" or an address.
func (e *Engine) endpoint(cluster, s string) (endpoint, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return endpoint{ref: a.String(), ip: a.Unmap()}, nil
	}
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" {
		return endpoint{}, fmt.Errorf("%q: want NAMESPACE/POD or an IP address", s)
	}
	p := e.objs.Pod(ns, name)
	if p == nil {
		return endpoint{}, fmt.Errorf("no pod %s/%s in the policy input", ns, name)
	}
	return endpoint{ref: ns + "/" + name, id: IdentityOf(cluster, e.objs.Namespace(ns), p)}, nil
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
	if x.Egress != nil {
		fmt.Fprintf(&b, "  egress  of %s: %s\n", x.From, x.Egress.Reason)
	} else {
		fmt.Fprintf(&b, "  egress  of %s: not decided (an address runs no enforcer)\n", x.From)
	}
	if x.Ingress != nil {
		fmt.Fprintf(&b, "  ingress of %s: %s\n", x.To, x.Ingress.Reason)
	} else {
		fmt.Fprintf(&b, "  ingress of %s: not decided (an address runs no enforcer)\n", x.To)
	}
	verdict := "denied"
	if x.Allowed {
		verdict = "allowed"
	}
	fmt.Fprintf(&b, "verdict: %s\n", verdict)
	return b.String()
}
