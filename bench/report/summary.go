package report

import (
	"fmt"
	"slices"
)

// Summarize fills c.Summary from its rounds. concurrency is the list of
// client counts the load runs used; denied says the case's connections are
// expected to fail (its latency is the time to give up).
func Summarize(c *Case, concurrency []int, denied bool) {
	if c.Unavailable != "" || len(c.Rounds) == 0 {
		return
	}
	s := &Summary{ConnPerS: make([]float64, len(concurrency)), Attempts: make([]int, len(concurrency))}
	var p50s, p99s, t50s, t99s, g50s, g99s, bulks []float64
	var cpu, idle float64
	var idles []float64
	var charged int
	for _, r := range c.Rounds {
		idles = append(idles, r.IdleCPUPerS)
		for _, l := range r.Loads {
			cpu += l.EnforcerCPU
			idle += r.IdleCPUPerS * l.WindowS
			s.Connected += l.Result.Completed
			s.Failed += l.Result.Failed
			if denied {
				charged += l.Result.Attempts
			} else {
				charged += l.Result.Completed
			}
			for i, n := range concurrency {
				if l.Concurrency == n {
					s.Attempts[i] += l.Result.Attempts
				}
			}
			// Latencies come from the single-client run: the machine is
			// otherwise idle, so they are the path's own delay, not queueing.
			if l.Concurrency == 1 {
				if l.Result.Completed > 0 {
					p50s = append(p50s, l.Result.ConnectP50us)
					p99s = append(p99s, l.Result.ConnectP99us)
					t50s = append(t50s, l.Result.TxnP50us)
					t99s = append(t99s, l.Result.TxnP99us)
				}
				if l.Result.Failed > 0 {
					g50s = append(g50s, l.Result.FailP50us)
					g99s = append(g99s, l.Result.FailP99us)
				}
			}
		}
		for _, l := range r.Cold {
			cpu += l.EnforcerCPU
			idle += r.IdleCPUPerS * l.WindowS
			s.Connected += l.Result.Completed
			s.Failed += l.Result.Failed
			charged += l.Result.Completed
			if l.Result.Completed > 0 {
				// One connection per sample: its p50 is its latency.
				p50s = append(p50s, l.Result.ConnectP50us)
				t50s = append(t50s, l.Result.TxnP50us)
			}
		}
		if r.Bulk != nil {
			bulks = append(bulks, r.Bulk.Gbps)
		}
		for _, p := range r.Procs {
			s.HasEnforcer = true
			s.PeakRSSMB = max(s.PeakRSSMB, p.PeakRSSMB)
		}
	}
	for i, n := range concurrency {
		var rates []float64
		for _, r := range c.Rounds {
			for _, l := range r.Loads {
				if l.Concurrency == n {
					rates = append(rates, l.Result.ConnPerS)
				}
			}
		}
		s.ConnPerS[i] = Median(rates)
	}
	if len(c.Rounds[0].Cold) > 0 {
		// Cold samples pool across rounds: percentiles of single connections.
		s.ConnectP50us, s.ConnectP99us = Percentiles(p50s)
		s.TxnP50us, s.TxnP99us = Percentiles(t50s)
	} else {
		s.ConnectP50us, s.ConnectP99us = Median(p50s), Median(p99s)
		s.TxnP50us, s.TxnP99us = Median(t50s), Median(t99s)
	}
	s.GiveUpP50us, s.GiveUpP99us = Median(g50s), Median(g99s)
	if len(bulks) > 0 {
		s.HasBulk = true
		s.BulkGbps = Median(bulks)
	}
	if s.HasEnforcer && charged > 0 {
		s.CPUPer10k = cpu / float64(charged) * 10000
		s.CPUPer10kNet = max(0, cpu-idle) / float64(charged) * 10000
		s.IdleCPUms = Median(idles) * 1000
	}
	c.Summary = s
}

