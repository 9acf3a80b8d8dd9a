package kubernetes

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bireme/bireme/internal/kubeenv"
	"github.com/bireme/bireme/internal/syncbuf"
	"github.com/bireme/bireme/internal/testbin"
	"github.com/bireme/bireme/netns/netnstest"
	"github.com/bireme/bireme/tokens"
)

// TestShippedManifestsRun runs the agent DaemonSet and the signer
// Deployment of deploy/kubernetes/ as written, with the test playing the
// DaemonSet controller and the kubelet: their pods are created from the
// manifests' templates through the API, the configuration the README has
// the user create (the CA Secret, the trust ConfigMap, the edited agent
// ConfigMap) is created through the API too, each container's volumes are
// filled from the API objects they name, its environment and $(VAR)
// arguments are resolved as the kubelet resolves them, and its command is
// run with exactly the template's arguments. The agent runs as root with
// only the capabilities its securityContext adds (its bounding set), the
// signer as the template's non-root user reading the Secret with its
// defaultMode and fsGroup, both through the in-cluster configuration: the
// service account volume (a token bound to the pod) mounted where client-go
// reads it, in a mount namespace of their own. What differs from a real
// node: the other volumes' mountPaths are directories of the test (the
// arguments naming a path under one are rewritten to match), and the
// probes' port is a free loopback port (after checking that it is the one
// the arguments serve).
//
// It then checks what the manifests promise: the signer signs the agent's
// request, the agent's readiness and liveness probes answer 200 on the
// paths and port the template names, two pods on the node are protected
// and connect, and the flow records are written, with their signed head,
// in the flows volume.
func TestShippedManifestsRun(t *testing.T) {
	requirePodRunner(t)
	env := kubeenv.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	client := env.Client
	dir := t.TempDir()

	f := newFabric(t)
	sh := installShipped(t, ctx, env, dir, f.network())
	ds, trustDomain, sg := sh.ds, sh.trustDomain, sh.signer
	const ns = shippedNamespace
	createNamespace(t, ctx, client, "x", nil)
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The agent's pod on n1, as the DaemonSet controller makes it.
	agentPod := podFromTemplate(t, ctx, client, ns, "bireme-agent-n1", "n1", ds.Spec.Template)
	a := &pod{namespace: "x", name: "a", node: "n1", labels: map[string]string{"app": "a"}}
	b := &pod{namespace: "x", name: "b", node: "n1", labels: map[string]string{"app": "b"}}
	kubelet(t, ctx, client, f, a)
	ag := runContainer(t, ctx, client, env, agentPod, filepath.Join(dir, "agent"))
	kubelet(t, ctx, client, f, b)
	ag.out.waitLog(t, 60*time.Second, "node certificate issued")
	// Its own trust domain and b's, from the ConfigMap (sorted).
	trusted := []string{trustDomain, "b"}
	sort.Strings(trusted)
	ag.out.waitLog(t, 10*time.Second, "msg=trust", "trust_domains="+strings.Join(trusted, ","))
	for _, p := range []*pod{a, b} {
		ag.out.waitLog(t, 20*time.Second, "workload protected", "pod="+p.ref())
	}
	sg.out.waitLog(t, 5*time.Second, "signed", "node=n1")
	if _, ok := eventually(10*time.Second, func() bool {
		code, _ := httpGet(t, ag.probe(t, ag.container.ReadinessProbe))
		return code == http.StatusOK
	}); !ok {
		t.Error("the agent's readiness probe never answered 200 with its pods protected")
	}
	if code, _ := httpGet(t, ag.probe(t, ag.container.LivenessProbe)); code != http.StatusOK {
		t.Errorf("agent liveness probe: %d, want 200", code)
	}
	for _, pair := range [][2]*pod{{a, b}, {b, a}} {
		if !connects(pair[0].ns, pair[1].addr) {
			t.Errorf("%s cannot reach %s under the shipped agent", pair[0].ref(), pair[1].ref())
		}
	}
	if !protected(t, a.ns) || !protected(t, b.ns) {
		t.Error("the pods have no Bireme chains")
	}

	// The flow records and their signed head, where the DaemonSet's
	// arguments put them: in the flows volume.
	flows := ag.pathArg(t, "--flows")
	waitFile(t, flows, `"verdict":"allow"`)
	if _, err := os.Stat(flows + ".head"); err != nil {
		t.Errorf("no signed head beside the flow records: %v", err)
	}
	if out, err := exec.Command(ag.bin, "flows", "verify", flows, "--key", ag.pathArg(t, "--flows-key")).CombinedOutput(); err != nil {
		t.Errorf("bireme flows verify on the agent's records: %v\n%s", err, out)
	}
}

