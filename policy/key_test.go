package policy

import (
	"testing"

	"github.com/bireme/bireme/identity"
)

// TestKeyOf: the cache key changes with every field (a shared key would
// hand one workload another's verdict) and not with port order.
func TestKeyOf(t *testing.T) {
	base := func() *identity.Identity {
		return &identity.Identity{
			Cluster: "c1", Namespace: "x", Pod: "a", ServiceAccount: "default",
			Labels:          map[string]string{"app": "web", "tier": "front"},
			NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "x"},
			Ports:           []identity.Port{{Name: "http", Protocol: "TCP", Port: 80}, {Name: "dns", Protocol: "UDP", Port: 53}},
		}
	}
	ref := keyOf(base())
	tests := []struct {
		name   string
		change func(*identity.Identity)
		same   bool
	}{
		{"unchanged", func(*identity.Identity) {}, true},
		{"port order", func(id *identity.Identity) { id.Ports[0], id.Ports[1] = id.Ports[1], id.Ports[0] }, true},
		{"clone", func(id *identity.Identity) { *id = *id.Clone() }, true},
		{"label value", func(id *identity.Identity) { id.Labels["app"] = "db" }, false},
		{"label added", func(id *identity.Identity) { id.Labels["x"] = "" }, false},
		{"label moved to namespace", func(id *identity.Identity) {
			delete(id.Labels, "tier")
			id.NamespaceLabels["tier"] = "front"
		}, false},
		{"key/value boundary", func(id *identity.Identity) { id.Labels = map[string]string{"appweb": "", "tier": "front"} }, false},
		{"cluster", func(id *identity.Identity) { id.Cluster = "c2" }, false},
		{"pod", func(id *identity.Identity) { id.Pod = "b" }, false},
		{"field boundary", func(id *identity.Identity) { id.Namespace, id.Pod = "xa", "" }, false},
		{"service account", func(id *identity.Identity) { id.ServiceAccount = "sa" }, false},
		{"port number", func(id *identity.Identity) { id.Ports[0].Port = 81 }, false},
		{"port protocol", func(id *identity.Identity) { id.Ports[0].Protocol = "SCTP" }, false},
		{"many labels and ports", func(id *identity.Identity) {
			for i := range 40 {
				id.Labels[string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
				id.Ports = append(id.Ports, identity.Port{Name: "p" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Port: uint16(i)})
			}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := base()
			tt.change(id)
			if got := keyOf(id) == ref; got != tt.same {
				t.Fatalf("key equal = %v, want %v", got, tt.same)
			}
		})
	}
}

// TestBoundedCache: the cache never grows past its capacity and keeps
// answering what it holds.
func TestBoundedCache(t *testing.T) {
	c := newBoundedCache[identityKey, int](64)
	for i := range 10000 {
		var k identityKey
		k[0], k[1], k[2] = byte(i), byte(i>>8), byte(i>>16)
		c.put(k, i)
		if v, ok := c.get(k); !ok || v != i {
			t.Fatalf("just stored %d, got %d %v", i, v, ok)
		}
	}
	n := 0
	for i := range c.shards {
		n += len(c.shards[i].m)
	}
	if n > 64 {
		t.Fatalf("cache holds %d entries, capacity 64", n)
	}
}
