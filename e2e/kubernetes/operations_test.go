package kubernetes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/bireme/bireme/internal/kubeenv"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
	"github.com/bireme/bireme/tokens"
)

// TestAgentOperations runs, on one API server and two simulated nodes, what
// a cluster does besides pod-to-pod TCP: ClusterIP Services with the test
// playing kube-proxy (DNAT on the node, outside the client's namespace),
// DNS-style UDP decided by the address of the pod the API says holds it,
// and a rolling upgrade of a node's agent under an established connection.
//
//	n1: x/a (app=a, allowed to y/s), x/b (app=b, not allowed), x/e, x/q (DNS client)
//	n2: y/s (app=s: "ok" on 80, echo on 7000), kube-system/dns (k8s-app=kube-dns, UDP 53 and 5353)
//
// The fabric's bridge namespace stands for the nodes' root namespaces: it
// routes the Service range and holds kube-proxy's NAT rules; y/s routes
// its replies to the clients through it, as a node's conntrack would see
// them.
func TestAgentOperations(t *testing.T) {
	netnstest.RequireNamespaces(t)
	env := kubeenv.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	client := env.Client

	dir := t.TempDir()
	ca, err := tokens.NewCA(cluster, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []struct {
		name   string
		labels map[string]string
	}{{"x", map[string]string{"team": "x"}}, {"y", nil}, {"kube-system", nil}} {
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.name, Labels: ns.labels}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		if _, err := client.CoreV1().ServiceAccounts(ns.name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	agentKubeconfig := agentCredentials(t, ctx, env, dir)
	f := newFabric(t)
	a := &pod{namespace: "x", name: "a", node: "n1", labels: map[string]string{"app": "a"}}
	b := &pod{namespace: "x", name: "b", node: "n1", labels: map[string]string{"app": "b"}}
	e := &pod{namespace: "x", name: "e", node: "n1", labels: map[string]string{"app": "e"}}
	q := &pod{namespace: "x", name: "q", node: "n1", labels: map[string]string{"app": "q"}}
	s := &pod{namespace: "y", name: "s", node: "n2", labels: map[string]string{"app": "s"}}
	dns := &pod{namespace: "kube-system", name: "dns", node: "n2", labels: map[string]string{"k8s-app": "kube-dns"}}
	n1 := startAgent(t, agentKubeconfig, dir, "n1", ca, f.network())
	n2 := startAgent(t, agentKubeconfig, dir, "n2", ca, f.network())
	for _, p := range []*pod{a, b, e, q, s, dns} {
		kubelet(t, ctx, client, f, p)
	}
	echo(t, s.ns, 7000)
	udpEcho(t, dns.ns, 53)
	udpEcho(t, dns.ns, 5353)
	udpEcho(t, e.ns, 53)
	for _, w := range []struct {
		agent *agent
		p     *pod
	}{{n1, a}, {n1, b}, {n1, e}, {n1, q}, {n2, s}, {n2, dns}} {
		w.agent.waitLog(t, 20*time.Second, "workload protected", "pod="+w.p.ref())
	}

	// y/s admits x/a only (namespace team=x, app=a), on http and 7000.
	createPolicy(t, ctx, client, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "s-from-a"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "s"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "x"}},
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}},
				}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptr(intstr.FromString("http"))}, {Port: ptr(intstr.FromInt32(7000))}},
			}},
		},
	})
	if _, ok := eventually(10*time.Second, func() bool { return !connects(b.ns, s.addr) }); !ok {
		t.Fatal("x/b still reaches y/s after s-from-a")
	}

	t.Run("ClusterIP Service", func(t *testing.T) { clusterIPService(t, ctx, client, f, dir, a, b, e, s) })
	parent := t // the new agent outlives the subtest: DNS below needs n2
	t.Run("rolling upgrade", func(t *testing.T) {
		n2 = rollingUpgrade(t, n2, a, b, s, func() *agent {
			return startAgent(parent, agentKubeconfig, dir, "n2", ca, f.network())
		})
	})
	t.Run("DNS-style UDP by address", func(t *testing.T) { dnsByAddress(t, ctx, client, dir, q, e, dns) })
}

