package kubernetes

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/bireme/bireme/internal/kubeenv"
)

// Issue 12's scale goals for one agent on a cluster of 10,000 pods (most
// on other nodes) and 1,000 NetworkPolicies.
const (
	scalePods     = 10000
	scalePolicies = 1000
	scaleNodes    = 100 // pods spread over this many nodes; the agent is one of them
	maxAgentRSS   = 150 << 20
	maxPolicyLag  = time.Second
)

// TestAgentAtScale measures an agent on a large cluster: memory, time to
// its first complete state, and time from a policy change to the policy
// being in force. The agent runs as the shipped DaemonSet runs it
// (deploy/kubernetes/, installed as TestShippedManifestsRun installs it):
// its pod from the template, the template's arguments (node credentials
// through a CSR to the shipped signer, published node certificates, the
// trust bundles directory, signed and rotated flow records), its service
// account's RBAC, its capabilities. It creates 10,000 pods, so it runs
// only when asked: BIREME_K8S_SCALE=1 (make k8s-scale).
func TestAgentAtScale(t *testing.T) {
	if os.Getenv("BIREME_K8S_SCALE") == "" {
		t.Skip("skipping: creates 10,000 pods and 1,000 policies (about a minute); set BIREME_K8S_SCALE=1 or run make k8s-scale")
	}
	requirePodRunner(t)
	env := kubeenv.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	started := time.Now()
	populate(t, ctx, env.Client)
	t.Logf("created %d pods and %d network policies in %v", scalePods, scalePolicies, time.Since(started).Round(time.Second))

	dir := t.TempDir()
	sh := installShipped(t, ctx, env, dir, "198.18.0.0/15")
	// n0 holds a hundredth of the pods (populate); its agent is the
	// DaemonSet's pod there.
	if _, err := env.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n0"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	agentPod := podFromTemplate(t, ctx, env.Client, shippedNamespace, "bireme-agent-n0", "n0", sh.ds.Spec.Template)
	ag := runContainer(t, ctx, env.Client, env, agentPod, filepath.Join(dir, "agent"))
	for _, flag := range []string{"--node-credentials=csr", "--published-node-certs"} {
		if !slices.Contains(ag.args, flag) {
			t.Errorf("the shipped DaemonSet no longer passes %s: update this test's description and docs/benchmarks.md", flag)
		}
	}
	log := ag.out.log

	waitFor := func(what string, timeout time.Duration, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > timeout {
				t.Fatalf("%s: not within %v", what, timeout)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return time.Since(start)
	}
	waitFor("node certificate issued", 2*time.Minute, func() bool { return strings.Contains(log.String(), "node certificate issued") })
	issued := time.Since(ag.started)
	waitFor("agent started", 2*time.Minute, func() bool { return strings.Contains(log.String(), "msg=started") })
	converge := time.Since(ag.started)
	sh.signer.out.waitLog(t, 5*time.Second, "signed", "node=n0")
	time.Sleep(3 * time.Second) // settle: the first state's garbage collected
	// unshare became bireme (sh, setpriv and bireme each exec the next):
	// the RSS read is the agent's.
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", ag.pid)); err != nil || exe != ag.bin {
		t.Fatalf("process %d is %q (%v), not the agent %s", ag.pid, exe, err, ag.bin)
	}
	rss := rssOf(t, ag.pid)

	// A policy change: the time until the agent has compiled and put in
	// force the 1,001st policy.
	np := scalePolicy(0, scalePolicies)
	changed := time.Now()
	if _, err := env.Client.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("policies=%d", scalePolicies+1)
	waitFor("policy change in force", 30*time.Second, func() bool { return strings.Contains(log.String(), want) })
	lag := time.Since(changed)

	t.Logf("SCALE pods=%d policies=%d agent (shipped DaemonSet arguments): node certificate after %v, converged in %v, RSS %.1f MB, policy change in force after %v",
		scalePods, scalePolicies, issued.Round(time.Millisecond), converge.Round(time.Millisecond), float64(rss)/(1<<20), lag.Round(time.Millisecond))
	if rss > maxAgentRSS {
		t.Errorf("agent RSS %.1f MB; goal under %d MB", float64(rss)/(1<<20), maxAgentRSS>>20)
	}
	if lag > maxPolicyLag {
		t.Errorf("policy change in force after %v; goal under %v", lag, maxPolicyLag)
	}
}

// populate creates the namespaces, pods and policies, in parallel.
func populate(t *testing.T, ctx context.Context, client kubernetes.Interface) {
	t.Helper()
	const namespaces = 50
	for n := 0; n < namespaces; n++ {
		name := fmt.Sprintf("ns-%d", n)
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"team": fmt.Sprintf("t%d", n%5)}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	jobs := make(chan func() error)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for job := range jobs {
				if err := job(); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < scalePods; i++ {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", i%namespaces), Name: fmt.Sprintf("pod-%d", i),
				Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%200), "tier": fmt.Sprintf("tier-%d", i%3)}},
			Spec: corev1.PodSpec{NodeName: fmt.Sprintf("n%d", i%scaleNodes), AutomountServiceAccountToken: new(bool),
				Containers: []corev1.Container{{Name: "main", Image: "none", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}}}},
		}
		jobs <- func() error {
			_, err := client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
			return err
		}
	}
	for i := 0; i < scalePolicies; i++ {
		np := scalePolicy(i, i)
		jobs <- func() error {
			_, err := client.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{})
			return err
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
}

// scalePolicy is policy number i in namespace ns-(ns % 50): one app's
// ingress from a tier in a team's namespaces, on the named port.
func scalePolicy(ns, i int) *networkingv1.NetworkPolicy {
	port := ptr(intstr.FromString("http"))
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", ns%50), Name: "np-" + strconv.Itoa(i)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", i%200)}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", i%5)}},
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"tier": fmt.Sprintf("tier-%d", i%3)}},
				}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: port}},
			}},
		},
	}
}

// rssOf reads a process's resident set size.
func rssOf(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/PID/status")
	return 0
}

func tail(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
