package policy_test

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/bireme/bireme/policy"
)

// TestNonTCPWithoutIdentity decides UDP, SCTP, ICMP and other IP
// protocols as the enforcer asks about them: the peer is an address only
// (no identity is carried outside TCP), so only ipBlock rules and rules
// with no peers can admit it, and ICMP (which has no ports) only a rule
// with no ports.
func TestNonTCPWithoutIdentity(t *testing.T) {
	denyAll := np("x", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress, Egress]")
	udpFromBlock := np("x", "dns", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.5.0/24}}], ports: [{protocol: UDP, port: 53}]}]")
	udpFromAll := np("x", "dns", "  podSelector: {}\n  ingress: [{ports: [{protocol: UDP, port: 53}]}]")
	udpFromPods := np("x", "dns", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}], ports: [{protocol: UDP, port: 53}]}]")
	anyFromBlock := np("x", "all", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.5.0/24}}]}]")
	sctpEgress := np("x", "sctp", "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 198.18.6.0/24}}], ports: [{protocol: SCTP, port: 3868}]}]")
	tests := []struct {
		name     string
		policies []string
		peer     string
		dir      policy.Direction
		port     uint16
		proto    string
		allowed  bool
	}{
		{name: "unselected: UDP allowed", peer: "198.18.9.9", port: 53, proto: "UDP", allowed: true},
		{name: "unselected: ICMP allowed", peer: "198.18.9.9", proto: policy.ProtocolICMP, allowed: true},
		{name: "unselected: other IP protocol allowed", peer: "198.18.9.9", proto: policy.ProtocolOtherIP, allowed: true},
		{name: "deny-all: UDP denied", policies: []string{denyAll}, peer: "198.18.5.1", port: 53, proto: "UDP"},
		{name: "deny-all: SCTP denied", policies: []string{denyAll}, peer: "198.18.5.1", port: 3868, proto: "SCTP"},
		{name: "deny-all: ICMP denied", policies: []string{denyAll}, peer: "198.18.5.1", proto: policy.ProtocolICMP},
		{name: "deny-all: egress ICMP denied", policies: []string{denyAll}, peer: "198.18.5.1", dir: policy.Egress, proto: policy.ProtocolICMP},
		{name: "ipBlock admits UDP from its range", policies: []string{denyAll, udpFromBlock}, peer: "198.18.5.1", port: 53, proto: "UDP", allowed: true},
		{name: "ipBlock: UDP from outside its range denied", policies: []string{denyAll, udpFromBlock}, peer: "198.18.4.1", port: 53, proto: "UDP"},
		{name: "ipBlock: UDP on another port denied", policies: []string{denyAll, udpFromBlock}, peer: "198.18.5.1", port: 54, proto: "UDP"},
		{name: "ipBlock: TCP rule port is not UDP", policies: []string{denyAll, np("x", "tcp", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.5.0/24}}], ports: [{port: 53}]}]")}, peer: "198.18.5.1", port: 53, proto: "UDP"},
		{name: "peer-less rule admits UDP from anywhere", policies: []string{denyAll, udpFromAll}, peer: "203.0.113.7", port: 53, proto: "UDP", allowed: true},
		{name: "selector peers never admit an address", policies: []string{denyAll, udpFromPods}, peer: "198.18.5.1", port: 53, proto: "UDP"},
		{name: "a rule with ports never admits ICMP", policies: []string{denyAll, udpFromBlock}, peer: "198.18.5.1", proto: policy.ProtocolICMP},
		{name: "a port-less ipBlock rule admits ICMP", policies: []string{denyAll, anyFromBlock}, peer: "198.18.5.1", proto: policy.ProtocolICMP, allowed: true},
		{name: "a port-less ipBlock rule: ICMP from outside denied", policies: []string{denyAll, anyFromBlock}, peer: "198.18.4.1", proto: policy.ProtocolICMP},
		{name: "a port-less ipBlock rule admits another IP protocol", policies: []string{denyAll, anyFromBlock}, peer: "198.18.5.1", proto: policy.ProtocolOtherIP, allowed: true},
		{name: "egress SCTP to an ipBlock", policies: []string{denyAll, sctpEgress}, peer: "198.18.6.1", dir: policy.Egress, port: 3868, proto: "SCTP", allowed: true},
		{name: "egress SCTP port is not UDP", policies: []string{denyAll, sctpEgress}, peer: "198.18.6.1", dir: policy.Egress, port: 3868, proto: "UDP"},
		{name: "ICMPv6 is ICMP", policies: []string{denyAll, anyFromBlock}, peer: "198.18.5.1", proto: "ICMPv6", allowed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := compileWith(t, tt.policies...)
			objs := e.Objects()
			local := ident(t, objs, "x/a")
			d := e.Decide(local, peerOf(t, objs, tt.peer), tt.dir, tt.port, tt.proto)
			if d.Allowed != tt.allowed {
				t.Fatalf("allowed = %v, want %v (%s)", d.Allowed, tt.allowed, d.Reason)
			}
		})
	}
}

// TestICMPIgnoresPort: ICMP has no port, so whatever number a caller
// passes decides the same (and shares one cache entry).
func TestICMPIgnoresPort(t *testing.T) {
	e := compileWith(t, np("x", "p", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.5.0/24}}], ports: [{protocol: TCP}]}]"))
	objs := e.Objects()
	local := ident(t, objs, "x/a")
	for _, port := range []uint16{0, 8, 80} {
		if d := e.Decide(local, peerOf(t, objs, "198.18.5.1"), policy.Ingress, port, policy.ProtocolICMP); d.Allowed {
			t.Errorf("port %d: ICMP allowed by a rule with ports: %s", port, d.Reason)
		}
	}
}

// TestNoPolicyPortNamesICMP: ICMP is a protocol decisions know, not one a
// NetworkPolicy may name; the compiler refuses it as the API server does.
func TestNoPolicyPortNamesICMP(t *testing.T) {
	objs := parseObjects(t, fixtureYAML)
	objs.Policies = append(objs.Policies, parseObjects(t, np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{protocol: TCP, port: 1}]}]")).Policies...)
	icmp := corev1.Protocol("ICMP")
	objs.Policies[0].Spec.Ingress[0].Ports[0].Protocol = &icmp
	if _, err := policy.Compile(objs); err == nil {
		t.Fatal("a policy port with protocol ICMP compiled")
	}
}