// requirePodRunner skips the test, saying why, unless it may run the
// shipped pods as runContainer does: network namespaces, and util-linux's
// setpriv (the securityContext) and unshare (the pod's mount namespace).
func requirePodRunner(t *testing.T) {
	t.Helper()
	netnstest.RequireNamespaces(t)
	for _, tool := range []string{"setpriv", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s not installed (util-linux; scripts/install-deps.sh installs it)", tool)
		}
	}
}

// shippedNamespace is the namespace deploy/kubernetes/ installs into.
const shippedNamespace = "bireme-system"

// shipped is deploy/kubernetes/ installed on a test's API server.
type shipped struct {
	ds          appsv1.DaemonSet // the agent's, for its pods
	trustDomain string           // the agent ConfigMap's cluster
	signer      *container       // the signer, running
}

// installShipped does what README's "On Kubernetes" has the user do, on
// env's API server: the shipped RBAC, a CA of the agent ConfigMap's trust
// domain in its Secret and the public trust ConfigMap, the federation
// ConfigMap with one foreign cluster's bundle (b), and the agent ConfigMap
// with identityNetworks; then it runs the signer's pod as its Deployment
// makes it, as its template's user, until the test ends. Files go under dir.
func installShipped(t *testing.T, ctx context.Context, env *kubeenv.Env, dir, identityNetworks string) *shipped {
	t.Helper()
	client := env.Client
	objs := readManifests(t, filepath.Join("..", "..", "deploy", "kubernetes"))
	sh := &shipped{}
	var signerDep appsv1.Deployment
	var agentConfig corev1.ConfigMap
	fromManifest(t, objs, "DaemonSet", "bireme-agent", &sh.ds)
	fromManifest(t, objs, "Deployment", "bireme-signer", &signerDep)
	fromManifest(t, objs, "ConfigMap", "bireme-agent", &agentConfig)
	const ns = shippedNamespace
	applyShippedRBAC(t, ctx, env)

	sh.trustDomain = agentConfig.Data["cluster"]
	ca, err := tokens.NewCA(sh.trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFiles := filepath.Join(dir, "ca")
	if err := os.Mkdir(caFiles, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(filepath.Join(caFiles, "ca.crt"), filepath.Join(caFiles, "ca.key")); err != nil {
		t.Fatal(err)
	}
	caCrt, caKey := readFile(t, filepath.Join(caFiles, "ca.crt")), readFile(t, filepath.Join(caFiles, "ca.key"))
	if _, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bireme-ca"},
		Data: map[string][]byte{"ca.crt": caCrt, "ca.key": caKey}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "bireme-trust"},
		Data: map[string]string{"ca.crt": string(caCrt)}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A federated cluster b (docs/federation.md): its bundle in the
	// bireme-federation ConfigMap, which the DaemonSet mounts as the
	// agent's --trust-bundles directory.
	caB, err := tokens.NewCA("b", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bundleB, err := tokens.NewBundle("b", []*x509.Certificate{caB.Cert}, 1, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	bundleJSON, err := bundleB.MarshalSPIFFE()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "bireme-federation"},
		Data: map[string]string{"b.json": string(bundleJSON)}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	agentConfig.Data["identity-networks"] = identityNetworks
	if _, err := client.CoreV1().ConfigMaps(ns).Create(ctx, &agentConfig, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The signer's pod, as its Deployment makes it, run as its template's user.
	signerPod := podFromTemplate(t, ctx, client, ns, "bireme-signer-0", "", signerDep.Spec.Template)
	sh.signer = runContainer(t, ctx, client, env, signerPod, filepath.Join(dir, "signer"))
	sh.signer.out.waitLog(t, 20*time.Second, "signer started")
	if code, _ := httpGet(t, sh.signer.probe(t, sh.signer.container.ReadinessProbe)); code != http.StatusOK {
		t.Errorf("signer readiness probe: %d, want 200", code)
	}
	return sh
}

// fromManifest decodes the object of that kind and name of the manifests
// into out.
func fromManifest(t *testing.T, objs []*unstructured.Unstructured, kind, name string, out any) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, out); err != nil {
				t.Fatalf("%s %s: %v", kind, name, err)
			}
			return
		}
	}
	t.Fatalf("deploy/kubernetes/ has no %s %s", kind, name)
}

