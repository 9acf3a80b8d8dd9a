package policy

import (
	"net/netip"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to the loader as YAML and as JSON. It must
// never panic; whatever it accepts must compile (the loader and Compile
// validate alike) and be decidable.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(fixtureYAML))
	f.Add([]byte(np("x", "p", "  podSelector: {matchExpressions: [{key: app, operator: In, values: [a]}]}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/15, except: [198.18.1.0/24]}}], ports: [{port: 80, endPort: 90}, {port: http, protocol: UDP}]}]\n  egress: [{to: [{namespaceSelector: {}, podSelector: {}}]}]")))
	f.Add([]byte(`{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}]}`))
	f.Add([]byte("---\n---\n# nothing\n"))
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}], initContainers: [{name: s, restartPolicy: Always, ports: [{name: s, containerPort: 9}]}]}"))
	f.Add([]byte("a: &a [*a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, name := range []string{"fuzz.yaml", "fuzz.json"} {
			var l loader
			if err := l.loadBytes(name, data); err != nil {
				continue
			}
			e, err := Compile(l.objs)
			if err != nil {
				t.Fatalf("loader accepted what Compile rejects: %v", err)
			}
			for _, p := range l.objs.Pods {
				id := IdentityOf("c1", l.objs.Namespace(p.Namespace), p)
				for _, peer := range []Peer{{Identity: id}, {Addr: netip.MustParseAddr("198.18.1.1")}} {
					e.Decide(id, peer, Ingress, 80, "TCP")
					e.Decide(id, peer, Egress, 80, "UDP")
				}
			}
		}
	})
}
