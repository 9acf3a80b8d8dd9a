// Package dockersource is the agent's source of desired state on a bare
// Docker host (`bireme docker`): it lists the engine's running containers,
// follows its event stream, and turns each container that opts in into a
// workload, with the NetworkPolicies of a directory of files (loaded,
// validated and kept as the file store does) as the policy.
//
// A container is a pod to Bireme: its name is the pod name, the label
// bireme.io/namespace its namespace ("default" when absent), its other
// labels the pod's labels, the host the node, and the network namespace of
// its init process (State.Pid) the namespace to protect. So the identities,
// the tokens and the policy semantics are exactly the Kubernetes ones
// ([k8s.IdentityOf] on a Pod built from the container), and `bireme policy
// explain` decides containers as it decides pods.
//
// [Rules.Pod] is the one decision of which container is protected and
// how; the runtime hook (cmd/bireme `docker hook`) makes it too, so a
// container the hook fences at its start is the one the agent then
// protects. The package implements [desired.Source] without importing the
// agent.
package dockersource

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/bireme/bireme/identity"
)

// Labels a container opts in and names itself with. They carry the
// reserved prefix bireme.io/, so none of them becomes an identity label.
const (
	// LabelProtect "true" asks for protection (unless Rules.All).
	LabelProtect = "bireme.io/protect"
	// LabelNamespace is the container's namespace (default "default").
	LabelNamespace = "bireme.io/namespace"
	// LabelServiceAccount is the container's service account (default
	// "default"); policy sees it as bireme.io/service-account.
	LabelServiceAccount = "bireme.io/service-account"
	// LabelPorts names ports for policies that use port names:
	// "http=80,dns=53/UDP" (protocol TCP by default).
	LabelPorts = "bireme.io/ports"
)

// Container is what the source needs of a Docker container.
type Container struct {
	ID   string
	Name string // without Docker's leading "/"
	// Labels are the container's labels (the image's included, as Docker
	// merges them).
	Labels map[string]string
	// NetworkMode is HostConfig.NetworkMode: "bridge", a network name,
	// "host", "none" or "container:ID".
	NetworkMode string
	// Pid is the init process of a running container (State.Pid), 0 when
	// not running.
	Pid int
	// Addresses are the container's addresses on its networks, sorted.
	Addresses []netip.Addr
}

// NetNS is the path of the container's network namespace, through its
// init process; "" when it is not running.
func (c Container) NetNS() string {
	if c.Pid <= 0 {
		return ""
	}
	return "/proc/" + strconv.Itoa(c.Pid) + "/ns/net"
}

// Rules decide which containers are protected, and as what.
type Rules struct {
	// Host is this host's name: the node of its containers.
	Host string
	// All protects every container, labelled bireme.io/protect=true or
	// not (a container labelled bireme.io/protect=false still opts out).
	All bool
}

// Decision is what [Rules.Pod] decided for one container.
type Decision struct {
	// Protect says the container is to be protected as Pod.
	Protect bool
	// Pod is the container as a pod (set whenever the container opted
	// in, also when it cannot be protected, for status and explain).
	Pod *corev1.Pod
	// Status says why, for logs and `bireme docker status`:
	// "protected", "not selected: ...", "refused: ...", "not running".
	Status string
	// Ignored are labels left out of the identity, with the reason.
	Ignored []string
}