// podFromTemplate creates the pod a controller would make from template
// (on node, if set) through the API, which validates and admits it.
func podFromTemplate(t *testing.T, ctx context.Context, client kubernetes.Interface, ns, name, node string, template corev1.PodTemplateSpec) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: template.ObjectMeta, Spec: template.Spec}
	p.Name, p.Namespace = name, ns
	p.Spec.NodeName = node
	created, err := client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("pod %s from the shipped template: %v", name, err)
	}
	return created
}

// container is one shipped container run by the test.
type container struct {
	container corev1.Container
	bin       string
	out       *agent // its log
	args      []string
	probeAddr string // the loopback address the probes' port became
	// pid is the container's process: unshare, which becomes sh, then
	// setpriv, then bireme (each execs the next).
	pid     int
	started time.Time // when the process was started
}

// runContainer plays the kubelet for the pod's one container: its volumes
// under root, its environment, its arguments, and a bound service account
// token. It runs until the test ends (SIGTERM, then a clean exit).
func runContainer(t *testing.T, ctx context.Context, client kubernetes.Interface, env *kubeenv.Env, p *corev1.Pod, root string) *container {
	t.Helper()
	if len(p.Spec.Containers) != 1 {
		t.Fatalf("pod %s: %d containers, the test runs one", p.Name, len(p.Spec.Containers))
	}
	c := &container{container: p.Spec.Containers[0], out: &agent{node: p.Name, log: new(syncbuf.Buffer)}}
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	// The non-root signer must reach its files: the test's directories are 0700.
	for d := root; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sc := p.Spec.SecurityContext
	if sc == nil {
		sc = &corev1.PodSecurityContext{}
	}
	mounts := fillVolumes(t, ctx, client, p, c.container, root, sc.FSGroup)

	bin, err := testbin.Bireme()
	if err != nil {
		t.Fatal(err)
	}
	// A copy any user may run (the test's may sit in a 0700 directory).
	c.bin = filepath.Join(root, "bireme")
	if err := os.WriteFile(c.bin, readFile(t, bin), 0o755); err != nil {
		t.Fatal(err)
	}

	vars := containerEnv(t, ctx, client, p, c.container)
	if len(c.container.Command) != 0 {
		t.Fatalf("pod %s: the template sets command %v; the image's entry point is bireme", p.Name, c.container.Command)
	}
	c.args = expandArgs(c.container.Args, vars)
	c.args = rewritePaths(t, c.args, mounts)
	c.probeAddr = c.freeProbePort(t)

	// The kubelet's part of the securityContext, through setpriv: root
	// with only the added capabilities (the bounding set caps what root
	// gets at exec), or the pod's user, group and fsGroup.
	priv := []string{"--pdeathsig", "KILL"}
	csc := c.container.SecurityContext
	switch {
	case csc != nil && csc.Capabilities != nil && len(csc.Capabilities.Add) > 0:
		if len(csc.Capabilities.Drop) != 1 || csc.Capabilities.Drop[0] != "ALL" {
			t.Fatalf("pod %s: capabilities drop %v; the test runs drop [ALL] plus the added ones", p.Name, csc.Capabilities.Drop)
		}
		bounding := "-all"
		for _, add := range csc.Capabilities.Add {
			bounding += ",+" + strings.ToLower(string(add))
		}
		priv = append(priv, "--bounding-set", bounding)
	case sc.RunAsUser != nil:
		gid := *sc.RunAsUser
		if sc.RunAsGroup != nil {
			gid = *sc.RunAsGroup
		}
		priv = append(priv, "--reuid", strconv.FormatInt(*sc.RunAsUser, 10), "--regid", strconv.FormatInt(gid, 10))
		if sc.FSGroup != nil {
			priv = append(priv, "--groups", strconv.FormatInt(*sc.FSGroup, 10))
		} else {
			priv = append(priv, "--clear-groups")
		}
	default:
		t.Fatalf("pod %s: neither added capabilities nor a user; the test knows how to run neither", p.Name)
	}
	if csc != nil && csc.AllowPrivilegeEscalation != nil && !*csc.AllowPrivilegeEscalation {
		priv = append(priv, "--no-new-privs")
	}

	// The service account volume the API server's admission added, where
	// client-go's in-cluster configuration reads it: mounted in a mount
	// namespace of the process's own (slave: the node's later network
	// namespaces still appear under /run/netns), over a tmpfs on
	// /run/secrets, so the node's own tree is not changed.
	saPath, saDir := serviceAccountVolume(t, ctx, client, env, p, c.container, root)
	hostMountPoint(t, "/run/secrets")
	const inMountNS = `mount -t tmpfs -o mode=0755 tmpfs /run/secrets && mkdir -p "$1" && mount --bind "$2" "$1" && shift 2 && exec setpriv "$@"`
	argv := []string{"--mount", "--propagation", "slave", "--", "sh", "-c", inMountNS, "sh", saPath, saDir}
	argv = append(argv, priv...)
	argv = append(argv, "--", c.bin)
	argv = append(argv, c.args...)
	cmd := exec.Command("unshare", argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	host, port := apiServerAddress(t, env)
	vars["KUBERNETES_SERVICE_HOST"], vars["KUBERNETES_SERVICE_PORT"] = host, port
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, vars.list()...)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = c.out.log, c.out.log
	c.started = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.pid = cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Logf("pod %s: %s", p.Name, strings.Join(cmd.Args, " "))
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("pod %s: %v", p.Name, err)
			}
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("pod %s did not stop within 15s of SIGTERM", p.Name)
		}
		if t.Failed() {
			t.Logf("pod %s log:\n%s", p.Name, c.out.log.String())
		}
	})
	return c
}

