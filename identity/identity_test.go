package identity

import "testing"

func TestDigest(t *testing.T) {
	base := func() *Identity {
		return &Identity{
			Cluster: "c1", Namespace: "x", Pod: "a", ServiceAccount: "default",
			Labels:          map[string]string{"app": "web", "tier": "front"},
			NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "x"},
			Ports:           []Port{{Name: "http", Protocol: "TCP", Port: 80}, {Name: "dns", Protocol: "UDP", Port: 53}},
		}
	}
	ref := base().Digest()
	tests := []struct {
		name   string
		change func(*Identity)
		same   bool
	}{
		{"unchanged", func(*Identity) {}, true},
		{"port order", func(id *Identity) { id.Ports[0], id.Ports[1] = id.Ports[1], id.Ports[0] }, true},
		{"clone", func(id *Identity) { *id = *id.Clone() }, true},
		{"label value", func(id *Identity) { id.Labels["app"] = "db" }, false},
		{"label moved to namespace", func(id *Identity) { delete(id.Labels, "tier"); id.NamespaceLabels["tier"] = "front" }, false},
		{"cluster", func(id *Identity) { id.Cluster = "c2" }, false},
		{"field boundary", func(id *Identity) { id.Namespace, id.Pod = "xa", "" }, false},
		{"port number", func(id *Identity) { id.Ports[0].Port = 81 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := base()
			tt.change(id)
			if got := id.Digest() == ref; got != tt.same {
				t.Fatalf("digest equal = %v, want %v", got, tt.same)
			}
		})
	}
}

func TestNamedPort(t *testing.T) {
	id := &Identity{Ports: []Port{{Name: "http", Port: 8080}, {Name: "dns", Protocol: "UDP", Port: 53}}}
	if p, ok := id.NamedPort("http", "TCP"); !ok || p != 8080 {
		t.Fatalf("http = %d %v", p, ok)
	}
	if _, ok := id.NamedPort("dns", "TCP"); ok {
		t.Fatal("dns resolved for TCP")
	}
	if p, ok := id.NamedPort("dns", "udp"); !ok || p != 53 {
		t.Fatalf("dns/udp = %d %v", p, ok)
	}
}
