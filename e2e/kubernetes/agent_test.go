// Package kubernetes tests `bireme agent` against a real Kubernetes API
// server (internal/kubeenv). The test plays kubelet: it creates Pod objects
// with spec.nodeName, makes each pod's network namespace and a server in
// it, and reports the pod Running with its IP through the status
// subresource; one agent process runs per simulated node.
package kubernetes

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/internal/kubeenv"
	"github.com/bireme/bireme/internal/syncbuf"
	"github.com/bireme/bireme/internal/testbin"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
	"github.com/bireme/bireme/tokens"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

const cluster = "k8s-e2e"

// fabric is the simulated pod network: one bridge namespace every pod's
// namespace is joined to, in a /24 of 198.18.128.0/17 picked at random so
// that a scan of the machine never finds another test's copy of a pod's
// address (the lab's topologies number their subnets from 198.18.1.0).
type fabric struct {
	prefix string
	subnet string // "198.18.X"
	bridge *netns.NS
	next   int
}

func newFabric(t *testing.T) *fabric {
	t.Helper()
	var b [1]byte
	_, _ = rand.Read(b[:])
	f := &fabric{prefix: netnstest.Prefix(), subnet: fmt.Sprintf("198.18.%d", 128+int(b[0])%127), next: 2}
	f.bridge = netnstest.NewNS(t, f.prefix+"-br")
	run(t, f.bridge, "ip", "link", "add", "br0", "type", "bridge")
	run(t, f.bridge, "ip", "link", "set", "br0", "up")
	return f
}

// network is the pods' address range, where every peer runs an enforcer.
func (f *fabric) network() string { return f.subnet + ".0/24" }

// podNS makes a pod's network namespace on the fabric and returns it with
// its address.
func (f *fabric) podNS(t *testing.T, name string) (*netns.NS, netip.Addr) {
	t.Helper()
	ns := netnstest.NewNS(t, f.prefix+"-"+name)
	addr := netip.MustParseAddr(fmt.Sprintf("%s.%d", f.subnet, f.next))
	peer := fmt.Sprintf("v%d", f.next)
	f.next++
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := netns.Cmd(ctx, "ip", "link", "add", "eth0", "netns", ns.Name, "type", "veth", "peer", "name", peer, "netns", f.bridge.Name); err != nil {
		t.Fatal(err)
	}
	run(t, f.bridge, "ip", "link", "set", peer, "master", "br0", "up")
	run(t, ns, "ip", "addr", "add", addr.String()+"/24", "dev", "eth0")
	run(t, ns, "ip", "link", "set", "eth0", "up")
	return ns, addr
}

func run(t *testing.T, ns *netns.NS, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ns.Exec(ctx, name, args...); err != nil {
		t.Fatal(err)
	}
}

// serve answers every connection to port 80 in ns with "ok".
func serve(t *testing.T, ns *netns.NS) {
	t.Helper()
	l, err := ns.Listen("tcp", ":80")
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
			_, _ = c.Write([]byte("ok"))
			c.Close()
		}
	}()
}

// connects reports whether a client in from gets the server's answer at
// to:80. A refused handshake is dropped silently, so refusal shows as a
// timeout.
func connects(from *netns.NS, to netip.Addr) bool {
	c, err := from.Dial("tcp", netip.AddrPortFrom(to, 80).String(), 700*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 2)
	_, err = io.ReadFull(c, buf)
	return err == nil && string(buf) == "ok"
}

// pod is one simulated pod: its API object's name, its namespace and address.
type pod struct {
	namespace, name, node string
	labels                map[string]string
	ns                    *netns.NS
	addr                  netip.Addr
}

func (p *pod) ref() string { return p.namespace + "/" + p.name }