// serviceAccountPath is where the kubelet mounts a pod's service account
// volume and client-go's in-cluster configuration reads it.
const serviceAccountPath = "/var/run/secrets/kubernetes.io/serviceaccount"

// serviceAccountVolume fills the service account volume the API server's
// admission added to the pod (kube-api-access-*) as the kubelet does: a
// token bound to the pod, the API server's CA, the namespace. It returns
// the volume's mountPath and its directory under root.
func serviceAccountVolume(t *testing.T, ctx context.Context, client kubernetes.Interface, env *kubeenv.Env, p *corev1.Pod, c corev1.Container, root string) (string, string) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if !strings.HasPrefix(m.Name, "kube-api-access-") {
			continue
		}
		if m.MountPath != serviceAccountPath {
			t.Fatalf("pod %s: service account volume at %s, want %s", p.Name, m.MountPath, serviceAccountPath)
		}
		dir := filepath.Join(root, "volumes", m.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		files := map[string][]byte{
			"token":     []byte(serviceAccountToken(t, ctx, client, p.Namespace, p.Spec.ServiceAccountName, p)),
			"ca.crt":    readFile(t, filepath.Join(env.Dir, "pki", "apiserver.crt")),
			"namespace": []byte(p.Namespace),
		}
		for name, data := range files {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return m.MountPath, dir
	}
	t.Fatalf("pod %s: no service account volume (kube-api-access-*) mounted: the in-cluster configuration would find no token", p.Name)
	return "", ""
}

