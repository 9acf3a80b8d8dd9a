package filestore

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bireme/bireme/policy"
)

func pod(ns, name, node, netns string, labels map[string]string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}}
	p.Spec.NodeName = node
	if netns != "" {
		p.Annotations = map[string]string{NetNSAnnotation: netns}
	}
	return p
}

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func TestNetNSPath(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "pod-a", want: "/run/netns/pod-a"},
		{in: "/proc/42/ns/net", want: "/proc/42/ns/net"},
		{in: "/run/netns/../netns/x", want: "/run/netns/x"},
		{in: "", wantErr: true},
		{in: "a/b", wantErr: true},
		{in: "..", wantErr: true},
		{in: ".", wantErr: true},
	}
	for _, tt := range tests {
		got, err := NetNSPath(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("NetNSPath(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestSelectWorkloads(t *testing.T) {
	nsX := namespace("x", map[string]string{"team": "blue"})
	tests := []struct {
		name         string
		objs         policy.Objects
		wantRefs     []string // in NetNS order
		wantNetNS    []string
		wantProblems []string // substrings, one per problem
	}{
		{
			name: "only this node's annotated pods",
			objs: policy.Objects{
				Namespaces: []*corev1.Namespace{nsX},
				Pods: []*corev1.Pod{
					pod("x", "a", "n1", "ns-a", nil),
					pod("x", "b", "n2", "ns-b", nil), // other node
					pod("x", "c", "n1", "", nil),     // no annotation: not ours
					pod("x", "d", "", "ns-d", nil),   // unscheduled
					pod("x", "e", "n1", "/proc/1/ns/net", nil),
				},
			},
			wantRefs:  []string{"x/e", "x/a"},
			wantNetNS: []string{"/proc/1/ns/net", "/run/netns/ns-a"},
		},
		{
			name: "bad annotation is a problem, others still selected",
			objs: policy.Objects{
				Pods: []*corev1.Pod{
					pod("x", "a", "n1", "ns-a", nil),
					pod("x", "bad", "n1", "../etc", nil),
				},
			},
			wantRefs:     []string{"x/a"},
			wantNetNS:    []string{"/run/netns/ns-a"},
			wantProblems: []string{"x/bad"},
		},
		{
			name: "two pods claiming one namespace: the first by name wins",
			objs: policy.Objects{
				Pods: []*corev1.Pod{
					pod("y", "z", "n1", "shared", nil),
					pod("x", "a", "n1", "/run/netns/shared", nil),
				},
			},
			wantRefs:     []string{"x/a"},
			wantNetNS:    []string{"/run/netns/shared"},
			wantProblems: []string{"y/z"},
		},
		{
			name: "nothing for this node",
			objs: policy.Objects{Pods: []*corev1.Pod{pod("x", "a", "n2", "ns-a", nil)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel := SelectWorkloads(tt.objs, "c1", "n1")
			var refs, paths []string
			for _, w := range sel.Workloads {
				refs = append(refs, w.Ref)
				paths = append(paths, w.NetNS)
			}
			if !reflect.DeepEqual(refs, tt.wantRefs) || !reflect.DeepEqual(paths, tt.wantNetNS) {
				t.Errorf("selected %v at %v; want %v at %v", refs, paths, tt.wantRefs, tt.wantNetNS)
			}
			if len(sel.Problems) != len(tt.wantProblems) {
				t.Fatalf("problems %q; want %d naming %v", sel.Problems, len(tt.wantProblems), tt.wantProblems)
			}
			for i, p := range tt.wantProblems {
				if !strings.Contains(sel.Problems[i], p) {
					t.Errorf("problem %q does not name %q", sel.Problems[i], p)
				}
			}
		})
	}
}

func TestSelectWorkloadsIdentity(t *testing.T) {
	objs := policy.Objects{
		Namespaces: []*corev1.Namespace{namespace("x", map[string]string{"team": "blue"})},
		Pods: []*corev1.Pod{
			pod("x", "a", "n1", "ns-a", map[string]string{"app": "web"}),
			pod("orphan", "b", "n1", "ns-b", nil), // namespace missing from the store
		},
	}
	sel := SelectWorkloads(objs, "c1", "n1")
	if len(sel.Workloads) != 2 {
		t.Fatalf("selected %d workloads, want 2", len(sel.Workloads))
	}
	a := sel.Workloads[0].Identity
	if a.Cluster != "c1" || a.Namespace != "x" || a.Pod != "a" || a.Labels["app"] != "web" || a.NamespaceLabels["team"] != "blue" {
		t.Errorf("identity of x/a = %+v", a)
	}
	b := sel.Workloads[1].Identity
	if b.Namespace != "orphan" || b.NamespaceLabels["kubernetes.io/metadata.name"] != "orphan" {
		t.Errorf("identity of orphan/b = %+v; want the namespace name label the API server adds", b)
	}
}

// TestPlacementOf: the placement covers the pods of every node, annotated
// or not (a peer's token is checked against it); a pod with no node runs
// nowhere and is unknown.
func TestPlacementOf(t *testing.T) {
	objs := policy.Objects{Pods: []*corev1.Pod{
		pod("x", "a", "n1", "ns-a", nil),
		pod("x", "b", "n2", "", nil),
		pod("", "c", "n2", "", nil),
		pod("x", "pending", "", "", nil),
	}}
	got := PlacementOf(objs)
	for _, tt := range []struct {
		ns, pod, node string
		known         bool
	}{
		{"x", "a", "n1", true},
		{"x", "b", "n2", true},
		{"default", "c", "n2", true},
		{"x", "pending", "", false},
		{"y", "a", "", false},
	} {
		if node, known := got.NodeOf(tt.ns, tt.pod); node != tt.node || known != tt.known {
			t.Errorf("NodeOf(%s, %s) = %q, %v; want %q, %v", tt.ns, tt.pod, node, known, tt.node, tt.known)
		}
	}
}
