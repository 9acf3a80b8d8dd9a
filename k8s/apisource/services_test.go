package apisource

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bireme/bireme/agent/desired"
)

// TestServicesAndAddresses: the Service addresses cluster-wide are
// frontends; only this node's running pods a Service selects, in its
// namespace, at the resolved target port, are its backends; pod addresses
// map to the pods holding them, except the host network's and shared ones.
func TestServicesAndAddresses(t *testing.T) {
	web := pod("x", "web", "n1", "198.18.0.2", corev1.PodRunning, map[string]string{"app": "web"})
	web.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}
	remote := pod("x", "web-2", "n2", "198.18.0.3", corev1.PodRunning, map[string]string{"app": "web"})
	otherNS := pod("y", "web", "n1", "198.18.0.4", corev1.PodRunning, map[string]string{"app": "web"})
	pending := pod("x", "web-3", "n1", "", corev1.PodPending, map[string]string{"app": "web"})
	host := pod("x", "host", "n1", "198.18.0.9", corev1.PodRunning, nil)
	host.Spec.HostNetwork = true
	twinA := pod("x", "twin-a", "n2", "198.18.0.7", corev1.PodRunning, nil)
	twinB := pod("x", "twin-b", "n2", "198.18.0.7", corev1.PodRunning, nil)
	svc := func(name, ip string, selector map[string]string, ports ...corev1.ServicePort) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Selector: selector, Ports: ports}}
	}
	client := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"team": "blue"}}},
		web, remote, otherNS, pending, host, twinA, twinB,
		svc("named", "198.19.0.1", map[string]string{"app": "web"},
			corev1.ServicePort{Port: 80, TargetPort: intstr.FromString("http")},
			corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP}),
		svc("numbered", "198.19.0.2", map[string]string{"app": "web"}, corev1.ServicePort{Port: 81, TargetPort: intstr.FromInt32(8080)}),
		svc("default-target", "198.19.0.3", map[string]string{"app": "web"}, corev1.ServicePort{Port: 8080}),
		svc("nobody", "198.19.0.4", map[string]string{"app": "db"}, corev1.ServicePort{Port: 80}),
		svc("selectorless", "198.19.0.5", nil, corev1.ServicePort{Port: 80}),
		svc("headless", "None", map[string]string{"app": "web"}, corev1.ServicePort{Port: 80}),
	)
	scan := &fixedScan{byAddr: map[netip.Addr][]string{}}
	s := runSource(t, Config{Client: client, Node: "n1", Cluster: "c1", NetNS: scan, Verify: time.Hour})
	st := s.until("start", func(st desired.State) bool { return st.Services != nil && st.Addresses != nil })

	ap := netip.MustParseAddrPort
	wantFrontends := map[netip.AddrPort]desired.TargetPort{
		ap("198.19.0.1:80"):   {Name: "http"},
		ap("198.19.0.2:81"):   {Number: 8080},
		ap("198.19.0.3:8080"): {Number: 8080},
		ap("198.19.0.4:80"):   {Number: 80},
	}
	if len(st.Services.Frontends) != len(wantFrontends) {
		t.Errorf("frontends %v, want %v (no UDP port, selectorless or headless Service)", st.Services.Frontends, wantFrontends)
	}
	for fe, want := range wantFrontends {
		if got, ok := st.Services.Frontend(fe); !ok || got != want {
			t.Errorf("frontend %s: %+v, %v; want %+v", fe, got, ok, want)
		}
	}
	for _, tt := range []struct {
		dialed, observed string
		want             bool
	}{
		{"198.19.0.1:80", "198.18.0.2:8080", true},    // named target port resolved on the pod
		{"198.19.0.2:81", "198.18.0.2:8080", true},    // numbered
		{"198.19.0.3:8080", "198.18.0.2:8080", true},  // target port = port
		{"198.19.0.1:80", "198.18.0.2:80", false},     // not the target port
		{"198.19.0.4:80", "198.18.0.2:80", false},     // a Service that does not select web
		{"198.19.0.5:80", "198.18.0.2:80", false},     // selectorless: endpoints written by hand
		{"198.19.0.1:80", "198.18.0.4:8080", false},   // same labels, another namespace
		{"198.19.0.1:53", "198.18.0.2:53", false},     // UDP port
		{"198.18.0.3:8080", "198.18.0.2:8080", false}, // another pod's address: a relay
	} {
		if got := st.Services.Translates(ap(tt.dialed), ap(tt.observed)); got != tt.want {
			t.Errorf("Translates(%s, %s) = %v, want %v", tt.dialed, tt.observed, got, tt.want)
		}
	}

	addr := netip.MustParseAddr
	if id := st.Addresses[addr("198.18.0.3")]; id == nil || id.Ref() != "x/web-2" || id.Labels["app"] != "web" || id.NamespaceLabels["team"] != "blue" {
		t.Errorf("198.18.0.3 maps to %v, want x/web-2 with its labels and namespace labels", id)
	}
	if id := st.Addresses[addr("198.18.0.2")]; id == nil || len(id.Ports) != 1 || id.Ports[0].Name != "http" {
		t.Errorf("198.18.0.2 maps to %+v, want x/web with its named port", id)
	}
	for _, a := range []string{"198.18.0.9", "198.18.0.7"} {
		if id, ok := st.Addresses[addr(a)]; ok {
			t.Errorf("%s maps to %v: hostNetwork and shared addresses must map to no pod", a, id)
		}
	}
}
