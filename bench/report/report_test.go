package report

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/bireme/bireme/bench/workload"
)

func TestParseGoBench(t *testing.T) {
	out := `goos: linux
goarch: amd64
pkg: github.com/bireme/bireme/tokens
cpu: Some CPU
BenchmarkSign-2        	   20000	     51234 ns/op	    1024 B/op	      12 allocs/op
BenchmarkVerify/cached-2 	 1000000	      1050.5 ns/op	       0 B/op	       0 allocs/op
BenchmarkHandshake/known-peer-2 	  102426	     11254 ns/op	      5581 client-ns/op	      5602 server-ns/op	    4686 B/op	      16 allocs/op
PASS
ok  	github.com/bireme/bireme/tokens	3.1s
pkg: github.com/bireme/bireme/policy
BenchmarkDecide-2	5000000	250 ns/op
BenchmarkBroken-2	x	250 ns/op
`
	got := ParseGoBench(out)
	want := []Micro{
		{"tokens", "BenchmarkSign-2", 20000, 51234, 1024, 12, nil},
		{"tokens", "BenchmarkVerify/cached-2", 1000000, 1050.5, 0, 0, nil},
		{"tokens", "BenchmarkHandshake/known-peer-2", 102426, 11254, 4686, 16, []Metric{{5581, "client-ns/op"}, {5602, "server-ns/op"}}},
		{"policy", "BenchmarkDecide-2", 5000000, 250, -1, -1, nil},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	tg, ok := HandshakeTarget(got)
	if !ok || tg.Measured != 5.602 || !tg.Met {
		t.Fatalf("handshake target %+v %v", tg, ok)
	}
	if _, ok := HandshakeTarget(got[:1]); ok {
		t.Fatal("handshake target without the benchmark")
	}
}

func TestMedianAndPercentiles(t *testing.T) {
	tests := []struct {
		xs       []float64
		median   float64
		p50, p99 float64
	}{
		{nil, 0, 0, 0},
		{[]float64{3}, 3, 3, 3},
		{[]float64{4, 1, 3, 2}, 2.5, 2, 4},
		{[]float64{5, 1, 3}, 3, 3, 5},
	}
	for _, tt := range tests {
		if got := Median(tt.xs); got != tt.median {
			t.Errorf("Median(%v) = %v want %v", tt.xs, got, tt.median)
		}
		p50, p99 := Percentiles(tt.xs)
		if p50 != tt.p50 || p99 != tt.p99 {
			t.Errorf("Percentiles(%v) = %v,%v want %v,%v", tt.xs, p50, p99, tt.p50, tt.p99)
		}
	}
}

func sampleResults() *Results {
	conc := []int{1, 8}
	load := func(c int, rate, p50 float64, completed, attempts int, cpu float64) *Load {
		return &Load{Concurrency: c, EnforcerCPU: cpu, WindowS: 1, Result: workload.LoadResult{
			Attempts: attempts, Completed: completed, Failed: attempts - completed, ConnPerS: rate,
			ConnectP50us: p50, ConnectP99us: 2 * p50, TxnP50us: 3 * p50, TxnP99us: 4 * p50,
			FailP50us: 500000, FailP99us: 510000,
		}}
	}
	plain := &Case{ID: 1, Key: "plain", Name: "plain TCP", Rounds: []*Round{
		{Round: 1, Loads: []*Load{load(1, 1000, 100, 1000, 1000, 0), load(8, 4000, 200, 4000, 4000, 0)}, Bulk: &workload.BulkResult{Gbps: 10}},
	}}
	tls := &Case{ID: 6, Key: "mtls", Name: "mutual TLS", Rounds: []*Round{
		{Round: 1, Loads: []*Load{load(1, 250, 1000, 250, 250, 0), load(8, 500, 2000, 500, 500, 0)}, Bulk: &workload.BulkResult{Gbps: 5}},
	}}
	allowed := &Case{ID: 4, Key: "bireme-allowed", Name: "Bireme allowed", Rounds: []*Round{
		{Round: 1, IdleCPUPerS: 0.1, Loads: []*Load{load(1, 500, 200, 500, 500, 0.5), load(8, 2000, 400, 2000, 2000, 2)}, Bulk: &workload.BulkResult{Gbps: 9.9},
			Procs: []Proc{{Name: "enforce n1", PeakRSSMB: 30}, {Name: "enforce n2", PeakRSSMB: 40}}},
	}}
	denied := &Case{ID: 7, Key: "bireme-denied", Name: "Bireme denied", Rounds: []*Round{
		{Round: 1, Loads: []*Load{load(1, 0, 0, 0, 2, 0.001), load(8, 0, 0, 0, 16, 0.008)}, Procs: []Proc{{Name: "enforce n2", PeakRSSMB: 20}}},
	}}
	missing := &Case{ID: 5, Key: "bireme-cold", Name: "Bireme first contact", Unavailable: "enforcer not built"}
	cases := []*Case{plain, allowed, missing, tls, denied}
	for _, c := range cases {
		Summarize(c, conc, c.Key == "bireme-denied")
	}
	r := &Results{Date: "2026-11-23T17:00:00Z", Command: "go run ./bench", Cases: cases,
		Settings: Settings{Rounds: 1, Concurrency: conc, BulkBytes: 1 << 30}}
	r.Ratios = Ratios(cases, conc, 1, 6)
	r.Targets = Targets(r.Ratios, conc)
	return r
}

func TestSummaryRatiosTargets(t *testing.T) {
	r := sampleResults()
	allowed := r.Cases[1].Summary
	if allowed.ConnPerS[0] != 500 || allowed.ConnectP50us != 200 || allowed.BulkGbps != 9.9 || allowed.PeakRSSMB != 40 {
		t.Fatalf("allowed summary: %+v", allowed)
	}
	// 2.5 CPU seconds over 2500 connections.
	if got := allowed.CPUPer10k; got < 9.99 || got > 10.01 {
		t.Fatalf("CPU per 10k = %v, want 10", got)
	}
	// Idle 0.1 CPU-s/s over two 1 s windows: 0.2 s of the 2.5 s are idle cost.
	if got := allowed.CPUPer10kNet; got < 9.19 || got > 9.21 || allowed.IdleCPUms != 100 {
		t.Fatalf("net CPU per 10k = %v (want 9.2), idle %v ms/s", got, allowed.IdleCPUms)
	}
	denied := r.Cases[4].Summary
	if denied.GiveUpP50us != 500000 || denied.Attempts[1] != 16 || denied.Connected != 0 {
		t.Fatalf("denied summary: %+v", denied)
	}
	if r.Cases[2].Summary != nil {
		t.Fatal("unavailable case got a summary")
	}
	if v, ok := Lookup(r.Ratios, 4, 1, "conn_per_s_c1"); !ok || v != 0.5 {
		t.Fatalf("ratio 4/1 c1 = %v %v", v, ok)
	}
	if v, ok := Lookup(r.Ratios, 4, 6, "connect_p50"); !ok || v != 0.2 {
		t.Fatalf("ratio 4/6 p50 = %v %v", v, ok)
	}
	if _, ok := Lookup(r.Ratios, 5, 1, "conn_per_s_c1"); ok {
		t.Fatal("ratio for an unavailable case")
	}
	met := map[string]bool{}
	for _, tg := range r.Targets {
		met[tg.Goal] = tg.Met
	}
	want := map[string]bool{
		"case 4 conn/s (c=1) >= 0.45x case 1":    true,
		"case 4 conn/s (c=8) >= 0.45x case 1":    true,
		"case 4 connect p50 <= 0.25x case 6":     true,
		"case 4 bulk throughput >= 0.98x case 1": true,
	}
	for g, w := range want {
		if m, ok := met[g]; !ok || m != w {
			t.Errorf("target %q: met=%v present=%v", g, m, ok)
		}
	}
}

func TestWriteMarkdown(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteMarkdown(&buf, sampleResults(), "benchmarks.json"); err != nil {
		t.Fatal(err)
	}
	md := buf.String()
	for _, want := range []string{
		"# Benchmarks", "| 1 | plain TCP | 1000 | 4000 |", "not available: enforcer not built",
		"| 4 | Bireme allowed | 0.50x |", "attempts, all timed out", "benchmarks.json",
		"Bireme, allowed, known peer (case 4): 0.50x the connection rate of plain TCP with 8 clients, 4.00x that of mutual TLS; connect p50 0.20x mutual TLS's; bulk throughput 0.99x plain TCP's.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

// TestRatiosPairRounds checks that ratios pair cases within a round: the base
// ran fast in round 1 only, which would skew a ratio of medians.
func TestRatiosPairRounds(t *testing.T) {
	mk := func(id int, rates ...float64) *Case {
		c := &Case{ID: id, Key: fmt.Sprint(id)}
		for i, r := range rates {
			c.Rounds = append(c.Rounds, &Round{Round: i + 1, Loads: []*Load{{Concurrency: 1, Result: workload.LoadResult{
				Attempts: 1, Completed: 1, ConnPerS: r, ConnectP50us: 1000 / r}}}})
		}
		Summarize(c, []int{1}, false)
		return c
	}
	a, base := mk(4, 100, 200, 900), mk(1, 1000, 200, 900)
	rs := Ratios([]*Case{base, a}, []int{1}, 1)
	if v, ok := Lookup(rs, 4, 1, "conn_per_s_c1"); !ok || v != 1 {
		t.Fatalf("paired ratio = %v %v, want 1 (a ratio of medians would give %v)", v, ok, 200.0/900)
	}
	if v, ok := Lookup(rs, 4, 1, "connect_p50"); !ok || v != 1 {
		t.Fatalf("paired latency ratio = %v %v, want 1", v, ok)
	}
	// No common round: the summaries are compared.
	b2 := mk(6, 50)
	b2.Rounds[0].Round = 9
	rs = Ratios([]*Case{b2, a}, []int{1}, 6)
	if v, ok := Lookup(rs, 4, 6, "conn_per_s_c1"); !ok || v != 4 {
		t.Fatalf("fallback ratio = %v %v, want 4", v, ok)
	}
}

func TestFloodComparison(t *testing.T) {
	load := func(n int, p50, p99, rate float64, done, tried int) *Load {
		return &Load{Concurrency: n, Result: workload.LoadResult{ConnectP50us: p50, ConnectP99us: p99, ConnPerS: rate, Completed: done, Attempts: tried}}
	}
	c := &Case{ID: 8, Rounds: []*Round{
		{Quiet: []*Load{load(1, 100, 200, 1000, 10, 10)}, Loads: []*Load{load(1, 150, 800, 500, 9, 10)}},
		{Quiet: []*Load{load(1, 200, 400, 800, 10, 10)}, Loads: []*Load{load(1, 200, 400, 800, 10, 10)}},
		{Quiet: []*Load{load(1, 100, 100, 1000, 10, 10)}, Loads: []*Load{load(1, 300, 100, 1000, 10, 10)}},
	}}
	rows := FloodComparison(c, []int{1, 8})
	if len(rows) != 1 {
		t.Fatalf("%d rows, want 1 (no runs at concurrency 8)", len(rows))
	}
	r := rows[0]
	if r.P50Ratio != 1.5 || r.P99Ratio != 1 || r.ConnPerSRatio != 1 || r.QuietP50us != 100 || r.FloodP50us != 200 {
		t.Errorf("row %+v", r)
	}
	if r.QuietSuccess != 1 || r.FloodSuccess != 29.0/30 {
		t.Errorf("success %v / %v", r.QuietSuccess, r.FloodSuccess)
	}
	if FloodComparison(&Case{Rounds: []*Round{{Loads: []*Load{load(1, 1, 1, 1, 1, 1)}}}}, []int{1}) != nil {
		t.Error("a case without quiet runs has a flood comparison")
	}
}