// clusterIPService: x/a dials y/s through its Service's cluster IP, which
// the node (the fabric's bridge namespace, playing kube-proxy) translates
// to s's address and target port; y/s's agent accepts the dialed
// destination because the Service selects s, and a's enforcer verifies
// s's proof over the VIP it dialed. Translations no Service vouches for,
// and a relay's source, are refused.
func clusterIPService(t *testing.T, ctx context.Context, client kubernetes.Interface, f *fabric, dir string, a, b, e, s *pod) {
	svc := func(name string, selector map[string]string, port int32, target intstr.IntOrString) netip.Addr {
		t.Helper()
		created, err := client.CoreV1().Services("y").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: name},
			Spec: corev1.ServiceSpec{Selector: selector,
				Ports: []corev1.ServicePort{{Name: "web", Port: port, TargetPort: target}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ip, err := netip.ParseAddr(created.Spec.ClusterIP)
		if err != nil {
			t.Fatalf("Service y/%s: cluster IP %q: %v", name, created.Spec.ClusterIP, err)
		}
		return ip
	}
	// y/s: port 8080 to the pods' port named http (80). y/other selects
	// no pod: a node that sends its VIP to s does it on no Service's behalf.
	vip := netip.AddrPortFrom(svc("s", map[string]string{"app": "s"}, 8080, intstr.FromString("http")), 8080)
	other := netip.AddrPortFrom(svc("other", map[string]string{"app": "nobody"}, 80, intstr.FromInt32(80)), 80)
	target := netip.AddrPortFrom(s.addr, 80)

	// The node routes: the clients reach the Service range and e's
	// address through it, s answers them through it (its conntrack
	// translates the replies back to the VIP).
	gw := f.subnet + ".1"
	run(t, f.bridge, "ip", "addr", "add", gw+"/24", "dev", "br0")
	for _, k := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.br0.send_redirects=0"} {
		run(t, f.bridge, "sysctl", "-qw", k)
	}
	for _, c := range []*pod{a, b} {
		run(t, c.ns, "ip", "route", "add", "198.19.224.0/20", "via", gw)
		run(t, c.ns, "ip", "route", "add", e.addr.String()+"/32", "via", gw)
		run(t, s.ns, "ip", "route", "add", c.addr.String()+"/32", "via", gw)
	}
	// kube-proxy's rule for y/s, and two it would never write: the VIP of
	// a Service that does not select s, and e's own address (a relay
	// placed between a and s sees exactly this: a dialed e, s receives).
	for _, r := range []struct{ from, to netip.AddrPort }{{vip, target}, {other, target}, {netip.AddrPortFrom(e.addr, 80), target}} {
		run(t, f.bridge, "iptables", "-t", "nat", "-A", "PREROUTING", "-d", r.from.Addr().String(), "-p", "tcp",
			"--dport", fmt.Sprint(r.from.Port()), "-j", "DNAT", "--to-destination", r.to.String())
	}

	if took, ok := eventually(20*time.Second, func() bool { return connectsTo(a.ns, vip) }); !ok {
		t.Fatalf("x/a cannot reach y/s through its Service %s (%v)", vip, took)
	} else {
		t.Logf("x/a reaches y/s through %s -> %s", vip, target)
	}
	if connectsTo(b.ns, vip) {
		t.Error("x/b reached y/s through its Service: the policy admits x/a only")
	}
	if connectsTo(a.ns, other) {
		t.Errorf("x/a reached y/s through %s, the VIP of a Service that does not select it", other)
	}
	if connectsTo(a.ns, netip.AddrPortFrom(e.addr, 80)) {
		t.Error("x/a's connection to x/e, redirected to y/s, was admitted")
	}
	n2flows := filepath.Join(dir, "n2.flows.jsonl")
	for _, want := range []string{
		"SYN was sent to " + other.String() + ", arrived at " + target.String() + " (relayed: no Service translates",
		"SYN was sent to " + e.addr.String() + ":80, arrived at " + target.String() + " (relayed: no Service translates",
	} {
		waitFile(t, n2flows, want)
	}

	// A relay on the way that forwards the SYN from its own address (as a
	// compromised backend of the same Service could): the Service vouches
	// for the destination, not for the source.
	snat := []string{"-t", "nat", "-A", "POSTROUTING", "-s", a.addr.String(), "-d", s.addr.String(), "-p", "tcp", "-j", "SNAT", "--to-source", e.addr.String()}
	run(t, f.bridge, "iptables", snat...)
	if connectsTo(a.ns, vip) {
		t.Error("x/a's SYN to the Service, forwarded to y/s from x/e's address, was admitted")
	}
	snat[2] = "-D"
	run(t, f.bridge, "iptables", snat...)
	waitFile(t, n2flows, "arrived from "+e.addr.String())

	// The Service stops selecting s: its VIP no longer leads there.
	obj, err := client.CoreV1().Services("y").Get(ctx, "s", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	obj.Spec.Selector = map[string]string{"app": "nobody"}
	if _, err := client.CoreV1().Services("y").Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if took, ok := eventually(10*time.Second, func() bool { return !connectsTo(a.ns, vip) }); !ok {
		t.Errorf("x/a still reaches y/s through %s %v after the Service stopped selecting it", vip, took)
	}
}

// rollingUpgrade replaces n2's agent as a DaemonSet rolling update does:
// SIGTERM, exit, a new process. An established connection to y/s keeps
// flowing throughout; a new one during the gap does not get through (fail
// closed); once the new agent has taken the rules over, new connections
// are decided again. It returns the new agent.
func rollingUpgrade(t *testing.T, old *agent, a, b, s *pod, start func() *agent) *agent {
	conn, err := a.ns.Dial("tcp", netip.AddrPortFrom(s.addr, 7000).String(), 2*time.Second)
	if err != nil {
		t.Fatal("x/a cannot open its long connection to y/s:7000:", err)
	}
	defer conn.Close()
	exchange := func(when string) {
		t.Helper()
		msg := []byte("data " + when)
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := conn.Write(msg); err != nil {
			t.Fatalf("established connection %s: write: %v", when, err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("established connection %s: read %q, %v", when, got, err)
		}
	}
	exchange("before the upgrade")

	old.stop()
	old.waitLog(t, time.Second, "rules left in place")
	exchange("while no agent runs")
	if connects(a.ns, s.addr) {
		t.Error("a new connection got through while no agent ran on y/s's node (must fail closed)")
	}
	if connects(b.ns, s.addr) {
		t.Error("x/b, which policy refuses, got through while no agent ran on y/s's node")
	}

	next := start()
	next.waitLog(t, 20*time.Second, "workload protected", "pod="+s.ref())
	exchange("after the upgrade")
	if took, ok := eventually(10*time.Second, func() bool { return connects(a.ns, s.addr) }); !ok {
		t.Errorf("x/a cannot reach y/s %v after the new agent started", took)
	} else {
		t.Logf("new connections decided again %v after the new agent protected y/s", took.Round(time.Millisecond))
	}
	if connects(b.ns, s.addr) {
		t.Error("x/b reached y/s after the upgrade")
	}
	if !protected(t, s.ns) {
		t.Error("y/s lost its rules in the upgrade")
	}
	exchange("at the end")
	return next
}

// dnsByAddress: x/q may send UDP to port 53 of pods labelled
// k8s-app=kube-dns in kube-system, and nothing else. UDP carries no
// identity: the agent takes the peer to be the pod the API says holds its
// address, and the flow record says so.
func dnsByAddress(t *testing.T, ctx context.Context, client kubernetes.Interface, dir string, q, e, dns *pod) {
	createPolicy(t, ctx, client, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "q-dns-only"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "q"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}},
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}},
				}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: ptr(corev1.ProtocolUDP), Port: ptr(intstr.FromInt32(53))}},
			}},
		},
	})
	// Refusal comes first: the policy is in force once UDP to e:53 fails.
	if took, ok := eventually(10*time.Second, func() bool { return udpExchange(q.ns, netip.AddrPortFrom(e.addr, 53)) != nil }); !ok {
		t.Fatalf("x/q still reaches x/e:53 over UDP %v after q-dns-only", took)
	}
	if err := udpExchange(q.ns, netip.AddrPortFrom(dns.addr, 53)); err != nil {
		t.Errorf("x/q cannot send DNS to kube-system/dns:53, which q-dns-only allows: %v", err)
		for _, f := range []string{"n1", "n2"} {
			b, _ := os.ReadFile(filepath.Join(dir, f+".flows.jsonl"))
			t.Logf("%s UDP flow records:", f)
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, `"UDP"`) {
					t.Log(line)
				}
			}
		}
	}
	if err := udpExchange(q.ns, netip.AddrPortFrom(dns.addr, 5353)); err == nil {
		t.Error("x/q reached kube-system/dns on UDP 5353; only 53 is allowed")
	}
	if connects(q.ns, e.addr) {
		t.Error("x/q reached x/e over TCP; its egress allows DNS only")
	}
	waitFile(t, filepath.Join(dir, "n1.flows.jsonl"), `"byAddress":true`)
}

