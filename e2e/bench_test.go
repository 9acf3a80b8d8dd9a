package e2e

import (
	"testing"
	"time"
)

// BenchmarkConnect measures one TCP connect (handshake completed at the
// client, then closed) between two nodes through the router: "bireme" is
// x/web -> x/cache with both nodes' enforcers on the path (token, verify,
// policy on both sides), "plain" is the same path between two unprotected
// hosts of the same nodes. ns/op is the connect latency; its inverse the
// sequential connection rate.
//
//	go test -run '^$' -bench Connect -benchtime 2000x ./e2e
func BenchmarkConnect(b *testing.B) {
	spec := modelSpec(false)
	spec.Files = append(spec.Files, "testdata/cluster/plain.yaml")
	c := newCluster(b, spec)
	for _, pair := range []struct{ name, from, to string }{
		{"bireme", "web", "cache"},
		{"plain", "plain", "mallory"},
	} {
		b.Run(pair.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				conn, err := c.dial(pair.from, pair.to, 8080, 3*time.Second)
				if err != nil {
					b.Fatalf("%s -> %s: %v", pair.from, pair.to, err)
				}
				conn.Close()
			}
		})
	}
}
