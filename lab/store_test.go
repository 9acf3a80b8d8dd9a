package lab

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bireme/bireme/k8s/filestore"
	"github.com/bireme/bireme/policy"
)

func pod(ns, name string, labels map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "i", Ports: ports}}},
	}
}

func netpol(ns, name string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
}

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func TestTCPPorts(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ports []corev1.ContainerPort
		want  []uint16
	}{
		{"none", nil, nil},
		{"tcp and default protocol, sorted", []corev1.ContainerPort{{ContainerPort: 81, Protocol: "TCP"}, {ContainerPort: 80}}, []uint16{80, 81}},
		{"udp skipped", []corev1.ContainerPort{{ContainerPort: 53, Protocol: "UDP"}, {ContainerPort: 53, Protocol: "TCP"}}, []uint16{53}},
		{"duplicates once", []corev1.ContainerPort{{ContainerPort: 80}, {ContainerPort: 80, Name: "again"}}, []uint16{80}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tcpPorts(pod("x", "a", nil, tc.ports...)); !slices.Equal(got, tc.want) {
				t.Errorf("tcpPorts = %v, want %v", got, tc.want)
			}
		})
	}
}

func refs(objs policy.Objects) []string {
	var out []string
	for _, ns := range objs.Namespaces {
		out = append(out, "ns:"+ns.Name+":"+ns.Labels["l"])
	}
	for _, p := range objs.Pods {
		out = append(out, "pod:"+podRef(p)+":"+p.Labels["l"])
	}
	for _, np := range objs.Policies {
		out = append(out, "np:"+np.Namespace+"/"+np.Name)
	}
	return out
}

func TestMergeAndWithout(t *testing.T) {
	base := policy.Objects{
		Namespaces: []*corev1.Namespace{namespace("x", map[string]string{"l": "1"}), namespace("y", nil)},
		Pods:       []*corev1.Pod{pod("x", "a", map[string]string{"l": "1"}), pod("y", "b", nil)},
		Policies:   []*networkingv1.NetworkPolicy{netpol("x", "p"), netpol("y", "q")},
	}
	merged := merge(base, policy.Objects{
		Namespaces: []*corev1.Namespace{namespace("x", map[string]string{"l": "2"})},
		Pods:       []*corev1.Pod{pod("x", "a", map[string]string{"l": "2"}), pod("x", "c", nil)},
		Policies:   []*networkingv1.NetworkPolicy{netpol("x", "r")},
	})
	want := []string{"ns:x:2", "ns:y:", "pod:x/a:2", "pod:y/b:", "pod:x/c:", "np:x/p", "np:y/q", "np:x/r"}
	if got := refs(merged); !slices.Equal(got, want) {
		t.Errorf("merge = %v, want %v", got, want)
	}
	if got := refs(base); got[0] != "ns:x:1" || got[2] != "pod:x/a:1" {
		t.Errorf("merge changed its input: %v", got)
	}
	// Deleting namespace y takes its pod and policy along.
	left := without(merged, policy.Objects{
		Namespaces: []*corev1.Namespace{namespace("y", nil)},
		Pods:       []*corev1.Pod{pod("x", "c", nil)},
		Policies:   []*networkingv1.NetworkPolicy{netpol("x", "p")},
	})
	want = []string{"ns:x:2", "pod:x/a:2", "np:x/r"}
	if got := refs(left); !slices.Equal(got, want) {
		t.Errorf("without = %v, want %v", got, want)
	}
}

// The store must read back, through the same loader the enforcers use,
// exactly what was written; removed objects lose their files.
func TestSyncStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	p := pod("x", "a", map[string]string{"app": "a"}, corev1.ContainerPort{Name: "http", ContainerPort: 80})
	p.Spec.NodeName = "node1"
	p.Annotations = map[string]string{NetNSAnnotation: "pfx-x_a"}
	objs := policy.Objects{
		Namespaces: []*corev1.Namespace{namespace("x", map[string]string{"team": "t"})},
		Pods:       []*corev1.Pod{p, pod("x", "b", nil)},
		Policies:   []*networkingv1.NetworkPolicy{netpol("x", "deny")},
	}
	if err := syncStore(dir, objs); err != nil {
		t.Fatal(err)
	}
	got, err := filestore.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(refs(got), refs(objs)) {
		t.Fatalf("store holds %v, want %v", refs(got), refs(objs))
	}
	a := got.Pod("x", "a")
	if a.Spec.NodeName != "node1" || a.Annotations[NetNSAnnotation] != "pfx-x_a" || a.Spec.Containers[0].Ports[0].Name != "http" {
		t.Errorf("pod read back as %+v", a)
	}
	info, _ := os.Stat(filepath.Join(dir, podFile("x", "a")))
	if err := syncStore(dir, without(objs, policy.Objects{Pods: []*corev1.Pod{pod("x", "b", nil)}})); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, podFile("x", "b"))); !os.IsNotExist(err) {
		t.Errorf("file of deleted pod x/b: %v", err)
	}
	if again, _ := os.Stat(filepath.Join(dir, podFile("x", "a"))); !again.ModTime().Equal(info.ModTime()) {
		t.Error("unchanged pod x/a was rewritten")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name()[0] == '.' {
			t.Errorf("temporary file %s left in the store", e.Name())
		}
	}
}

// Up refuses a negative --flows-max-bytes before it makes anything (the
// enforcers would never rotate, silently).
func TestUpRefusesNegativeFlowsMaxBytes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	_, err := Up(t.Context(), Config{StateDir: dir, Binary: "bireme"}, Options{FlowsMaxBytes: -1}, "testdata/three.yaml")
	if err == nil || err.Error() != "lab up: --flows-max-bytes -1: want 0 (never rotate) or more" {
		t.Fatalf("Up with FlowsMaxBytes -1: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("Up with FlowsMaxBytes -1 made %s (%v)", dir, err)
	}
}