// kubelet plays the node for p: the Pod object, then its network
// namespace and server, then status Running with its IP.
func kubelet(t *testing.T, ctx context.Context, client kubernetes.Interface, f *fabric, p *pod) {
	t.Helper()
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.namespace, Name: p.name, Labels: p.labels},
		Spec: corev1.PodSpec{
			NodeName:                     p.node,
			AutomountServiceAccountToken: new(bool),
			Containers: []corev1.Container{{
				Name: "main", Image: "none",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}},
			}},
		},
	}
	created, err := client.CoreV1().Pods(p.namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.ns, p.addr = f.podNS(t, p.namespace+"-"+p.name)
	serve(t, p.ns)
	created.Status.Phase = corev1.PodRunning
	created.Status.PodIP = p.addr.String()
	created.Status.PodIPs = []corev1.PodIP{{IP: p.addr.String()}}
	if _, err := client.CoreV1().Pods(p.namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// agent is one `bireme agent` process for one simulated node.
type agent struct {
	node string
	log  *syncbuf.Buffer
	// stop sends SIGTERM and waits for the agent to exit (once; the
	// test's cleanup calls it too).
	stop func()
}

func startAgent(t *testing.T, kubeconfig, dir, node string, ca *tokens.CA, podNetwork string, extra ...string) *agent {
	t.Helper()
	bin, err := testbin.Bireme()
	if err != nil {
		t.Fatal(err)
	}
	creds, err := ca.IssueNode(node, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, node+".crt"), filepath.Join(dir, node+".key")
	if err := creds.Save(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	a := &agent{node: node, log: new(syncbuf.Buffer)}
	cmd := exec.Command(bin, "agent", "--node", node, "--kubeconfig", kubeconfig,
		"--cluster", cluster, "--ca-bundle", filepath.Join(dir, "ca.crt"), "--cert", certFile, "--key", keyFile,
		"--identity-networks", podNetwork,
		"--flows", filepath.Join(dir, node+".flows.jsonl"), "--netns-check", "500ms")
	cmd.Args = append(cmd.Args, extra...)
	cmd.Stdout, cmd.Stderr = a.log, a.log
	// The agent dies with the test process, even if the test is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	a.stop = sync.OnceFunc(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("agent %s: %v", node, err)
			}
		case <-time.After(15 * time.Second):
			// SIGQUIT first: the Go runtime writes every goroutine's stack
			// to the log, which says where the agent hung.
			_ = cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-exited:
			case <-time.After(3 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
			t.Errorf("agent %s did not stop within 15s of SIGTERM", node)
		}
		if t.Failed() {
			t.Logf("agent %s log:\n%s", node, a.log.String())
		}
	})
	t.Cleanup(a.stop)
	return a
}

// waitLog waits until the agent logged a line containing every part.
func (a *agent) waitLog(t *testing.T, timeout time.Duration, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(strings.NewReader(a.log.String()))
		for sc.Scan() {
			line, all := sc.Text(), true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("agent %s never logged a line with %q within %v", a.node, parts, timeout)
}

// protected reports whether Bireme's chains are installed in ns.
func protected(t *testing.T, ns *netns.NS) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Output(ctx, "iptables", "-S")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(out), "BIREME-")
}