// hostMountPoint makes sure dir exists on the node to mount over in a
// private mount namespace; one it had to make is removed at the end.
func hostMountPoint(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(dir); err == nil {
		return
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(dir) }) // only if still empty
}

// apiServerAddress is the API server's host and port, as the kubelet
// gives them to pods (KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT).
func apiServerAddress(t *testing.T, env *kubeenv.Env) (string, string) {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cfg.Host)
	if err != nil {
		t.Fatal(err)
	}
	return u.Hostname(), u.Port()
}

// envVars are a container's resolved environment.
type envVars map[string]string

func (e envVars) list() []string {
	var out []string
	for k, v := range e {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// containerEnv resolves the container's env as the kubelet does: values,
// the pod's spec.nodeName and ConfigMap keys read from the API.
func containerEnv(t *testing.T, ctx context.Context, client kubernetes.Interface, p *corev1.Pod, c corev1.Container) envVars {
	t.Helper()
	vars := envVars{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			vars[e.Name] = expand(e.Value, vars)
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName":
			vars[e.Name] = p.Spec.NodeName
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm, err := client.CoreV1().ConfigMaps(p.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("env %s: %v", e.Name, err)
			}
			v, ok := cm.Data[ref.Key]
			if !ok {
				t.Fatalf("env %s: ConfigMap %s has no key %s", e.Name, ref.Name, ref.Key)
			}
			vars[e.Name] = v
		default:
			t.Fatalf("env %s: a source the test does not resolve: %+v", e.Name, e.ValueFrom)
		}
	}
	return vars
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expand replaces $(VAR) with the variable's value, leaving unknown ones
// as written (the kubelet's rule).
func expand(s string, vars envVars) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		if v, ok := vars[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

func expandArgs(args []string, vars envVars) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = expand(a, vars)
	}
	return out
}

// fillVolumes makes each volume the container mounts, under root, and
// returns mountPath -> directory (or file). ConfigMaps and Secrets are
// read from the API (an optional one that is missing is an empty
// directory); hostPath volumes under /run are the node's own (its network
// namespaces, the xtables lock), other hostPaths a directory of the test.
func fillVolumes(t *testing.T, ctx context.Context, client kubernetes.Interface, p *corev1.Pod, c corev1.Container, root string, fsGroup *int64) map[string]string {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range p.Spec.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			t.Fatalf("pod %s: mount %s names no volume", p.Name, m.Name)
		}
		local := filepath.Join(root, "volumes", m.Name)
		files := map[string][]byte{}
		mode := os.FileMode(0o644)
		switch {
		case v.ConfigMap != nil:
			cm, err := client.CoreV1().ConfigMaps(p.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err) && v.ConfigMap.Optional != nil && *v.ConfigMap.Optional:
			case err != nil:
				t.Fatalf("volume %s: %v", m.Name, err)
			default:
				for k, s := range cm.Data {
					files[k] = []byte(s)
				}
			}
		case v.Secret != nil:
			s, err := client.CoreV1().Secrets(p.Namespace).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("volume %s: %v", m.Name, err)
			}
			files = s.Data
			if v.Secret.DefaultMode != nil {
				mode = os.FileMode(*v.Secret.DefaultMode)
			}
		case v.HostPath != nil && strings.HasPrefix(v.HostPath.Path, "/run/"):
			if v.HostPath.Path != m.MountPath {
				t.Fatalf("volume %s: host %s mounted at %s; the test shares only same-path mounts of the node's /run", m.Name, v.HostPath.Path, m.MountPath)
			}
			mounts[m.MountPath] = v.HostPath.Path
			continue
		case v.HostPath != nil:
		case v.Projected != nil && strings.HasPrefix(v.Name, "kube-api-access-"):
			continue // serviceAccountVolume
		default:
			t.Fatalf("volume %s: a kind the test does not fill", m.Name)
		}
		if err := os.MkdirAll(local, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range files {
			path := filepath.Join(local, name)
			if err := os.WriteFile(path, data, mode); err != nil {
				t.Fatal(err)
			}
			// The volume's mode exactly (WriteFile's passes through the umask).
			if err := os.Chmod(path, mode); err != nil {
				t.Fatal(err)
			}
			// The kubelet gives secret and ConfigMap files the pod's fsGroup.
			if fsGroup != nil {
				if err := os.Chown(path, 0, int(*fsGroup)); err != nil {
					t.Fatal(err)
				}
			}
		}
		mounts[m.MountPath] = local
	}
	return mounts
}