func createPolicy(t *testing.T, ctx context.Context, client kubernetes.Interface, np *networkingv1.NetworkPolicy) {
	t.Helper()
	if _, err := client.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// connectsTo is connects to any address and port.
func connectsTo(from *netns.NS, to netip.AddrPort) bool {
	c, err := from.Dial("tcp", to.String(), 700*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 2)
	_, err = io.ReadFull(c, buf)
	return err == nil && string(buf) == "ok"
}

// echo answers every TCP connection to port in ns with what it reads,
// until the connection closes.
func echo(t *testing.T, ns *netns.NS, port int) {
	t.Helper()
	l, err := ns.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// udpEcho answers every datagram to port in ns with the same bytes.
func udpEcho(t *testing.T, ns *netns.NS, port int) {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

// udpExchange sends one datagram from ns to remote and waits up to 700ms
// for its echo; nil when it came back.
func udpExchange(ns *netns.NS, remote netip.AddrPort) error {
	var c *net.UDPConn
	if err := ns.Do(func() (err error) {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(remote))
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	msg := []byte("query")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if !bytes.Equal(buf[:n], msg) {
		return errors.New("wrong echo")
	}
	return nil
}

// waitFile waits up to 15s for path to contain want (flow records are
// written by a goroutine of the enforcer's, shortly after the decision).
func waitFile(t *testing.T, path, want string) {
	t.Helper()
	if _, ok := eventually(15*time.Second, func() bool {
		b, err := os.ReadFile(path)
		return err == nil && strings.Contains(string(b), want)
	}); !ok {
		b, _ := os.ReadFile(path)
		t.Errorf("%s never contained %q; it has:\n%s", path, want, tail(string(b), 20))
	}
}
