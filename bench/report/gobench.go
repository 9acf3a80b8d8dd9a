package report

import (
	"bufio"
	"strconv"
	"strings"
)

// ParseGoBench extracts the benchmark lines of `go test -bench -benchmem`
// output; the package of each comes from the preceding "pkg:" line. Lines it
// does not recognize are ignored.
func ParseGoBench(out string) []Micro {
	var res []Micro
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(p, "github.com/bireme/bireme/")
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || f[3] != "ns/op" {
			continue
		}
		iters, err1 := strconv.ParseInt(f[1], 10, 64)
		ns, err2 := strconv.ParseFloat(f[2], 64)
		if err1 != nil || err2 != nil {
			continue
		}
		m := Micro{Package: pkg, Name: f[0], Iterations: iters, NsPerOp: ns, BytesPerOp: -1, AllocsPerOp: -1}
		// Further "value unit" pairs: B/op, allocs/op and custom metrics.
		for i := 4; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "B/op":
				m.BytesPerOp = int64(v)
			case "allocs/op":
				m.AllocsPerOp = int64(v)
			default:
				m.Extra = append(m.Extra, Metric{Value: v, Unit: f[i+1]})
			}
		}
		res = append(res, m)
	}
	return res
}

// HandshakeTarget checks issue 6's goal "handshake crypto for a known peer
// < 10 µs per side" on the tokens package's benchmark that reports per-side
// times (client-ns/op and server-ns/op of a Handshake/known-peer benchmark).
func HandshakeTarget(ms []Micro) (Target, bool) {
	for _, m := range ms {
		if m.Package != "tokens" || !strings.Contains(m.Name, "Handshake/known-peer") {
			continue
		}
		worst := -1.0
		for _, e := range m.Extra {
			if e.Unit == "client-ns/op" || e.Unit == "server-ns/op" {
				worst = max(worst, e.Value)
			}
		}
		if worst < 0 {
			continue
		}
		us := worst / 1000
		return Target{Goal: "handshake crypto, known peer, slower side (µs, tokens " + m.Name + ") < 10", Measured: us, Limit: 10, Met: us < 10}, true
	}
	return Target{}, false
}