// Pod decides one container. A container that opted in but cannot be
// protected is "refused" with the reason: a host-network container shares
// the host's network namespace (rules there would fence the host itself),
// a container:ID one shares another container's (label that one), and a
// name or namespace that is not a valid Kubernetes name cannot be an
// identity.
func (r Rules) Pod(c Container) Decision {
	switch v, ok := c.Labels[LabelProtect]; {
	case ok && v == "false":
		return Decision{Status: "not selected: labelled " + LabelProtect + "=false"}
	case !r.All && v != "true":
		return Decision{Status: "not selected: not labelled " + LabelProtect + "=true"}
	}
	d := Decision{Pod: r.pod(c)}
	d.Ignored = ignoredLabels(c.Labels)
	mode := c.NetworkMode
	switch {
	case mode == "host":
		d.Status = "refused: --network host shares the host's network namespace, which Bireme cannot protect without fencing the host itself; run it on a bridge network"
		return d
	case strings.HasPrefix(mode, "container:"):
		d.Status = fmt.Sprintf("refused: --network %s shares that container's network namespace; label that container instead", mode)
		return d
	}
	if errs := validation.IsDNS1123Subdomain(c.Name); len(errs) > 0 {
		d.Status = fmt.Sprintf("refused: container name %q cannot be a pod name: %s", c.Name, strings.Join(errs, "; "))
		return d
	}
	if errs := validation.IsDNS1123Label(d.Pod.Namespace); len(errs) > 0 {
		d.Status = fmt.Sprintf("refused: label %s=%q is not a namespace name: %s", LabelNamespace, d.Pod.Namespace, strings.Join(errs, "; "))
		return d
	}
	if sa := d.Pod.Spec.ServiceAccountName; len(validation.IsDNS1123Subdomain(sa)) > 0 {
		d.Status = fmt.Sprintf("refused: label %s=%q is not a service account name", LabelServiceAccount, sa)
		return d
	}
	ports, err := parsePorts(c.Labels[LabelPorts])
	if err != nil {
		d.Status = fmt.Sprintf("refused: label %s: %v", LabelPorts, err)
		return d
	}
	d.Pod.Spec.Containers[0].Ports = ports
	if c.Pid <= 0 {
		d.Status = "not running"
		return d
	}
	d.Protect, d.Status = true, "protected"
	return d
}

// pod builds the container's Pod: name, namespace, identity labels, node,
// service account, phase and address.
func (r Rules) pod(c Container) *corev1.Pod {
	ns := c.Labels[LabelNamespace]
	if ns == "" {
		ns = "default"
	}
	sa := c.Labels[LabelServiceAccount]
	if sa == "" {
		sa = "default"
	}
	labels := map[string]string{}
	for k, v := range c.Labels {
		if identity.IsReserved(k) || !validLabel(k, v) {
			continue
		}
		labels[k] = v
	}
	p := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: c.Name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:           r.Host,
			ServiceAccountName: sa,
			Containers:         []corev1.Container{{Name: "main", Image: "docker"}},
		},
	}
	if c.Pid > 0 {
		p.Status.Phase = corev1.PodRunning
	}
	for _, a := range c.Addresses {
		if p.Status.PodIP == "" {
			p.Status.PodIP = a.String()
		}
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a.String()})
	}
	return p
}

// validLabel reports whether a Docker label can be a Kubernetes label:
// only those can be selected by a policy. Docker's own (for example an
// image's "maintainer=Jane <jane@example.com>") often cannot.
func validLabel(k, v string) bool {
	return len(validation.IsQualifiedName(k)) == 0 && len(validation.IsValidLabelValue(v)) == 0
}

// ignoredLabels lists the labels left out of the identity because they
// are not valid Kubernetes labels (reserved bireme.io/ ones are Bireme's
// own settings, not reported).
func ignoredLabels(labels map[string]string) []string {
	var out []string
	for k, v := range labels {
		if !identity.IsReserved(k) && !validLabel(k, v) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// parsePorts reads the bireme.io/ports label: "name=port[/protocol]",
// comma separated.
func parsePorts(s string) ([]corev1.ContainerPort, error) {
	var out []corev1.ContainerPort
	seen := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, rest, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want NAME=PORT[/PROTOCOL]", item)
		}
		if errs := validation.IsValidPortName(name); len(errs) > 0 {
			return nil, fmt.Errorf("%q: port name: %s", item, strings.Join(errs, "; "))
		}
		if seen[name] {
			return nil, fmt.Errorf("%q: port name %s given twice", item, name)
		}
		seen[name] = true
		num, proto, _ := strings.Cut(rest, "/")
		port, err := strconv.ParseUint(num, 10, 16)
		if err != nil || port == 0 {
			return nil, fmt.Errorf("%q: port %q is not a number from 1 to 65535", item, num)
		}
		switch proto = strings.ToUpper(proto); proto {
		case "":
			proto = "TCP"
		case "TCP", "UDP", "SCTP":
		default:
			return nil, fmt.Errorf("%q: protocol %q: want TCP, UDP or SCTP", item, proto)
		}
		out = append(out, corev1.ContainerPort{Name: name, ContainerPort: int32(port), Protocol: corev1.Protocol(proto)})
	}
	return out, nil
}