// rewritePaths points every argument value under a mountPath at the
// volume's directory (the longest mountPath that holds it). A path
// argument outside every mount is an error: on a node it would be the
// image's, which holds no configuration.
func rewritePaths(t *testing.T, args []string, mounts map[string]string) []string {
	t.Helper()
	paths := make([]string, 0, len(mounts))
	for mp := range mounts {
		paths = append(paths, mp)
	}
	sort.Slice(paths, func(i, j int) bool { return len(paths[i]) > len(paths[j]) })
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		flag, value, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(value, "/") {
			continue
		}
		found := false
		for _, mp := range paths {
			if value == mp || strings.HasPrefix(value, mp+"/") {
				out[i] = flag + "=" + mounts[mp] + strings.TrimPrefix(value, mp)
				found = true
				break
			}
		}
		if !found {
			t.Errorf("argument %s: %s is in no volume of the container", flag, value)
		}
	}
	return out
}

// freeProbePort checks that the probes' named port is a container port
// and that the arguments serve it (--metrics-addr or --listen), then
// moves that argument to a free loopback port and returns its address.
func (c *container) freeProbePort(t *testing.T) string {
	t.Helper()
	var name string
	for _, pr := range []*corev1.Probe{c.container.ReadinessProbe, c.container.LivenessProbe} {
		if pr == nil || pr.HTTPGet == nil {
			t.Fatalf("container %s: liveness and readiness must be HTTP probes", c.container.Name)
		}
		if name != "" && pr.HTTPGet.Port.String() != name {
			t.Fatalf("container %s: the probes ask ports %q and %q; the test serves one", c.container.Name, name, pr.HTTPGet.Port.String())
		}
		name = pr.HTTPGet.Port.String()
	}
	var port int32
	for _, cp := range c.container.Ports {
		if cp.Name == name || strconv.Itoa(int(cp.ContainerPort)) == name {
			port = cp.ContainerPort
		}
	}
	if port == 0 {
		t.Fatalf("container %s: the probes' port %q is no container port", c.container.Name, name)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	served := false
	for i, a := range c.args {
		flag, value, ok := strings.Cut(a, "=")
		if !ok || (flag != "--metrics-addr" && flag != "--listen") {
			continue
		}
		_, p, err := net.SplitHostPort(value)
		if err != nil || p != strconv.Itoa(int(port)) {
			t.Fatalf("container %s: %s serves %q, but the probes ask port %d", c.container.Name, flag, value, port)
		}
		c.args[i] = flag + "=" + addr
		served = true
	}
	if !served {
		t.Fatalf("container %s: no --metrics-addr or --listen serves the probes' port %d", c.container.Name, port)
	}
	return addr
}

// probe is the URL the kubelet would ask for pr.
func (c *container) probe(t *testing.T, pr *corev1.Probe) string {
	t.Helper()
	return fmt.Sprintf("http://%s%s", c.probeAddr, pr.HTTPGet.Path)
}

// pathArg is the (rewritten) value of a path argument.
func (c *container) pathArg(t *testing.T, flag string) string {
	t.Helper()
	for _, a := range c.args {
		if f, v, ok := strings.Cut(a, "="); ok && f == flag {
			return v
		}
	}
	t.Fatalf("container %s: no %s argument", c.container.Name, flag)
	return ""
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