// eventually waits up to timeout for cond, and reports how long it took.
func eventually(timeout time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > timeout {
			return time.Since(start), false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// maxChangeLag is how soon a change of labels, namespace labels or policy
// must be in force for new connections (issue 12: within a second).
const maxChangeLag = time.Second

// takesEffect measures how soon after a change a new connection sees it.
// A refused handshake shows only as a probe timing out (0.7 s), so one
// probe after another would measure the probe, not the agent: it starts a
// probe every 50 ms, each on its own, and returns the start offset of the
// first one whose outcome is want (a connection opened then already met
// the change). It gives up after timeout.
func takesEffect(timeout time.Duration, want bool, probe func() bool) (time.Duration, bool) {
	start := time.Now()
	found := make(chan time.Duration, 1)
	var wg sync.WaitGroup
	defer wg.Wait() // no probe outlives the measure
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		at := time.Since(start)
		if at > timeout {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if probe() == want {
				select {
				case found <- at:
				default:
				}
			}
		}()
		select {
		case took := <-found:
			return took, true
		case <-tick.C:
		}
	}
	// The last probes may still answer.
	wg.Wait()
	select {
	case took := <-found:
		return took, true
	default:
		return time.Since(start), false
	}
}

// checkLag fails the test unless a change, made just before, reached new
// connections (outcome want) within maxChangeLag; what names the change.
func checkLag(t *testing.T, what string, want bool, probe func() bool) {
	t.Helper()
	took, ok := takesEffect(3*time.Second, want, probe)
	switch {
	case !ok:
		t.Fatalf("%s: not in force for new connections %v later", what, took.Round(time.Millisecond))
	case took > maxChangeLag:
		t.Errorf("%s: in force for new connections after %v, want within %v", what, took.Round(time.Millisecond), maxChangeLag)
	default:
		t.Logf("%s: in force for new connections after %v", what, took.Round(time.Millisecond))
	}
}

// TestAgentFollowsTheAPIServer: reachability between pods on two simulated
// nodes follows the NetworkPolicies, pod labels and namespace labels
// written to the API server; a trusted node claiming a pod the API places
// elsewhere is refused; a deleted pod's rules are removed. The agents run
// with the least privilege the README documents.
func TestAgentFollowsTheAPIServer(t *testing.T) {
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

	createNamespace(t, ctx, client, "x", map[string]string{"team": "x"})
	createNamespace(t, ctx, client, "y", map[string]string{"team": "y"})

	agentKubeconfig := agentCredentials(t, ctx, env, dir)
	f := newFabric(t)
	a := &pod{namespace: "x", name: "a", node: "n1", labels: map[string]string{"app": "a"}}
	b := &pod{namespace: "x", name: "b", node: "n1", labels: map[string]string{"app": "b"}}
	c := &pod{namespace: "y", name: "c", node: "n2", labels: map[string]string{"app": "c"}}
	host := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "host"},
		Spec: corev1.PodSpec{NodeName: "n1", HostNetwork: true, AutomountServiceAccountToken: new(bool),
			Containers: []corev1.Container{{Name: "main", Image: "none"}}},
	}
	if _, err := client.CoreV1().Pods("x").Create(ctx, host, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// One pod exists before the agents start, the others after.
	kubelet(t, ctx, client, f, a)
	n1 := startAgent(t, agentKubeconfig, dir, "n1", ca, f.network())
	n2 := startAgent(t, agentKubeconfig, dir, "n2", ca, f.network())
	kubelet(t, ctx, client, f, b)
	kubelet(t, ctx, client, f, c)
	for _, w := range []struct {
		agent *agent
		p     *pod
	}{{n1, a}, {n1, b}, {n2, c}} {
		// The source found the namespace, then the datapath installed it.
		w.agent.waitLog(t, 20*time.Second, "pod="+w.p.ref(), "protected in "+w.p.ns.Path())
		w.agent.waitLog(t, 20*time.Second, "workload protected", "pod="+w.p.ref())
	}
	n1.waitLog(t, 5*time.Second, "pod=x/host", "hostNetwork")

	// No policy: everyone reaches everyone, through the enforcers.
	for _, pair := range [][2]*pod{{a, c}, {b, c}, {c, a}, {a, b}} {
		if !connects(pair[0].ns, pair[1].addr) {
			t.Errorf("with no policy, %s cannot reach %s", pair[0].ref(), pair[1].ref())
		}
	}
	// No node certificates published (--published-node-certs is off):
	// the first connection between two nodes' pods takes three messages.
	if cr, sr := firstRecords(t, dir, "n1", "n2", a.addr, c.addr); cr.Handshake != flowlog.ThreeMessage || sr.Handshake != flowlog.ThreeMessage {
		t.Errorf("first connection x/a -> y/c: handshakes %q and %q, want three-message on both", cr.Handshake, sr.Handshake)
	}

	// A node the CA trusts but the API server does not place x/a on signs
	// tokens claiming to be x/a: the agents refuse them (node
	// authorization from the API's placement), while the real x/a still
	// connects.
	forger := startForger(t, dir, ca, f)
	if connects(forger, c.addr) {
		t.Error("a pod on node n3 claiming x/a reached y/c; the API places x/a on n1")
	}
	if !connects(a.ns, c.addr) {
		t.Error("the real x/a cannot reach y/c")
	}
	if flows, err := os.ReadFile(filepath.Join(dir, "n2.flows.jsonl")); err != nil || !strings.Contains(string(flows), "wrong-node") {
		t.Errorf("n2's flow records name no wrong-node refusal (err %v)", err)
	}

	// y/c accepts only pods labelled app=a in namespaces labelled team=x.
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "c-from-a"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "c"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "x"}},
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}},
				}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptr(intstr.FromString("http"))}},
			}},
		},
	}
	createPolicy(t, ctx, client, np)
	checkLag(t, "policy c-from-a created: x/b refused", false, func() bool { return connects(b.ns, c.addr) })
	if !connects(a.ns, c.addr) {
		t.Error("x/a cannot reach y/c although c-from-a allows it")
	}
	if !connects(c.ns, a.addr) {
		t.Error("y/c cannot reach x/a: the policy is about c's ingress only")
	}

	// x/b gets a's label: it is allowed now.
	patchLabels(t, ctx, client, b, map[string]string{"app": "a"})
	checkLag(t, "x/b relabelled app=a: allowed", true, func() bool { return connects(b.ns, c.addr) })

	// The admin tiers' CRD, installed while the agents run: they find its
	// API (rechecked every 5 s) without a restart.
	cnps := installClusterNetworkPolicyCRD(t, ctx, env)
	n1.waitLog(t, 20*time.Second, "ClusterNetworkPolicy API now served")
	n2.waitLog(t, 20*time.Second, "ClusterNetworkPolicy API now served")
	createCNP := func(p *cnp.ClusterNetworkPolicy) {
		t.Helper()
		if _, err := cnps.PolicyV1beta1().ClusterNetworkPolicies().Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	deleteCNP := func(name string) {
		t.Helper()
		if err := cnps.PolicyV1beta1().ClusterNetworkPolicies().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// An Admin tier ClusterNetworkPolicy denies app=a pods into y: the
	// NetworkPolicy that allows them cannot override it. Deleted, the
	// NetworkPolicy decides again.
	createCNP(&cnp.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "no-a-into-y"},
		Spec: cnp.ClusterNetworkPolicySpec{
			Tier: cnp.AdminTier, Priority: 10,
			Subject: cnp.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "y"}}},
			Ingress: []cnp.ClusterNetworkPolicyIngressRule{{
				Name: "no-a", Action: cnp.ClusterNetworkPolicyRuleActionDeny,
				From: []cnp.ClusterNetworkPolicyIngressPeer{{Pods: &cnp.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}}}}},
			}},
		},
	})
	checkLag(t, "Admin deny created: x/a refused", false, func() bool { return connects(a.ns, c.addr) })
	if connects(b.ns, c.addr) {
		t.Error("x/b still reaches y/c under the Admin deny")
	}
	if flows, err := os.ReadFile(filepath.Join(dir, "n2.flows.jsonl")); err != nil || !strings.Contains(string(flows), `"tier":"admin"`) ||
		!strings.Contains(string(flows), "denied by ClusterNetworkPolicy no-a-into-y") {
		t.Errorf("n2's flow records name no Admin tier denial by no-a-into-y (err %v)", err)
	}
	deleteCNP("no-a-into-y")
	checkLag(t, "Admin deny deleted: x/a allowed", true, func() bool { return connects(a.ns, c.addr) })

	// The other tiers from the API server, into x (no NetworkPolicy): an
	// Admin Pass that hands y/c's connections on (to no NetworkPolicy,
	// hence allowed) ahead of an Admin Deny of every other peer; then a
	// Baseline default-deny of x that a NetworkPolicy of x opens for y.
	inX := &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "x"}}
	// denyEveryPeerIntoX is a policy of tier whose one rule denies x's
	// pods connections from every namespace.
	denyEveryPeerIntoX := func(name string, tier cnp.Tier, rule string) *cnp.ClusterNetworkPolicy {
		return &cnp.ClusterNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: cnp.ClusterNetworkPolicySpec{
				Tier: tier, Priority: 10,
				Subject: cnp.ClusterNetworkPolicySubject{Namespaces: inX},
				Ingress: []cnp.ClusterNetworkPolicyIngressRule{{
					Name: rule, Action: cnp.ClusterNetworkPolicyRuleActionDeny,
					From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}},
				}},
			},
		}
	}
	n1Flows := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "n1.flows.jsonl"))
		return string(b)
	}
	// n1Recorded waits for n1's records to hold every one of subs
	// (records are written a moment after the decision).
	n1Recorded := func(subs ...string) bool {
		_, ok := eventually(3*time.Second, func() bool {
			flows := n1Flows()
			for _, s := range subs {
				if !strings.Contains(flows, s) {
					return false
				}
			}
			return true
		})
		return ok
	}
	createCNP(&cnp.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "pass-c-into-x"},
		Spec: cnp.ClusterNetworkPolicySpec{
			Tier: cnp.AdminTier, Priority: 1,
			Subject: cnp.ClusterNetworkPolicySubject{Namespaces: inX},
			Ingress: []cnp.ClusterNetworkPolicyIngressRule{{
				Name: "c-decided-below", Action: cnp.ClusterNetworkPolicyRuleActionPass,
				From: []cnp.ClusterNetworkPolicyIngressPeer{{Pods: &cnp.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "c"}}}}},
			}},
		},
	})
	createCNP(denyEveryPeerIntoX("no-peers-into-x", cnp.AdminTier, "none"))
	if took, ok := eventually(3*time.Second, func() bool { return !connects(b.ns, a.addr) }); !ok {
		t.Errorf("x/b still reaches x/a %v after the Admin deny of every peer", took)
	}
	if !connects(c.ns, a.addr) {
		t.Error("y/c, passed by pass-c-into-x, cannot reach x/a")
	}
	if !n1Recorded("denied by ClusterNetworkPolicy no-peers-into-x", "passed by ClusterNetworkPolicy pass-c-into-x") {
		t.Errorf("n1's flow records show no Admin denial by no-peers-into-x or no pass by pass-c-into-x:\n%s", n1Flows())
	}
	deleteCNP("pass-c-into-x")
	deleteCNP("no-peers-into-x")
	createCNP(denyEveryPeerIntoX("x-closed", cnp.BaselineTier, "default-deny"))
	if took, ok := eventually(3*time.Second, func() bool { return !connects(c.ns, a.addr) }); !ok {
		t.Errorf("y/c still reaches x/a %v after the Baseline default-deny", took)
	}
	if !n1Recorded("denied by ClusterNetworkPolicy x-closed (Baseline tier") {
		t.Errorf("n1's flow records show no Baseline denial by x-closed:\n%s", n1Flows())
	}
	openX := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "from-y"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "y"}}}},
			}},
		},
	}
	createPolicy(t, ctx, client, openX)
	if took, ok := eventually(3*time.Second, func() bool { return connects(c.ns, a.addr) }); !ok {
		t.Errorf("y/c still refused by x/a %v after x/from-y opened the Baseline", took)
	}
	if connects(b.ns, a.addr) {
		t.Error("x/b reaches x/a: x/from-y selects x/a and admits only y")
	}
	deleteCNP("x-closed")
	if err := client.NetworkingV1().NetworkPolicies("x").Delete(ctx, "from-y", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	// A NetworkPolicy in audit mode: enforced, it would admit into x only
	// x's pods; audited, y/c still connects and its record says what the
	// policy would do.
	auditX := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "audit-x", Annotations: map[string]string{"bireme.io/enforcement": "audit"}},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}}},
		},
	}
	createPolicy(t, ctx, client, auditX)
	wouldDeny := `"policy":"x/audit-x","rule":-1`
	if took, ok := eventually(5*time.Second, func() bool {
		if !connects(c.ns, a.addr) {
			return false
		}
		for _, line := range strings.Split(n1Flows(), "\n") {
			if strings.Contains(line, `"verdict":"allow"`) && strings.Contains(line, `"wouldDeny":{`) && strings.Contains(line, wouldDeny) {
				return true
			}
		}
		return false
	}); !ok {
		t.Errorf("no connection y/c -> x/a allowed and recorded with wouldDeny %s %v after the audited policy was created", wouldDeny, took)
	}
	if !connects(b.ns, a.addr) {
		t.Error("x/b cannot reach x/a under an audited policy")
	}
	if err := client.NetworkingV1().NetworkPolicies("x").Delete(ctx, "audit-x", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	// Namespace x loses team=x: neither a nor b is allowed any more.
	nsX, err := client.CoreV1().Namespaces().Get(ctx, "x", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsX.Labels["team"] = "other"
	if _, err := client.CoreV1().Namespaces().Update(ctx, nsX, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	checkLag(t, "namespace x lost team=x: x/a refused", false, func() bool { return connects(a.ns, c.addr) })

	// Deleting y/c releases it: its rules go, and nothing checks its
	// connections any more. A pod on a node is deleted in two steps: the
	// API server marks it terminating, the kubelet stops it and removes
	// the object for good (grace period 0), which this test does at once.
	if err := client.CoreV1().Pods("y").Delete(ctx, "c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.CoreV1().Pods("y").Delete(ctx, "c", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	if took, ok := eventually(3*time.Second, func() bool { return !protected(t, c.ns) }); !ok {
		t.Errorf("y/c's rules are still installed %v after the pod was deleted", took)
	}
	if !protected(t, a.ns) {
		t.Error("x/a lost its rules when y/c was deleted")
	}
	if !connects(b.ns, c.addr) {
		t.Error("x/b cannot reach the released y/c's namespace")
	}

	// The namespace is checked against the pod's IP on every reconcile,
	// not only when the API changes: x/a's namespace losing its address
	// (the API still says Running at that IP) releases it; the address
	// back, it is protected there again.
	run(t, a.ns, "ip", "addr", "del", a.addr.String()+"/24", "dev", "eth0")
	if took, ok := eventually(5*time.Second, func() bool { return !protected(t, a.ns) }); !ok {
		t.Errorf("x/a still protected in %s %v after the namespace lost its IP", a.ns.Path(), took)
	}
	n1.waitLog(t, 5*time.Second, "pod=x/a", "not protected: network namespace")
	run(t, a.ns, "ip", "addr", "add", a.addr.String()+"/24", "dev", "eth0")
	if took, ok := eventually(5*time.Second, func() bool { return protected(t, a.ns) }); !ok {
		t.Errorf("x/a not protected again %v after its namespace got its IP back", took)
	}
}

// startForger runs node n3, with credentials from the cluster's CA, as
// `bireme enforce` on a store of its own that places x/a, labels and all,
// on n3 in a namespace on the fabric; it returns that namespace.
func startForger(t *testing.T, dir string, ca *tokens.CA, f *fabric) *netns.NS {
	t.Helper()
	ns, _ := f.podNS(t, "forger")
	store := filepath.Join(dir, "n3-store")
	if err := os.Mkdir(store, 0o755); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}, annotations: {bireme.io/netns: %s}}
spec: {nodeName: n3, containers: [{name: main, image: none, ports: [{name: http, containerPort: 80}]}]}
`, ns.Path())
	if err := os.WriteFile(filepath.Join(store, "store.yaml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	creds, err := ca.IssueNode("n3", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "n3.crt"), filepath.Join(dir, "n3.key")
	if err := creds.Save(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	bin, err := testbin.Bireme()
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{node: "n3", log: new(syncbuf.Buffer)}
	cmd := exec.Command(bin, "enforce", "--node", "n3", "--store", store, "--cluster", cluster,
		"--ca-bundle", filepath.Join(dir, "ca.crt"), "--cert", certFile, "--key", keyFile,
		"--identity-networks", f.network(), "--flows", filepath.Join(dir, "n3.flows.jsonl"))
	cmd.Stdout, cmd.Stderr = a.log, a.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("forging node n3 log:\n%s", a.log.String())
		}
	})
	a.waitLog(t, 20*time.Second, "workload protected", "pod=x/a")
	return ns
}

// agentCredentials gives the agents the least privilege the README
// documents: a service account that may only get, list and watch pods,
// namespaces, services and network policies. It returns a kubeconfig with a token of
// that account.
func agentCredentials(t *testing.T, ctx context.Context, env *kubeenv.Env, dir string) string {
	t.Helper()
	client := env.Client
	const ns, name = "bireme-system", "bireme-agent"
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods", "namespaces", "services"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"policy.networking.k8s.io"}, Resources: []string{"clusternetworkpolicies"}, Verbs: []string{"get", "list", "watch"}},
		},
	}
	if _, err := client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: name}},
	}
	if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.LoadFromFile(env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, auth := range cfg.AuthInfos {
		*auth = clientcmdapi.AuthInfo{Token: tr.Status.Token}
	}
	path := filepath.Join(dir, "agent.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	// The token must be the agent's, not an admin's: it may not write.
	restCfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	agentClient, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agentClient.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "not-allowed"}}, metav1.CreateOptions{}); err == nil {
		t.Fatal("the agent's service account could create a namespace; it must only read")
	}
	return path
}

func patchLabels(t *testing.T, ctx context.Context, client kubernetes.Interface, p *pod, labels map[string]string) {
	t.Helper()
	obj, err := client.CoreV1().Pods(p.namespace).Get(ctx, p.name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	obj.Labels = labels
	if _, err := client.CoreV1().Pods(p.namespace).Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func ptr[T any](v T) *T { return &v }
