package policy_test

import (
	"net/netip"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/policy"
)

// fixtureYAML is the small world most tests decide in:
//
//	x (team=a): a app=web  ports http:80 metrics:9090
//	            b app=db   ports http:8080
//	            c app=client
//	y (team=b): a app=web  ports http:80
//	            b app=client
//	z (none):   c app=web
const fixtureYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: "y", labels: {team: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: z}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec:
  containers:
  - name: c
    ports: [{name: http, containerPort: 80}, {name: metrics, containerPort: 9090}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: db}}
spec:
  containers:
  - name: c
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: "y", labels: {app: web}}
spec:
  containers:
  - name: c
    ports: [{name: http, containerPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: "y", labels: {app: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: z, labels: {app: web}}
spec: {containers: [{name: c}]}
`

const testCluster = "c1"

// parseObjects loads YAML documents from strings as if each were a file.
func parseObjects(t testing.TB, docs ...string) policy.Objects {
	t.Helper()
	var d k8s.Decoder
	for i, doc := range docs {
		if err := d.Decode("test"+string(rune('0'+i))+".yaml", []byte(doc)); err != nil {
			t.Fatalf("decode: %v", err)
		}
	}
	return d.Objects()
}

// compileWith compiles the fixture plus the given policy documents.
func compileWith(t testing.TB, policies ...string) *policy.Engine {
	t.Helper()
	e, err := policy.Compile(parseObjects(t, append([]string{fixtureYAML}, policies...)...))
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	return e
}

// ident returns the identity of "ns/pod" in objs, in cluster testCluster.
func ident(t testing.TB, objs policy.Objects, ref string) *identity.Identity {
	t.Helper()
	ns, name, _ := strings.Cut(ref, "/")
	p := objs.Pod(ns, name)
	if p == nil {
		t.Fatalf("no pod %s", ref)
	}
	return k8s.IdentityOf(testCluster, objs.Namespace(ns), p)
}

// peerOf parses a peer spec: "ns/pod", "c2:ns/pod" (another cluster) or an
// IP address (anonymous peer).
func peerOf(t testing.TB, objs policy.Objects, spec string) policy.Peer {
	t.Helper()
	if a, err := netip.ParseAddr(spec); err == nil {
		return policy.Peer{Addr: a}
	}
	cluster, ref, ok := strings.Cut(spec, ":")
	if !ok {
		return policy.Peer{Identity: ident(t, objs, spec), Addr: netip.MustParseAddr("198.18.0.99")}
	}
	id := ident(t, objs, ref)
	id.Cluster = cluster
	return policy.Peer{Identity: id, Addr: netip.MustParseAddr("198.18.0.99")}
}

type networkingPolicyType = networkingv1.PolicyType
