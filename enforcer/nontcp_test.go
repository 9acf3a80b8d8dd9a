package enforcer

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/supervisor"
)

// flowLabPods are the workloads of a flowLab: prod/web (app=web) and
// prod/client (app=client), both protected; policies are added per test.
const flowLabPods = `
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {containers: [{name: c}]}
`

// flowLab is three namespaces:
//
//	client 198.18.20.2 ── web 198.18.20.1 | 198.18.21.1 ── ext 198.18.21.2, .3
//
// web and client are protected by one enforcer; ext runs no enforcer (an
// external host). Policy is a policy.Live, so a test can change it.
type flowLab struct {
	web, client, ext *netns.NS
	ids              map[string]*identity.Identity
	live             *policy.Live
	flows            *syncBuffer
	enf              *Enforcer
}

// newFlowLab builds the flowLab with policies (YAML documents after the
// pods) and an enforcer configured by configure (may be nil).
func newFlowLab(t *testing.T, policies string, configure func(*Config)) *flowLab {
	netnstest.RequireNamespaces(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := netnstest.Prefix()
	l := &flowLab{
		web:    netnstest.NewNS(t, p+"-fweb"),
		client: netnstest.NewNS(t, p+"-fcli"),
		ext:    netnstest.NewNS(t, p+"-fext"),
		flows:  &syncBuffer{},
	}
	for _, k := range []struct {
		a, b         *netns.NS
		aIf, bIf     string
		aAddr, bAddr []string
	}{
		{l.web, l.client, p + "fw0", p + "fc0", []string{"198.18.20.1/24"}, []string{"198.18.20.2/24"}},
		{l.web, l.ext, p + "fw1", p + "fe0", []string{"198.18.21.1/24"}, []string{"198.18.21.2/24", "198.18.21.3/24"}},
	} {
		if err := netns.Veth(ctx, k.a, k.aIf, k.b, k.bIf); err != nil {
			t.Fatal(err)
		}
		for _, a := range k.aAddr {
			if err := k.a.Exec(ctx, "ip", "addr", "add", a, "dev", k.aIf); err != nil {
				t.Fatal(err)
			}
		}
		for _, a := range k.bAddr {
			if err := k.b.Exec(ctx, "ip", "addr", "add", a, "dev", k.bIf); err != nil {
				t.Fatal(err)
			}
		}
	}
	l.live = policy.NewLive(compilePolicy(t, policies))
	objs, err := k8s.Decode("pods.yaml", []byte(flowLabPods))
	if err != nil {
		t.Fatal(err)
	}
	l.ids = map[string]*identity.Identity{}
	for _, pod := range objs.Pods {
		l.ids[pod.Name] = k8s.IdentityOf("lab", objs.Namespace(pod.Namespace), pod)
	}

	layout := marks.Layout{}
	cfg := Config{Node: "node1", Tokens: newTokenEngine(t, "lab", "node1"), Policy: l.live, Placement: everyPodOn("node1"),
		Flows: flowlog.NewWriter(l.flows), HandshakeTimeout: 5 * time.Second, Layout: layout}
	if configure != nil {
		configure(&cfg)
	}
	l.enf, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.enf.Close() })
	l.flows.flush = l.enf.flows.flush
	sup := supervisor.New(layout)
	for _, w := range []struct {
		ns  *netns.NS
		pod string
	}{{l.web, "web"}, {l.client, "client"}} {
		if err := l.enf.Attach(ctx, Workload{Identity: l.ids[w.pod], NetNS: w.ns.Path()}); err != nil {
			t.Fatal(err)
		}
		path := w.ns.Path()
		t.Cleanup(func() { _ = sup.Unprotect(context.Background(), path) })
		if err := sup.Protect(ctx, path); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// compilePolicy compiles the flowLab's pods and policies.
func compilePolicy(t *testing.T, policies string) *policy.Engine {
	t.Helper()
	objs, err := k8s.Decode("store.yaml", []byte(flowLabPods+"---\n"+policies))
	if err != nil {
		t.Fatal(err)
	}
	eng, err := k8s.Compile(objs)
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

// udpEcho answers every datagram on addr in ns with the same bytes until
// the test ends.
func udpEcho(t *testing.T, ns *netns.NS, addr string) {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

// udpExchange sends count datagrams from ns (from local, if set) to remote
// on one socket and waits up to 1s for each echo. It returns nil when
// every one came back.
func udpExchange(ns *netns.NS, local, remote string, count int) error {
	var c *net.UDPConn
	err := ns.Do(func() error {
		var laddr *net.UDPAddr
		if local != "" {
			laddr = &net.UDPAddr{IP: net.ParseIP(local)}
		}
		raddr, err := net.ResolveUDPAddr("udp", remote)
		if err != nil {
			return err
		}
		c, err = net.DialUDP("udp", laddr, raddr)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 64)
	for i := range count {
		msg := []byte{'m', byte(i)}
		if _, err := c.Write(msg); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if string(buf[:n]) != string(msg) {
			return errors.New("wrong echo")
		}
	}
	return nil
}

// ping sends one ICMP echo request from ns (source chosen by routing) to
// dst over a raw socket and reports whether the reply came within 1s.
func ping(t *testing.T, ns *netns.NS, dst string) bool {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	id := uint16(time.Now().UnixNano())
	req := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), 0, 1, 'b', 'i', 'r', 'e', 'm', 'e'}
	binary.BigEndian.PutUint16(req[2:], ^foldChecksum(sum16(req, 0)))
	if _, err := pc.WriteTo(req, &net.IPAddr{IP: net.ParseIP(dst)}); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return false // deadline: no reply
		}
		// The raw socket sees every ICMP message; ours is the echo reply
		// (type 0) from dst with our identifier.
		if n >= 8 && buf[0] == 0 && from.String() == dst && binary.BigEndian.Uint16(buf[4:6]) == id {
			return true
		}
	}
}

