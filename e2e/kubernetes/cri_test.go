package kubernetes

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bireme/bireme/internal/crienv"
	"github.com/bireme/bireme/internal/kubeenv"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
	"github.com/bireme/bireme/tokens"
)

// TestAgentFindsPodsThroughCRI: an agent with --cri-socket protects pods
// whose sandboxes a real containerd runs (internal/crienv; the test plays
// kubelet: the Pod object, then the sandbox through CRI with kubelet's
// labels, then status.podIP from the sandbox's CNI address). The runtime's
// namespace is still checked against the pod's IP: a pod whose podIP is
// not its sandbox's address is not protected, and its status names the
// runtime's failed check. A NetworkPolicy then refuses what it does not
// allow between the two protected sandboxes.
func TestAgentFindsPodsThroughCRI(t *testing.T) {
	netnstest.RequireNamespaces(t)
	rt := crienv.Start(t, netip.MustParsePrefix("198.19.240.0/24")) // k8s/crinetns uses .241: skips before the API server starts when containerd is missing
	env := kubeenv.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
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
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().ServiceAccounts("x").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	agentKubeconfig := agentCredentials(t, ctx, env, dir)

	// crikubelet creates the Pod, runs its sandbox and reports podIP (the
	// sandbox's address, or lie when set).
	crikubelet := func(name string, lie string) (*netns.NS, netip.Addr) {
		t.Helper()
		obj := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name, Labels: map[string]string{"app": name}},
			Spec: corev1.PodSpec{NodeName: "n1", AutomountServiceAccountToken: new(bool),
				Containers: []corev1.Container{{Name: "main", Image: "none"}}},
		}
		created, err := client.CoreV1().Pods("x").Create(ctx, obj, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sb := rt.RunSandbox(t, ctx, "x", name, string(created.UID))
		if sb.Path == "" {
			t.Fatalf("sandbox of %s: no network namespace path in its status", name)
		}
		ip := sb.IP.String()
		if lie != "" {
			ip = lie
		}
		created.Status.Phase = corev1.PodRunning
		created.Status.PodIP = ip
		created.Status.PodIPs = []corev1.PodIP{{IP: ip}}
		if _, err := client.CoreV1().Pods("x").UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		ns := &netns.NS{Name: filepath.Base(sb.Path)} // /var/run/netns/cni-... is /run/netns/cni-...
		t.Logf("pod x/%s: sandbox %s, address %s, podIP %s, namespace %s", name, sb.ID[:12], sb.IP, ip, sb.Path)
		return ns, sb.IP
	}
	a, _ := crikubelet("a", "")
	b, bAddr := crikubelet("b", "")
	liar, _ := crikubelet("liar", "198.19.240.250" /* in the network, held by no sandbox */)
	serve(t, b)

	n1 := startAgent(t, agentKubeconfig, dir, "n1", ca, rt.Network.String(), "--cri-socket", rt.Endpoint)
	for _, name := range []string{"x/a", "x/b"} {
		n1.waitLog(t, 30*time.Second, "pod="+name, "protected in", "found by the container runtime")
		n1.waitLog(t, 20*time.Second, "workload protected", "pod="+name)
	}
	n1.waitLog(t, 10*time.Second, "pod=x/liar", "not protected", "container runtime", "fails the address check")
	if !protected(t, a) || !protected(t, b) {
		t.Fatal("the agent logged a and b protected, but their sandboxes have no Bireme chains")
	}
	if protected(t, liar) {
		t.Error("the pod whose podIP is not its sandbox's address has Bireme chains in the sandbox")
	}

	if _, ok := eventually(10*time.Second, func() bool { return connects(a, bAddr) }); !ok {
		t.Fatal("a cannot reach b with no policy")
	}
	// Ingress to b only from pods labelled app=c: a is refused.
	createPolicy(t, ctx, client, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "b-from-c"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "c"}},
			}}}},
		},
	})
	if _, ok := eventually(10*time.Second, func() bool { return !connects(a, bAddr) }); !ok {
		t.Fatal("a still reaches b after a policy admitting only app=c")
	}
}
