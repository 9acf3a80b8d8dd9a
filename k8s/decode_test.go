package k8s

import (
	"fmt"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
)

// np renders a NetworkPolicy document; spec is YAML indented by two spaces.
func np(ns, name, spec string) string {
	return fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: \"%s\", namespace: \"%s\"}\nspec:\n%s\n", name, ns, spec)
}

// TestDecodeBadInput: every malformed object is rejected with the file, the
// object's Kind namespace/name and the field path.
func TestDecodeBadInput(t *testing.T) {
	pol := func(spec string) string { return np("x", "allow-web", spec) }
	tests := []struct {
		name    string
		content string
		want    []string // substrings of the error
	}{
		{"endPort below port", pol("  podSelector: {}\n  ingress: [{ports: [{port: 80}, {port: 90, endPort: 79}]}]"),
			[]string{"policies.yaml: NetworkPolicy x/allow-web: ", "spec.ingress[0].ports[1].endPort", "must be >= port"}},
		{"endPort without port", pol("  podSelector: {}\n  ingress: [{ports: [{endPort: 79}]}]"),
			[]string{"NetworkPolicy x/allow-web", "spec.ingress[0].ports[0].port: Required"}},
		{"endPort with named port", pol("  podSelector: {}\n  ingress: [{ports: [{port: http, endPort: 79}]}]"),
			[]string{"spec.ingress[0].ports[0].endPort: Forbidden"}},
		{"port out of range", pol("  podSelector: {}\n  egress: [{ports: [{port: 70000}]}]"),
			[]string{"spec.egress[0].ports[0].port", "70000"}},
		{"port zero", pol("  podSelector: {}\n  egress: [{ports: [{port: 0}]}]"),
			[]string{"spec.egress[0].ports[0].port"}},
		{"bad port name", pol("  podSelector: {}\n  ingress: [{ports: [{port: http_web}]}]"),
			[]string{"spec.ingress[0].ports[0].port", "http_web"}},
		{"bad protocol", pol("  podSelector: {}\n  ingress: [{ports: [{protocol: ICMP, port: 1}]}]"),
			[]string{"spec.ingress[0].ports[0].protocol", "ICMP"}},
		{"bad operator", pol("  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}"),
			[]string{"spec.podSelector.matchExpressions[0].operator", "Equals"}},
		{"In without values", pol("  podSelector: {}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: In}]}}]}]"),
			[]string{"spec.ingress[0].from[0].podSelector.matchExpressions[0].values"}},
		{"Exists with values", pol("  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}}]}]"),
			[]string{"spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values"}},
		{"bad label value in matchLabels", pol("  podSelector: {matchLabels: {app: 'a b'}}"),
			[]string{"spec.podSelector.matchLabels", "a b"}},
		{"bad label key", pol("  podSelector: {matchExpressions: [{key: 'a/b/c', operator: Exists}]}"),
			[]string{"spec.podSelector.matchExpressions[0].key"}},
		{"unknown reserved key", pol("  podSelector: {matchLabels: {bireme.io/serviceaccount: web}}"),
			[]string{"policies.yaml: NetworkPolicy x/allow-web: ", "spec.podSelector.matchLabels", "bireme.io/serviceaccount", "reserved"}},
		{"service account on the namespace side", pol("  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: bireme.io/service-account, operator: Exists}]}}]}]"),
			[]string{"spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].key", "podSelector"}},
		{"bad cidr", pol("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 198.18.0.0/33}}]}]"),
			[]string{"spec.egress[0].to[0].ipBlock.cidr", "198.18.0.0/33"}},
		{"missing cidr", pol("  podSelector: {}\n  egress: [{to: [{ipBlock: {except: [198.18.0.0/24]}}]}]"),
			[]string{"spec.egress[0].to[0].ipBlock.cidr: Required"}},
		{"except outside cidr", pol("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/16, except: [198.19.0.0/24]}}]}]"),
			[]string{"spec.ingress[0].from[0].ipBlock.except[0]", "strict subset"}},
		{"except equal to cidr", pol("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/16, except: [198.18.0.0/16]}}]}]"),
			[]string{"ipBlock.except[0]"}},
		{"except other family", pol("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0, except: ['::/1']}}]}]"),
			[]string{"ipBlock.except[0]"}},
		{"ipBlock with selector", pol("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/16}, podSelector: {}}]}]"),
			[]string{"spec.ingress[0].from[0]: Forbidden"}},
		{"empty peer", pol("  podSelector: {}\n  ingress: [{from: [{}]}]"),
			[]string{"spec.ingress[0].from[0]: Required"}},
		{"bad policyType", pol("  podSelector: {}\n  policyTypes: [Ingres]"),
			[]string{"spec.policyTypes[0]", "Ingres"}},
		{"bad policy name", np("x", "Allow_Web", "  podSelector: {}"),
			[]string{"NetworkPolicy x/Allow_Web", "metadata.name"}},
		{"unknown field", pol("  podSelecter: {}"),
			[]string{"policies.yaml: NetworkPolicy x/allow-web", `unknown field "spec.podSelecter"`}},
		{"field name case", pol("  PodSelector: {}"),
			[]string{"policies.yaml: NetworkPolicy x/allow-web", `unknown field "spec.PodSelector"`}},
		{"unknown nested field", pol("  podSelector: {}\n  ingress: [{from: [{podSelector: {}, nameSpaceSelector: {}}]}]"),
			[]string{`unknown field "spec.ingress[0].from[0].nameSpaceSelector"`}},
		{"wrong type", pol("  podSelector: {}\n  ingress: [{ports: [{port: [80]}]}]"),
			[]string{"policies.yaml: NetworkPolicy x/allow-web"}},
		{"pod with bad label", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {'-bad': v}}\nspec: {containers: [{name: c}]}",
			[]string{"policies.yaml: Pod x/a", "metadata.labels"}},
		{"pod with duplicate port name", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}, {name: d, ports: [{name: http, containerPort: 81}]}]}",
			[]string{"Pod x/a", "spec.containers[1].ports[0].name: Duplicate"}},
		{"pod with bad port", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 0}]}]}",
			[]string{"Pod x/a", "spec.containers[0].ports[0].containerPort"}},
		{"namespace with bad name", "apiVersion: v1\nkind: Namespace\nmetadata: {name: X.Y}",
			[]string{"policies.yaml: Namespace X.Y", "metadata.name"}},
		{"unknown kind", "apiVersion: v1\nkind: Service\nmetadata: {name: s}",
			[]string{"policies.yaml: document 1", "unsupported", "Service"}},
		{"old apiVersion", "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: s}",
			[]string{"policies.yaml: document 1", "extensions/v1beta1"}},
		{"missing kind", "apiVersion: v1\nmetadata: {name: s}",
			[]string{"policies.yaml: document 1: kind: Required"}},
		{"yaml syntax", "apiVersion: v1\nkind: [Namespace\n",
			[]string{"policies.yaml: document 1"}},
		{"duplicate yaml key", "apiVersion: v1\nkind: Namespace\nkind: Namespace\nmetadata: {name: s}",
			[]string{"policies.yaml: document 1", "kind"}},
		{"bad second document", "apiVersion: v1\nkind: Namespace\nmetadata: {name: s}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: 'S S'}",
			[]string{"policies.yaml: Namespace S S", "metadata.name"}},
		{"duplicate object", np("x", "p", "  podSelector: {}") + "---\n" + np("x", "p", "  podSelector: {}"),
			[]string{"policies.yaml: NetworkPolicy x/p: duplicate object"}},
		{"unknown field in List", "apiVersion: v1\nkind: List\nitem: []",
			[]string{"policies.yaml: document 1: List", `unknown field "item"`}},
		{"bad item in List", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: ok}\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: Not_OK}",
			[]string{"policies.yaml: Namespace Not_OK", "metadata.name", "List items[1]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode("policies.yaml", []byte(tt.content))
			if err == nil {
				t.Fatal("decoded without error")
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
		})
	}
}