// records returns the flow records of protocol whose reason contains want.
func recordsOf(rs []flowlog.Record, protocol, want string) []flowlog.Record {
	var out []flowlog.Record
	for _, r := range rs {
		if r.Protocol == protocol && strings.Contains(r.Reason, want) {
			out = append(out, r)
		}
	}
	return out
}

// denyAllIngressWeb isolates web for ingress; udpFromExt then admits UDP
// port 5353 from 198.18.21.2 by address, and udpFromClient UDP port 5354
// from app=client by labels, which UDP cannot prove.
const (
	denyAllIngressWeb = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
`
	udpFromExt = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: udp-from-ext, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 198.18.21.2/32}}]
    ports: [{protocol: UDP, port: 5353}]
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: UDP, port: 5354}]
`
	anythingFromExt = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: anything-from-ext, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 198.18.21.2/32}}]}]
`
)

// TestNonTCPFailsClosed: a workload isolated by policy gets UDP and ICMP
// only where a rule admits them without identity; an unselected workload's
// UDP flows, through the queue once per flow.
func TestNonTCPFailsClosed(t *testing.T) {
	l := newFlowLab(t, denyAllIngressWeb+"---\n"+udpFromExt, nil)
	udpEcho(t, l.web, "198.18.20.1:5353")
	udpEcho(t, l.web, "198.18.21.1:5353")
	udpEcho(t, l.web, "198.18.20.1:5354")
	udpEcho(t, l.web, "198.18.21.1:5355")
	udpEcho(t, l.client, "198.18.20.2:7000")

	t.Run("ipBlock rule admits UDP from its address", func(t *testing.T) {
		if err := udpExchange(l.ext, "198.18.21.2", "198.18.21.1:5353", 3); err != nil {
			t.Fatalf("UDP from the ipBlock address: %v", err)
		}
		rs := recordsOf(l.flows.records(t), "UDP", "UDP: allowed by prod/udp-from-ext ingress rule 0: peer matched by address in 198.18.21.2/32 (no identity for UDP)")
		if len(rs) != 1 || rs[0].Verdict != flowlog.Allow || rs[0].Stage != stageNew || rs[0].PeerAddr == "" {
			t.Errorf("want one allow record for the flow, got %+v", rs)
		}
	})
	t.Run("UDP from another address is refused", func(t *testing.T) {
		if err := udpExchange(l.ext, "198.18.21.3", "198.18.21.1:5353", 1); err == nil {
			t.Fatal("UDP from outside the ipBlock reached the isolated workload")
		}
	})
	t.Run("UDP to a port no rule names is refused", func(t *testing.T) {
		if err := udpExchange(l.ext, "198.18.21.2", "198.18.21.1:5355", 1); err == nil {
			t.Fatal("UDP to a port no rule allows reached the isolated workload")
		}
	})
	t.Run("a label rule cannot admit UDP", func(t *testing.T) {
		if err := udpExchange(l.client, "", "198.18.20.1:5354", 1); err == nil {
			t.Fatal("UDP was admitted by a podSelector rule: UDP carries no identity")
		}
		if rs := recordsOf(l.flows.records(t), "UDP", "denied: UDP has no identity; only ipBlock or peer-less rules admit it"); len(rs) == 0 {
			t.Errorf("no deny record saying why: %+v", l.flows.records(t))
		}
	})
	t.Run("deny-all refuses ICMP", func(t *testing.T) {
		if ping(t, l.ext, "198.18.21.1") {
			t.Fatal("ping reached a workload isolated for ingress")
		}
		if ping(t, l.client, "198.18.20.1") {
			t.Fatal("ping from a protected workload reached a workload isolated for ingress")
		}
		if rs := recordsOf(l.flows.records(t), "ICMP", "denied: ICMP has no identity and no ports"); len(rs) == 0 {
			t.Errorf("no ICMP deny record: %+v", l.flows.records(t))
		}
	})
	t.Run("egress that no policy restricts: ping and its reply", func(t *testing.T) {
		if !ping(t, l.web, "198.18.21.2") {
			t.Fatal("ping from web (egress unrestricted) got no reply")
		}
	})
	t.Run("ICMP error about an allowed flow passes", func(t *testing.T) {
		// Nothing listens on ext:9; ext's port unreachable is RELATED to
		// web's allowed flow and must reach web's socket as a refusal,
		// not be dropped (which would look like a timeout).
		err := udpExchange(l.web, "", "198.18.21.2:9", 1)
		if err == nil || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("want connection refused from the ICMP error, got %v", err)
		}
	})
	t.Run("unselected workload: UDP flows, one decision per flow", func(t *testing.T) {
		before := len(recordsOf(l.flows.records(t), "UDP", "allowed: no policy selects prod/client for ingress"))
		if err := udpExchange(l.web, "", "198.18.20.2:7000", 5); err != nil {
			t.Fatalf("UDP to a workload no policy selects: %v", err)
		}
		after := len(recordsOf(l.flows.records(t), "UDP", "allowed: no policy selects prod/client for ingress"))
		if after-before != 1 {
			t.Errorf("5 datagrams and their echoes of one flow made %d decisions at the server, want 1", after-before)
		}
	})
	t.Run("a port-less ipBlock rule admits ICMP", func(t *testing.T) {
		l.live.Swap(compilePolicy(t, denyAllIngressWeb+"---\n"+anythingFromExt))
		if !ping(t, l.ext, "198.18.21.1") {
			t.Fatal("ping from the ipBlock address refused although a port-less rule admits it")
		}
		if rs := recordsOf(l.flows.records(t), "ICMP", "ICMP: allowed by prod/anything-from-ext ingress rule 0: peer matched by address in 198.18.21.2/32"); len(rs) != 1 {
			t.Errorf("want one ICMP allow record, got %+v", rs)
		}
	})
}

// addressMap is a fixed Addresses.
type addressMap map[netip.Addr]*identity.Identity

func (m addressMap) PodAt(a netip.Addr) *identity.Identity { return m[a] }

// TestNonTCPByAddress: with an address map (the API's pods), a UDP peer is
// the pod holding its address, so a podSelector rule admits UDP from it,
// and only from it, only to the port written; records say byAddress.
func TestNonTCPByAddress(t *testing.T) {
	objs, err := k8s.Decode("pods.yaml", []byte(flowLabPods))
	if err != nil {
		t.Fatal(err)
	}
	client := k8s.IdentityOf("lab", objs.Namespace("prod"), objs.Pods[1])
	l := newFlowLab(t, denyAllIngressWeb+"---\n"+udpFromExt, func(c *Config) {
		c.Addresses = addressMap{netip.MustParseAddr("198.18.20.2"): client}
	})
	udpEcho(t, l.web, "198.18.20.1:5354")
	udpEcho(t, l.web, "198.18.20.1:5353")
	udpEcho(t, l.web, "198.18.21.1:5354")

	if err := udpExchange(l.client, "", "198.18.20.1:5354", 2); err != nil {
		t.Fatalf("UDP from the pod app=client holds the address of, to the port its rule names: %v", err)
	}
	rs := recordsOf(l.flows.records(t), "UDP", "(by address: the peer is the pod the API says holds it")
	if len(rs) != 1 || !rs[0].ByAddress || rs[0].Peer == nil || rs[0].Peer.Pod != "client" || rs[0].Verdict != flowlog.Allow {
		t.Errorf("want one byAddress allow record naming prod/client, got %+v", rs)
	}
	if err := udpExchange(l.client, "", "198.18.20.1:5353", 1); err == nil {
		t.Error("UDP from prod/client to a port its rule does not name was admitted")
	}
	if err := udpExchange(l.ext, "198.18.21.3", "198.18.21.1:5354", 1); err == nil {
		t.Error("UDP from an address no pod holds was admitted by a podSelector rule")
	}
}

// TestParseFlowPacket reads what the non-TCP path decides on, and refuses
// what it cannot read.
func TestParseFlowPacket(t *testing.T) {
	ipv4 := func(proto byte, l4 ...byte) []byte {
		b := []byte{0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2}
		b = append(b, l4...)
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		return b
	}
	ipv6 := func(proto byte, l4 ...byte) []byte {
		b := make([]byte, 40)
		b[0], b[6] = 0x60, proto
		binary.BigEndian.PutUint16(b[4:], uint16(len(l4)))
		return append(b, l4...)
	}
	tests := []struct {
		name, proto, policyProto string
		b                        []byte
		dport                    uint16
		src                      string
	}{
		{"UDP", "UDP", "UDP", ipv4(17, 0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0), 53, "198.18.0.1:12345"},
		{"SCTP", "SCTP", "SCTP", ipv4(132, 0x0f, 0x1c, 0x0f, 0x1c, 0, 0, 0, 0, 0, 0, 0, 0), 3868, "198.18.0.1:3868"},
		{"ICMP", "ICMP", policy.ProtocolICMP, ipv4(1, 8, 0, 0, 0, 0, 1, 0, 1), 0, "198.18.0.1"},
		{"ICMPv6", "ICMPv6", policy.ProtocolICMP, ipv6(58, 128, 0, 0, 0, 0, 1, 0, 1), 0, "::"},
		{"GRE", "IP protocol 47", policy.ProtocolOtherIP, ipv4(47, 0, 0, 8, 0), 0, "198.18.0.1"},
	}
	for _, tt := range tests {
		f, err := parseFlowPacket(tt.b)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if f.name != tt.proto || f.policyProto != tt.policyProto || f.dport != tt.dport || f.endpoint(f.src, f.sport) != tt.src {
			t.Errorf("%s: got %s/%s port %d from %s", tt.name, f.name, f.policyProto, f.dport, f.endpoint(f.src, f.sport))
		}
	}
	for name, b := range map[string][]byte{
		"UDP without its ports": ipv4(17, 0x30),
		"TCP":                   ipv4(6, make([]byte, 20)...),
		"IPv4 fragment":         func() []byte { b := ipv4(17, 0, 1, 0, 2); b[6] = 0x20; return b }(),
		"empty":                 nil,
	} {
		if _, err := parseFlowPacket(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// TestFlowReasons: records say the decision was taken on the address
// alone and, for a denial, what could have allowed it.
func TestFlowReasons(t *testing.T) {
	udp := flowPacket{name: "UDP", ports: true}
	icmp := flowPacket{name: "ICMP"}
	for _, tt := range []struct {
		f         flowPacket
		d         policy.Decision
		byAddress bool
		want      string
	}{
		{udp, policy.Decision{Allowed: true, Policy: "ns/pol", Reason: "allowed by ns/pol ingress rule 0: peer matched by address in 198.18.0.0/15"},
			false, "UDP: allowed by ns/pol ingress rule 0: peer matched by address in 198.18.0.0/15 (no identity for UDP)"},
		{udp, policy.Decision{Allowed: true, Policy: "ns/pol", Reason: "allowed by ns/pol egress rule 0"},
			true, "UDP: allowed by ns/pol egress rule 0 (by address: the peer is the pod the API says holds it; no identity for UDP)"},
		{udp, policy.Decision{Reason: "denied: selected by ns/deny and no rule allows"},
			true, "denied: UDP decided by address, on the pod the API says holds it (selected by ns/deny and no rule allows)"},
		{udp, policy.Decision{Allowed: true, Reason: "allowed: no policy selects ns/a for egress"},
			false, "UDP: allowed: no policy selects ns/a for egress"},
		{udp, policy.Decision{Reason: "denied: selected by ns/deny and no rule allows"},
			false, "denied: UDP has no identity; only ipBlock or peer-less rules admit it (selected by ns/deny and no rule allows)"},
		{icmp, policy.Decision{Reason: "denied: selected by ns/deny and no rule allows"},
			false, "denied: ICMP has no identity and no ports; only rules without ports whose peers are ipBlocks or absent admit it (selected by ns/deny and no rule allows)"},
	} {
		if got := tt.f.reason(tt.d, tt.byAddress); got != tt.want {
			t.Errorf("reason = %q\nwant     %q", got, tt.want)
		}
	}
}
