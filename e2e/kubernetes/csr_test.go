package kubernetes

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/internal/kubeenv"
	"github.com/bireme/bireme/internal/syncbuf"
	"github.com/bireme/bireme/internal/testbin"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
	"github.com/bireme/bireme/tokens"
)

// signerLifetime is the signer's cap on node certificates in this test:
// short, so that the agents rotate (at two thirds of it) while it runs.
const signerLifetime = 18 * time.Second

// TestNodeCertificatesThroughCSR runs the agents without any key made off
// their node: each makes its key, gets its certificate from `bireme
// signer` through a CertificateSigningRequest made with a token bound to
// its pod, and rotates it before it expires. Pods on two such nodes
// connect; a connection opened before the rotation stays up and new ones
// work after it; a restarted agent reuses its key and certificate. The
// signer denies a request for another node than the requester's token is
// bound to, one from another service account, one with an unbound token,
// and one with other key usages. Service accounts and RBAC are the ones
// deploy/kubernetes/ ships.
func TestNodeCertificatesThroughCSR(t *testing.T) {
	netnstest.RequireNamespaces(t)
	env := kubeenv.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	client := env.Client
	dir := t.TempDir()

	applyShippedRBAC(t, ctx, env)
	caDir := filepath.Join(dir, "ca")
	if err := os.Mkdir(caDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ca, err := tokens.NewCA(cluster, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(filepath.Join(caDir, "ca.crt"), filepath.Join(caDir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	signerToken := serviceAccountToken(t, ctx, client, "bireme-system", "bireme-signer", nil)
	signerLog, signerHTTP := startSigner(t, tokenKubeconfig(t, env, filepath.Join(dir, "signer.kubeconfig"), signerToken), caDir)

	createNamespace(t, ctx, client, "x", nil)
	agentKubeconfigs := map[string]string{}
	for _, node := range []string{"n1", "n2"} {
		if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The agent's own pod on that node, as the DaemonSet makes it; its
		// token is bound to it, as the kubelet's projected token is.
		agentPod := createPod(t, ctx, client, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bireme-system", Name: "bireme-agent-" + node},
			Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: "bireme-agent", AutomountServiceAccountToken: new(bool),
				HostNetwork: true, Containers: []corev1.Container{{Name: "agent", Image: "none"}}},
		})
		token := serviceAccountToken(t, ctx, client, "bireme-system", "bireme-agent", agentPod)
		agentKubeconfigs[node] = tokenKubeconfig(t, env, filepath.Join(dir, node+".kubeconfig"), token)
	}

	f := newFabric(t)
	a := &pod{namespace: "x", name: "a", node: "n1", labels: map[string]string{"app": "a"}}
	c := &pod{namespace: "x", name: "c", node: "n2", labels: map[string]string{"app": "c"}}
	kubelet(t, ctx, client, f, a)
	kubelet(t, ctx, client, f, c)
	longServer := echoServer(t, c.ns, 81)

	n1 := startCSRAgent(t, agentKubeconfigs["n1"], dir, "n1", caDir, f.network())
	n2 := startCSRAgent(t, agentKubeconfigs["n2"], dir, "n2", caDir, f.network())
	for _, w := range []struct {
		agent *csrAgent
		p     *pod
	}{{n1, a}, {n2, c}} {
		w.agent.waitLog(t, 30*time.Second, "node certificate issued")
		w.agent.waitLog(t, 20*time.Second, "workload protected", "pod="+w.p.ref())
	}
	signerLog.waitLog(t, 5*time.Second, "signed", "node=n1")
	signerLog.waitLog(t, 5*time.Second, "signed", "node=n2")
	// Each agent learns the other node's key from the certificate the
	// signer published, before any connection between them.
	n1.waitLog(t, 10*time.Second, "node certificates published ahead of time", "nodes=2")
	n2.waitLog(t, 10*time.Second, "node certificates published ahead of time", "nodes=2")
	// A node answers two-message SYNs only once its start-up window has
	// passed (tokens.Config.TwoMessageWindow): its engine started before
	// its pod was protected.
	time.Sleep(tokens.DefaultTwoMessageWindow + time.Second)
	for _, pair := range [][2]*pod{{a, c}, {c, a}} {
		if !connects(pair[0].ns, pair[1].addr) {
			t.Fatalf("%s cannot reach %s, both on nodes with certificates from the signer", pair[0].ref(), pair[1].ref())
		}
		// The very first connection between the two nodes' pods: two
		// messages on both ends, from the published certificates.
		cr, sr := firstRecords(t, dir, pair[0].node, pair[1].node, pair[0].addr, pair[1].addr)
		if cr.Handshake != flowlog.TwoMessage || sr.Handshake != flowlog.TwoMessage {
			t.Errorf("first connection %s -> %s: client record handshake %q (fallback %q), server record %q (fallback %q), want two-message on both",
				pair[0].ref(), pair[1].ref(), cr.Handshake, cr.Fallback, sr.Handshake, sr.Fallback)
		}
	}
	state := filepath.Join(dir, "n1-state", "node.pem")
	first := stateCertificate(t, state)
	if st, err := os.Stat(state); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v (%v), want 0600", state, st.Mode().Perm(), err)
	}

	// Opened before the rotation; must stay up across it.
	long, err := a.ns.Dial("tcp", netip.AddrPortFrom(c.addr, 81).String(), 2*time.Second)
	if err != nil {
		t.Fatalf("long-lived connection: %v", err)
	}
	defer long.Close()
	exchange(t, long, "before rotation")

	// While the rotation approaches: requests the signer must deny.
	n1Client := clientFor(t, agentKubeconfigs["n1"])
	key, err := tokens.GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	forN2, err := tokens.NewNodeCSR(key, cluster, "n2")
	if err != nil {
		t.Fatal(err)
	}
	forN1, err := tokens.NewNodeCSR(key, cluster, "n1")
	if err != nil {
		t.Fatal(err)
	}
	// Another service account, with a token bound to a pod on n1 and the
	// right to make requests.
	allowCSRs(t, ctx, client, "x", "default")
	xa, err := client.CoreV1().Pods("x").Get(ctx, "a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	otherClient := clientFor(t, tokenKubeconfig(t, env, filepath.Join(dir, "other.kubeconfig"), serviceAccountToken(t, ctx, client, "x", "default", xa)))
	// The agents' service account with a token bound to nothing.
	unboundClient := clientFor(t, tokenKubeconfig(t, env, filepath.Join(dir, "unbound.kubeconfig"), serviceAccountToken(t, ctx, client, "bireme-system", "bireme-agent", nil)))
	nodeUsages := []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageKeyAgreement}
	for _, tt := range []struct {
		name       string
		client     kubernetes.Interface
		request    []byte
		usages     []certv1.KeyUsage
		wantReason string
		wantIn     string
	}{
		{"node n2 asked with a token bound to a pod on n1", n1Client, forN2, nodeUsages, "WrongNode", `"n2"`},
		{"another service account", otherClient, forN1, nodeUsages, "WrongRequester", "system:serviceaccount:x:default"},
		{"an unbound token of the agents' account", unboundClient, forN1, nodeUsages, "NotBoundToNode", "not bound"},
		{"client auth besides the node usages", n1Client, forN1, append(nodeUsages, certv1.UsageClientAuth), "BadKeyUsage", "client auth"},
	} {
		csr, err := tt.client.CertificatesV1().CertificateSigningRequests().Create(ctx, &certv1.CertificateSigningRequest{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "attempt-"},
			Spec:       certv1.CertificateSigningRequestSpec{Request: tt.request, SignerName: "bireme.io/node", Usages: tt.usages},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("%s: create request: %v", tt.name, err)
		}
		cond, got := decision(t, ctx, client, csr.Name)
		if cond.Type != certv1.CertificateDenied || cond.Reason != tt.wantReason || !strings.Contains(cond.Message, tt.wantIn) {
			t.Errorf("%s: %s %s %q, want Denied %s mentioning %s", tt.name, cond.Type, cond.Reason, cond.Message, tt.wantReason, tt.wantIn)
		}
		if len(got.Status.Certificate) > 0 {
			t.Errorf("%s: a certificate was issued", tt.name)
		}
	}

	// The signer's probes and metrics (the Deployment's probes and
	// Prometheus read them): ready, two nodes signed, each denial counted
	// by its reason.
	if code, _ := httpGet(t, signerHTTP+"/readyz"); code != http.StatusOK {
		t.Errorf("signer /readyz = %d, want 200", code)
	}
	_, metrics := httpGet(t, signerHTTP+"/metrics")
	for _, want := range []string{
		`bireme_signer_decisions_total{decision="signed",reason="BiremeNodeBound"} 2`,
		`bireme_signer_decisions_total{decision="denied",reason="WrongNode"} 1`,
		`bireme_signer_decisions_total{decision="denied",reason="WrongRequester"} 1`,
		`bireme_signer_decisions_total{decision="denied",reason="NotBoundToNode"} 1`,
		`bireme_signer_decisions_total{decision="denied",reason="BadKeyUsage"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("signer /metrics lacks %s:\n%s", want, metrics)
		}
	}

	// The rotation: new keys and certificates while the old ones are
	// still valid; the connection made before it carries on, and new
	// handshakes (signed with the new keys) are accepted.
	n1.waitLog(t, signerLifetime+10*time.Second, "node certificate rotated")
	n2.waitLog(t, signerLifetime+10*time.Second, "node certificate rotated")
	second := stateCertificate(t, state)
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 || !second.NotAfter.After(first.NotAfter) {
		t.Errorf("n1's certificate was not replaced by a later one (serial %v -> %v, not after %v -> %v)",
			first.SerialNumber, second.SerialNumber, first.NotAfter, second.NotAfter)
	}
	if bytes.Equal(first.RawSubjectPublicKeyInfo, second.RawSubjectPublicKeyInfo) {
		t.Error("n1's rotated certificate is for the same key: rotation must make a new key")
	}
	t.Logf("n1 rotated: certificate valid until %s replaced by one valid until %s (new key)",
		first.NotAfter.Format(time.TimeOnly), second.NotAfter.Format(time.TimeOnly))
	exchange(t, long, "after rotation")
	for _, pair := range [][2]*pod{{a, c}, {c, a}} {
		if !connects(pair[0].ns, pair[1].addr) {
			t.Errorf("after the rotation, %s cannot reach %s", pair[0].ref(), pair[1].ref())
		}
	}
	if n := longServer.accepted(); n != 1 {
		t.Errorf("the echo server accepted %d connections, want the one long-lived", n)
	}

	// A restarted agent reuses the key and certificate in its state
	// directory (no new request), and its pods connect at once.
	n1.terminate(t)
	n1 = startCSRAgent(t, agentKubeconfigs["n1"], dir, "n1", caDir, f.network())
	n1.waitLog(t, 20*time.Second, "node certificate loaded from the state directory")
	n1.waitLog(t, 20*time.Second, "workload protected", "pod="+a.ref())
	if _, ok := eventually(5*time.Second, func() bool { return connects(a.ns, c.addr) }); !ok {
		t.Error("after n1's restart, x/a cannot reach x/c")
	}
	exchange(t, long, "after restart")
	if t.Failed() {
		t.Logf("signer log:\n%s", signerLog.log.String())
	}
}

// applyShippedRBAC creates the namespace, service accounts, roles and
// bindings of deploy/kubernetes/ for real: the test's agents and signer
// run with exactly the privileges the manifests give them.
func applyShippedRBAC(t *testing.T, ctx context.Context, env *kubeenv.Env) {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	resources := map[string]struct {
		group, version, resource string
		namespaced               bool
	}{
		"Namespace":          {"", "v1", "namespaces", false},
		"ServiceAccount":     {"", "v1", "serviceaccounts", true},
		"ClusterRole":        {"rbac.authorization.k8s.io", "v1", "clusterroles", false},
		"ClusterRoleBinding": {"rbac.authorization.k8s.io", "v1", "clusterrolebindings", false},
		"Role":               {"rbac.authorization.k8s.io", "v1", "roles", true},
		"RoleBinding":        {"rbac.authorization.k8s.io", "v1", "rolebindings", true},
	}
	applied := map[string]bool{}
	for _, obj := range readManifests(t, filepath.Join("..", "..", "deploy", "kubernetes")) {
		r, ok := resources[obj.GetKind()]
		if !ok {
			continue
		}
		gvr := schema.GroupVersionResource{Group: r.group, Version: r.version, Resource: r.resource}
		var rc dynamic.ResourceInterface = dyn.Resource(gvr)
		if r.namespaced {
			rc = dyn.Resource(gvr).Namespace(obj.GetNamespace())
		}
		if _, err := rc.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		applied[obj.GetKind()+"/"+obj.GetName()] = true
	}
	for _, want := range []string{"ServiceAccount/bireme-agent", "ServiceAccount/bireme-signer", "ClusterRole/bireme-signer"} {
		if !applied[want] {
			t.Fatalf("deploy/kubernetes/ has no %s", want)
		}
	}
}

func createNamespace(t *testing.T, ctx context.Context, client kubernetes.Interface, name string, labels map[string]string) {
	t.Helper()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// No controller manager runs: the service account admission plugin
	// wants the namespace's default account to exist.
	if _, err := client.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func createPod(t *testing.T, ctx context.Context, client kubernetes.Interface, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	created, err := client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return created
}

// serviceAccountToken returns a token of namespace/name, bound to boundTo
// when it is set (as the kubelet's projected tokens are: the API server
// then records the pod's node in what the token authenticates as).
func serviceAccountToken(t *testing.T, ctx context.Context, client kubernetes.Interface, namespace, name string, boundTo *corev1.Pod) string {
	t.Helper()
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))}}
	if boundTo != nil {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: boundTo.Name, UID: boundTo.UID}
	}
	tr, err := client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// tokenKubeconfig writes a kubeconfig for the test's API server that
// authenticates with token.
func tokenKubeconfig(t *testing.T, env *kubeenv.Env, path, token string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, auth := range cfg.AuthInfos {
		*auth = clientcmdapi.AuthInfo{Token: token}
	}
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func clientFor(t *testing.T, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// allowCSRs lets namespace/name create certificate signing requests, as
// the agents may: its requests then reach the signer, which must deny them.
func allowCSRs(t *testing.T, ctx context.Context, client kubernetes.Interface, namespace, name string) {
	t.Helper()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "csr-requester"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"certificatesigningrequests"}, Verbs: []string{"create", "get"}}},
	}
	if _, err := client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "csr-requester"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: namespace, Name: name}},
	}
	if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// decision waits for the signer's decision on a request and returns its
// condition and the request as it then is.
func decision(t *testing.T, ctx context.Context, client kubernetes.Interface, name string) (certv1.CertificateSigningRequestCondition, *certv1.CertificateSigningRequest) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		csr, err := client.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range csr.Status.Conditions {
			if c.Type == certv1.CertificateDenied || c.Type == certv1.CertificateFailed {
				return c, csr
			}
		}
		if len(csr.Status.Certificate) > 0 {
			return certv1.CertificateSigningRequestCondition{Type: certv1.CertificateApproved, Reason: "issued"}, csr
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("request %s not decided within 20s", name)
	return certv1.CertificateSigningRequestCondition{}, nil
}

// stateCertificate reads the certificate an agent keeps in its state file.
func stateCertificate(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			t.Fatalf("%s holds no certificate", file)
		}
		if block.Type == "CERTIFICATE" {
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			return cert
		}
	}
}

// echoServerT counts the connections an echo server accepted.
type echoServerT struct{ n chan struct{} }

func (e *echoServerT) accepted() int { return len(e.n) }

// echoServer echoes every connection to port in ns, for as long as it
// stays open.
func echoServer(t *testing.T, ns *netns.NS, port int) *echoServerT {
	t.Helper()
	l, err := ns.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	e := &echoServerT{n: make(chan struct{}, 100)}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			e.n <- struct{}{}
			go func(c net.Conn) {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}(c)
		}
	}()
	return e
}

// exchange sends msg on c and reads it back.
func exchange(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("long-lived connection, %s: write: %v", msg, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("long-lived connection, %s: read %q, %v", msg, buf, err)
	}
}

// csrAgent is one `bireme agent --node-credentials csr` process.
type csrAgent struct {
	out    *agent // its node name and log
	cmd    *exec.Cmd
	exited chan error
}

func (a *csrAgent) waitLog(t *testing.T, timeout time.Duration, parts ...string) {
	t.Helper()
	a.out.waitLog(t, timeout, parts...)
}

func startCSRAgent(t *testing.T, kubeconfig, dir, node, caDir, podNetwork string) *csrAgent {
	t.Helper()
	bin, err := testbin.Bireme()
	if err != nil {
		t.Fatal(err)
	}
	a := &csrAgent{out: &agent{node: node, log: new(syncbuf.Buffer)}, exited: make(chan error, 1)}
	a.cmd = exec.Command(bin, "agent", "--node", node, "--kubeconfig", kubeconfig,
		"--cluster", cluster, "--ca-bundle", filepath.Join(caDir, "ca.crt"),
		"--node-credentials", "csr", "--state-dir", filepath.Join(dir, node+"-state"), "--published-node-certs",
		"--identity-networks", podNetwork,
		"--flows", filepath.Join(dir, node+".flows.jsonl"), "--netns-check", "500ms")
	a.cmd.Stdout, a.cmd.Stderr = a.out.log, a.out.log
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := a.exited // terminate clears a.exited; the send must not see that
	go func() { exited <- a.cmd.Wait() }()
	t.Cleanup(func() {
		if a.exited != nil {
			a.terminate(t)
		}
		if t.Failed() {
			t.Logf("agent %s log:\n%s", node, a.out.log.String())
		}
	})
	return a
}

// terminate sends SIGTERM and waits for a clean exit.
func (a *csrAgent) terminate(t *testing.T) {
	t.Helper()
	exited := a.exited
	a.exited = nil
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("agent %s: %v", a.out.node, err)
		}
	case <-time.After(15 * time.Second):
		_ = a.cmd.Process.Kill()
		<-exited
		t.Errorf("agent %s did not stop within 15s of SIGTERM", a.out.node)
	}
}

// startSigner runs `bireme signer` with the CA in caDir, capping
// certificates at signerLifetime; it returns the signer and the base URL
// of its probes and metrics.
func startSigner(t *testing.T, kubeconfig, caDir string) (*agent, string) {
	t.Helper()
	bin, err := testbin.Bireme()
	if err != nil {
		t.Fatal(err)
	}
	// A free loopback port for its metrics server.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := ln.Addr().String()
	ln.Close()
	s := &agent{node: "signer", log: new(syncbuf.Buffer)}
	cmd := exec.Command(bin, "signer", "--kubeconfig", kubeconfig, "--ca-dir", caDir,
		"--max-lifetime", signerLifetime.String(), "--listen", listen)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("signer: %v", err)
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Error("signer did not stop within 10s of SIGTERM")
		}
	})
	s.waitLog(t, 20*time.Second, "signer started")
	return s, "http://" + listen
}

// firstRecords returns the allow records of the first connection from
// from to to:80: the client node's (egress) and the server node's
// (ingress), waiting for them to be written.
func firstRecords(t *testing.T, dir, clientNode, serverNode string, from, to netip.Addr) (client, server *flowlog.Record) {
	t.Helper()
	server80 := netip.AddrPortFrom(to, 80).String()
	find := func(node, dir string) *flowlog.Record {
		b, err := os.ReadFile(filepath.Join(dir, node+".flows.jsonl"))
		if err != nil {
			return nil
		}
		rs, err := flowlog.Read(bytes.NewReader(b))
		if err != nil {
			return nil
		}
		for i := range rs {
			r := &rs[i]
			if r.Verdict != flowlog.Allow || r.Protocol != "TCP" {
				continue
			}
			local, peer := r.LocalAddr, r.PeerAddr
			if r.Direction == "ingress" {
				local, peer = peer, local
			}
			if local == server80 || peer != server80 || !strings.HasPrefix(local, from.String()+":") {
				continue
			}
			return r
		}
		return nil
	}
	if _, ok := eventually(3*time.Second, func() bool {
		client, server = find(clientNode, dir), find(serverNode, dir)
		return client != nil && server != nil
	}); !ok {
		t.Fatalf("no allow records of %s -> %s on %s (%v) and %s (%v)", from, server80, clientNode, client != nil, serverNode, server != nil)
	}
	return client, server
}

// httpGet fetches url (a local metrics server) and returns the status and
// body; 0 when it cannot be reached.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Logf("GET %s: %v", url, err)
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