// TestDecodeFormats: multi-document YAML, JSON streams, Lists, comments,
// empty documents, defaulted namespaces, and duplicates across files.
func TestDecodeFormats(t *testing.T) {
	files := []struct{ name, content string }{
		{"a.yaml", "# leading comment\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n---\n" +
			np("x", "p1", "  podSelector: {}") + "---\n# trailing\n"},
		{"b.json", `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{"containers":[{"name":"c"}]}}
{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicyList","items":[{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p2","namespace":"x"},"spec":{"podSelector":{}}}]}`},
		{"c.yml", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: w}\n"},
	}
	var d Decoder
	for _, f := range files {
		if err := d.Decode(f.name, []byte(f.content)); err != nil {
			t.Fatal(err)
		}
	}
	objs := d.Objects()
	if len(objs.Namespaces) != 2 || len(objs.Pods) != 1 || len(objs.Policies) != 2 {
		t.Fatalf("got %d namespaces, %d pods, %d policies; want 2, 1, 2", len(objs.Namespaces), len(objs.Pods), len(objs.Policies))
	}
	if objs.Pods[0].Namespace != "default" {
		t.Fatalf("pod namespace %q, want default", objs.Pods[0].Namespace)
	}
	if _, err := Compile(objs); err != nil {
		t.Fatal(err)
	}
	err := d.Decode("again.yaml", []byte(files[0].content))
	if err == nil || !strings.Contains(err.Error(), "again.yaml: Namespace x: duplicate object (first defined in a.yaml)") {
		t.Fatalf("same objects in a second file: %v", err)
	}
}

// TestCompileRejectsInvalid: objects from another source (informers) are
// validated by Compile itself, and nothing is built.
func TestCompileRejectsInvalid(t *testing.T) {
	objs, err := Decode("world.yaml", []byte(worldYAML+"---\n"+np("x", "ok", "  podSelector: {}")))
	if err != nil {
		t.Fatal(err)
	}
	bad := objs.Policies[0].DeepCopy()
	bad.Name = "bad"
	bad.Spec.PolicyTypes = []networkingv1.PolicyType{"Sideways"}
	objs.Policies = append(objs.Policies, bad)
	e, err := Compile(objs)
	if err == nil || e != nil {
		t.Fatalf("Compile = %v, %v; want nil engine and an error", e, err)
	}
	if !strings.Contains(err.Error(), "NetworkPolicy x/bad: spec.policyTypes[0]") {
		t.Fatalf("error %q", err)
	}
	objs.Policies = append(objs.Policies[:1], objs.Policies[0])
	if _, err := Compile(objs); err == nil || !strings.Contains(err.Error(), "duplicate") {
		t.Fatalf("duplicate policy: %v", err)
	}
	objs.Policies = objs.Policies[:1]
	objs.Pods[0] = objs.Pods[0].DeepCopy()
	objs.Pods[0].Labels = map[string]string{"-bad": "v"}
	if _, err := Compile(objs); err == nil || !strings.Contains(err.Error(), "Pod x/a: metadata.labels") {
		t.Fatalf("pod with a bad label: %v", err)
	}
}

// worldYAML is a small world: namespaces x (team=a) and y, pods x/a
// (app=web, port http:80), x/c (app=client) and y/b.
const worldYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: "y"}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec:
  containers:
  - name: c
    ports: [{name: http, containerPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: "y", labels: {app: client}}
spec: {containers: [{name: c}]}
`