// Percentiles returns the nearest-rank p50 and p99 of xs.
func Percentiles(xs []float64) (p50, p99 float64) {
	if len(xs) == 0 {
		return 0, 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	at := func(p float64) float64 {
		i := int(p*float64(len(s))+0.5) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return at(0.5), at(0.99)
}

// Ratios computes the headline comparisons of every measured case against
// the bases (plain TCP and mutual TLS). Each ratio is the median over rounds
// of the ratio within a round: cases of one round ran minutes apart, so a
// machine that slows down or speeds up between rounds moves both sides. When
// the two cases share no round with the metric, the ratio of the summaries
// is used. A ratio is left out when either side was not measured.
func Ratios(cases []*Case, concurrency []int, bases ...int) []Ratio {
	byID := map[int]*Case{}
	for _, c := range cases {
		if c.Summary != nil {
			byID[c.ID] = c
		}
	}
	metrics := []string{}
	for _, n := range concurrency {
		metrics = append(metrics, fmt.Sprintf("conn_per_s_c%d", n))
	}
	metrics = append(metrics, "connect_p50", "txn_p50", "bulk_gbps")
	var out []Ratio
	for _, base := range bases {
		b := byID[base]
		if b == nil {
			continue
		}
		for _, c := range cases {
			if c.Summary == nil || c.ID == base {
				continue
			}
			for _, m := range metrics {
				var per []float64
				for _, rc := range c.Rounds {
					for _, rb := range b.Rounds {
						if rc.Round != rb.Round {
							continue
						}
						num, ok1 := roundMetric(rc, m)
						den, ok2 := roundMetric(rb, m)
						if ok1 && ok2 {
							per = append(per, num/den)
						}
					}
				}
				if len(per) > 0 {
					out = append(out, Ratio{Case: c.ID, Base: base, Metric: m, Value: Median(per)})
					continue
				}
				num, ok1 := summaryMetric(c.Summary, concurrency, m)
				den, ok2 := summaryMetric(b.Summary, concurrency, m)
				if ok1 && ok2 {
					out = append(out, Ratio{Case: c.ID, Base: base, Metric: m, Value: num / den})
				}
			}
		}
	}
	return out
}

// roundMetric is metric m of one round, if measured and positive. Latencies
// come from the single-client run, or from the round's cold samples.
func roundMetric(r *Round, m string) (float64, bool) {
	var v float64
	switch m {
	case "bulk_gbps":
		if r.Bulk != nil {
			v = r.Bulk.Gbps
		}
	case "connect_p50", "txn_p50":
		var xs []float64
		for _, l := range r.Cold {
			if l.Result.Completed > 0 {
				xs = append(xs, pick(l, m))
			}
		}
		if len(xs) > 0 {
			v = Median(xs)
			break
		}
		for _, l := range r.Loads {
			if l.Concurrency == 1 && l.Result.Completed > 0 {
				v = pick(l, m)
			}
		}
	default:
		for _, l := range r.Loads {
			if fmt.Sprintf("conn_per_s_c%d", l.Concurrency) == m {
				v = l.Result.ConnPerS
			}
		}
	}
	return v, v > 0
}

func pick(l *Load, m string) float64 {
	if m == "txn_p50" {
		return l.Result.TxnP50us
	}
	return l.Result.ConnectP50us
}

// summaryMetric is metric m of a summary, if measured and positive.
func summaryMetric(s *Summary, concurrency []int, m string) (float64, bool) {
	var v float64
	switch m {
	case "bulk_gbps":
		v = s.BulkGbps
	case "connect_p50":
		v = s.ConnectP50us
	case "txn_p50":
		v = s.TxnP50us
	default:
		for i, n := range concurrency {
			if fmt.Sprintf("conn_per_s_c%d", n) == m {
				v = s.ConnPerS[i]
			}
		}
	}
	return v, v > 0
}

// Lookup returns the ratio for (case, base, metric), if computed.
func Lookup(rs []Ratio, c, base int, metric string) (float64, bool) {
	for _, r := range rs {
		if r.Case == c && r.Base == base && r.Metric == metric {
			return r.Value, true
		}
	}
	return 0, false
}

// Targets checks issue 6's goals for Bireme's allowed case (4) against the
// computed ratios. A goal whose inputs were not measured is left out.
func Targets(rs []Ratio, concurrency []int) []Target {
	var out []Target
	for _, n := range concurrency {
		if v, ok := Lookup(rs, 4, 1, fmt.Sprintf("conn_per_s_c%d", n)); ok {
			out = append(out, Target{Goal: fmt.Sprintf("case 4 conn/s (c=%d) >= 0.45x case 1", n), Measured: v, Limit: 0.45, Met: v >= 0.45})
		}
	}
	if v, ok := Lookup(rs, 4, 6, "connect_p50"); ok {
		out = append(out, Target{Goal: "case 4 connect p50 <= 0.25x case 6", Measured: v, Limit: 0.25, Met: v <= 0.25})
	}
	// The two-message handshake (issue 17): against the three-message
	// known-peer case and the four-trip floor, measured in the same run.
	for _, n := range concurrency {
		rate := fmt.Sprintf("conn_per_s_c%d", n)
		if v, ok := Lookup(rs, 4, 10, rate); ok {
			out = append(out, Target{Goal: fmt.Sprintf("case 4 conn/s (c=%d) >= 1.4x case 10 (three-message known peer)", n), Measured: v, Limit: 1.4, Met: v >= 1.4})
		}
		if v, ok := Lookup(rs, 4, 9, rate); ok {
			out = append(out, Target{Goal: fmt.Sprintf("case 4 conn/s (c=%d) >= 0.9x case 9 (four-trip floor)", n), Measured: v, Limit: 0.9, Met: v >= 0.9})
		}
	}
	if v, ok := Lookup(rs, 4, 6, "connect_p50"); ok {
		out = append(out, Target{Goal: "case 4 connect p50 <= 0.40x case 6 (issue 17)", Measured: v, Limit: 0.40, Met: v <= 0.40})
	}
	if v, ok := Lookup(rs, 4, 1, "bulk_gbps"); ok {
		out = append(out, Target{Goal: "case 4 bulk throughput >= 0.98x case 1", Measured: v, Limit: 0.98, Met: v >= 0.98})
	}
	return out
}

// FloodRow compares, at one concurrency, a case's load runs under a flood
// (Round.Loads) with the same runs made just before without it
// (Round.Quiet).
type FloodRow struct {
	Concurrency int
	// Connect latencies, medians over rounds.
	QuietP50us, QuietP99us float64
	FloodP50us, FloodP99us float64
	// Completed connections ÷ attempts, over all rounds.
	QuietSuccess, FloodSuccess float64
	// Flooded ÷ quiet within each round, median over rounds (the two runs
	// of a round are seconds apart).
	P50Ratio, P99Ratio, ConnPerSRatio float64
}

// FloodComparison returns c's FloodRows, one per concurrency measured both
// ways; none for a case without quiet runs.
func FloodComparison(c *Case, concurrency []int) []FloodRow {
	var out []FloodRow
	for _, n := range concurrency {
		row := FloodRow{Concurrency: n}
		var qp50, qp99, fp50, fp99, r50, r99, rrate []float64
		var qDone, qTried, fDone, fTried int
		for _, r := range c.Rounds {
			q, f := loadAt(r.Quiet, n), loadAt(r.Loads, n)
			if q == nil || f == nil {
				continue
			}
			qDone, qTried = qDone+q.Result.Completed, qTried+q.Result.Attempts
			fDone, fTried = fDone+f.Result.Completed, fTried+f.Result.Attempts
			qp50, qp99 = append(qp50, q.Result.ConnectP50us), append(qp99, q.Result.ConnectP99us)
			fp50, fp99 = append(fp50, f.Result.ConnectP50us), append(fp99, f.Result.ConnectP99us)
			if q.Result.ConnectP50us > 0 && q.Result.ConnectP99us > 0 && q.Result.ConnPerS > 0 {
				r50 = append(r50, f.Result.ConnectP50us/q.Result.ConnectP50us)
				r99 = append(r99, f.Result.ConnectP99us/q.Result.ConnectP99us)
				rrate = append(rrate, f.Result.ConnPerS/q.Result.ConnPerS)
			}
		}
		if qTried == 0 || fTried == 0 {
			continue
		}
		row.QuietP50us, row.QuietP99us = Median(qp50), Median(qp99)
		row.FloodP50us, row.FloodP99us = Median(fp50), Median(fp99)
		row.QuietSuccess = float64(qDone) / float64(qTried)
		row.FloodSuccess = float64(fDone) / float64(fTried)
		row.P50Ratio, row.P99Ratio, row.ConnPerSRatio = Median(r50), Median(r99), Median(rrate)
		out = append(out, row)
	}
	return out
}

func loadAt(ls []*Load, concurrency int) *Load {
	for _, l := range ls {
		if l.Concurrency == concurrency {
			return l
		}
	}
	return nil
}
