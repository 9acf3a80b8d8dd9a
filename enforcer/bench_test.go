package enforcer

import (
	"context"
	"io"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
)

// BenchmarkConnect measures connection setup between two namespaces on a
// veth: connect, 1-byte request, 1-byte response, close. "plain" has no
// rules and no enforcer; "bireme" is the lab with mutual authentication
// and policy (peer already seen); "bireme-q2" the same with two queues per
// workload. Reported: conn/s, and the connect()
// latency p50/p99 in microseconds. Run with
//
//	go test -run XXX -bench Connect -benchtime 2000x ./enforcer
func BenchmarkConnect(b *testing.B) {
	netnstest.RequireNamespaces(b)
	b.Run("plain", func(b *testing.B) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		p := netnstest.Prefix()
		srv, cli := netnstest.NewNS(b, p+"-ps"), netnstest.NewNS(b, p+"-pc")
		if err := netns.Veth(ctx, srv, p+"s", cli, p+"c"); err != nil {
			b.Fatal(err)
		}
		if err := srv.Exec(ctx, "ip", "addr", "add", "198.18.7.1/24", "dev", p+"s"); err != nil {
			b.Fatal(err)
		}
		if err := cli.Exec(ctx, "ip", "addr", "add", "198.18.7.2/24", "dev", p+"c"); err != nil {
			b.Fatal(err)
		}
		benchConnect(b, srv, cli)
	})
	b.Run("bireme", func(b *testing.B) {
		l := newLab(b, 1)
		benchConnect(b, l.web, l.client)
	})
	// Two queues per workload (--queue-balance). The kernel picks the
	// queue by a hash of the address pair only, so one client talking to
	// one server stays on one queue: this measures the cost of the second
	// reader, not a speed-up (which needs many peers).
	b.Run("bireme-q2", func(b *testing.B) {
		l := newLab(b, 2)
		benchConnect(b, l.web, l.client)
	})
}

func benchConnect(b *testing.B, srv, cli *netns.NS) {
	serveWith(b, srv, "198.18.7.1:8080", func(c net.Conn) {
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err == nil {
			_, _ = c.Write(one[:])
		}
	})
	for _, clients := range []int{1, 8} {
		b.Run(map[int]string{1: "c1", 8: "c8"}[clients], func(b *testing.B) {
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			work := make(chan struct{}, b.N)
			for range b.N {
				work <- struct{}{}
			}
			close(work)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range work {
						t0 := time.Now()
						c, err := dialFrom(cli, "", "198.18.7.1:8080", 5*time.Second)
						d := time.Since(t0)
						if err != nil {
							b.Error(err)
							return
						}
						var one [1]byte
						_, _ = c.Write([]byte{1})
						_, _ = io.ReadFull(c, one[:])
						c.Close()
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if len(lat) == 0 {
				return
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "conn/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
