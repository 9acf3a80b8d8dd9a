package k8s

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/bireme/bireme/identity"
)

func TestIdentityOf(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	ns := &corev1.Namespace{}
	ns.Name, ns.Labels = "x", map[string]string{"team": "a", namespaceNameLabel: "spoofed"}
	pod := &corev1.Pod{}
	pod.Namespace, pod.Name, pod.Labels = "x", "a", map[string]string{"app": "web"}
	pod.Spec.Containers = []corev1.Container{
		{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {ContainerPort: 9999}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}},
	}
	pod.Spec.InitContainers = []corev1.Container{
		{Name: "setup", Ports: []corev1.ContainerPort{{Name: "setup", ContainerPort: 1}}},
		{Name: "proxy", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 15001}}},
	}
	want := &identity.Identity{
		Cluster: "c1", Namespace: "x", Pod: "a", ServiceAccount: "default",
		Labels:          map[string]string{"app": "web"},
		NamespaceLabels: map[string]string{"team": "a", namespaceNameLabel: "x"},
		Ports: []identity.Port{
			{Name: "http", Protocol: "TCP", Port: 8080},
			{Name: "dns", Protocol: "UDP", Port: 53},
			{Name: "proxy", Protocol: "TCP", Port: 15001},
		},
	}
	got := IdentityOf("c1", ns, pod)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("IdentityOf =\n%+v\nwant\n%+v", got, want)
	}
	// Nothing is shared with the inputs.
	got.Labels["app"] = "changed"
	got.NamespaceLabels["team"] = "changed"
	if pod.Labels["app"] != "web" || ns.Labels["team"] != "a" {
		t.Fatal("IdentityOf shares maps with its inputs")
	}

	pod.Spec.ServiceAccountName = "builder"
	pod.Namespace = ""
	got = IdentityOf("c1", nil, pod)
	if got.ServiceAccount != "builder" || got.Namespace != "default" ||
		!reflect.DeepEqual(got.NamespaceLabels, map[string]string{namespaceNameLabel: "default"}) {
		t.Fatalf("IdentityOf with nil namespace = %+v", got)
	}

	// Reserved labels a pod or namespace set themselves are dropped (the
	// API server accepts them; policy sees Bireme's values instead).
	pod.Labels = map[string]string{"app": "web", identity.LabelServiceAccount: "payments", "bireme.io/anything": "x"}
	ns.Labels = map[string]string{"team": "a", identity.LabelNamespace: "pay"}
	pod.Namespace = "x"
	got = IdentityOf("c1", ns, pod)
	if !reflect.DeepEqual(got.Labels, map[string]string{"app": "web"}) ||
		!reflect.DeepEqual(got.NamespaceLabels, map[string]string{"team": "a", namespaceNameLabel: "x"}) {
		t.Fatalf("IdentityOf kept reserved labels: %v / %v", got.Labels, got.NamespaceLabels)
	}
	if sa, _ := got.PodLabel(identity.LabelServiceAccount); sa != "builder" {
		t.Fatalf("service account pseudo-label %q, want builder", sa)
	}
	if got := IgnoredReservedLabels(pod); !reflect.DeepEqual(got, []string{"bireme.io/anything=x", "bireme.io/service-account=payments"}) {
		t.Fatalf("IgnoredReservedLabels = %v", got)
	}
}
