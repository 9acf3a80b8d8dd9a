package k8s

import (
	"net/netip"
	"testing"

	"github.com/bireme/bireme/policy"
)

// FuzzLoad feeds arbitrary bytes to the Decoder as YAML and as JSON. It must
// never panic; whatever it accepts must compile (the Decoder and Compile
// validate alike, and policy.Compile interprets all of it) and be decidable.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(worldYAML))
	f.Add([]byte(np("x", "p", "  podSelector: {matchExpressions: [{key: app, operator: In, values: [a]}]}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/15, except: [198.18.1.0/24]}}], ports: [{port: 80, endPort: 90}, {port: http, protocol: UDP}]}]\n  egress: [{to: [{namespaceSelector: {}, podSelector: {}}]}]")))
	f.Add([]byte(`{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}]}`))
	f.Add([]byte("---\n---\n# nothing\n"))
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}], initContainers: [{name: s, restartPolicy: Always, ports: [{name: s, containerPort: 9}]}]}"))
	f.Add([]byte("a: &a [*a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, name := range []string{"fuzz.yaml", "fuzz.json"} {
			objs, err := Decode(name, data)
			if err != nil {
				continue
			}
			e, err := Compile(objs)
			if err != nil {
				t.Fatalf("Decoder accepted what Compile rejects: %v", err)
			}
			for _, p := range objs.Pods {
				id := IdentityOf("c1", objs.Namespace(p.Namespace), p)
				for _, peer := range []policy.Peer{{Identity: id}, {Addr: netip.MustParseAddr("198.18.1.1")}} {
					e.Decide(id, peer, policy.Ingress, 80, "TCP")
					e.Decide(id, peer, policy.Egress, 80, "UDP")
				}
			}
		}
	})
}
