package report

import (
	"fmt"
	"io"
	"strings"
)

// WriteMarkdown renders r as the document docs/benchmarks.md; jsonName is the
// raw results file it points to.
func WriteMarkdown(w io.Writer, r *Results, jsonName string) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# Benchmarks\n\n")
	p("What identity costs on the TCP handshake, side by side with what users would pick instead. ")
	p("All cases ran in one process run, alternating, on the same pair of workloads; ")
	p("absolute numbers are for the record, the ratios are what compare across runs.\n\n")
	if r.Short {
		p("**Short mode (`BENCH_SHORT=1`)**: few samples, small bulk transfer; these numbers only show the harness works.\n\n")
	}
	if r.Failure != "" {
		p("**The run failed**: %s\n\n", r.Failure)
	}
	p("- Date: %s (run took %.0f s)\n", r.Date, r.Duration)
	p("- Command: `%s` (tree at commit %s)\n", r.Command, r.Commit)
	m := r.Machine
	p("- Machine: %s, %d CPUs, %d MB RAM, Linux %s, %s, %s; load average at start %s, at end %s\n",
		m.CPUModel, m.CPUs, m.MemoryMB, m.Kernel, m.GoVersion, m.Iptables, m.LoadAvgStart, m.LoadAvgEnd)
	st := r.Settings
	p("- Settings: %d round(s); each round runs every case once, in a rotated order (%s); load runs of %.1f s with %s concurrent clients; bulk %s in one stream; connect timeout %d ms (denied case: %d ms)\n",
		st.Rounds, st.AlternationPattern, st.LoadSeconds, joinInts(st.Concurrency), humanBytes(st.BulkBytes), st.ConnectTimeoutMS, st.DeniedTimeoutMS)
	p("- Processes: %s\n", st.ProcessModel)
	p("- Bireme: %s, `--queues %d --poll %s`; %d warm-up connections before measuring cases 3, 4, 5 and 7\n", st.BiremeBinary, st.EnforcerQueues, st.EnforcerPoll, st.WarmupConnections)
	p("- Cold caches (case 5): %s\n", st.ColdCacheMethod)
	for _, h := range r.Topology {
		p("- %s: netns `%s` on node `%s`, %s\n", h.Role, h.NS, h.Node, h.Addr)
	}
	if h := headline(r); len(h) > 0 {
		p("\n## Headline\n\n")
		for _, line := range h {
			p("- %s\n", line)
		}
	}
	p("\n## Results (median over rounds)\n\n")
	p("A connection is connect, a 1-byte request, a 1-byte response, close. Connect latency comes from the single-client run ")
	p("(until `connect()` returns; for case 6 until the TLS handshake completes); txn is the whole connection. ")
	p("Enforcer CPU is user+system time of the `bireme enforce` processes (case 3: the accept-only readers) from `/proc/PID/stat` ")
	p("during the load runs, per 10,000 connections (case 7: per 10,000 attempts), minus what they use idle over the same wall time ")
	p("(idle: CPU ms per second with no traffic, both processes together, measured for 1 s (short mode: 0.5 s) after warm-up; the JSON also has the gross figure); ")
	p("peak RSS is the largest VmHWM of one such process.\n\n")
	head := []string{"#", "case"}
	for _, n := range st.Concurrency {
		head = append(head, fmt.Sprintf("conn/s c=%d", n))
	}
	head = append(head, "connect p50 µs", "connect p99 µs", "txn p50 µs", "bulk Gbit/s", "enforcer CPU s / 10k conns", "enforcer idle CPU ms/s", "enforcer peak RSS MB")
	p("%s\n", row(head))
	p("%s\n", row(repeat("---", len(head))))
	for _, c := range r.Cases {
		cells := []string{fmt.Sprint(c.ID), c.Name}
		if c.Unavailable != "" {
			cells = append(cells, "not available: "+clip(c.Unavailable, 300))
			for len(cells) < len(head) {
				cells = append(cells, "")
			}
			p("%s\n", row(cells))
			continue
		}
		s := c.Summary
		if s == nil {
			continue
		}
		denied := c.Key == "bireme-denied"
		for i := range st.Concurrency {
			if denied {
				cells = append(cells, fmt.Sprintf("%.0f (%d attempts, all timed out)", s.ConnPerS[i], s.Attempts[i]))
			} else if c.Key == "bireme-cold" {
				cells = append(cells, "n/a")
			} else {
				cells = append(cells, fmt.Sprintf("%.0f", s.ConnPerS[i]))
			}
		}
		if denied {
			cells = append(cells, fmt.Sprintf("gave up after %.0f", s.GiveUpP50us), fmt.Sprintf("gave up after %.0f", s.GiveUpP99us), "—")
		} else {
			cells = append(cells, num(s.ConnectP50us), num(s.ConnectP99us), num(s.TxnP50us))
		}
		if s.HasBulk {
			cells = append(cells, fmt.Sprintf("%.2f", s.BulkGbps))
		} else {
			cells = append(cells, "—")
		}
		if s.HasEnforcer {
			cells = append(cells, fmt.Sprintf("%.3f", s.CPUPer10kNet), fmt.Sprintf("%.1f", s.IdleCPUms), fmt.Sprintf("%.1f", s.PeakRSSMB))
		} else {
			cells = append(cells, "—", "—", "—")
		}
		p("%s\n", row(cells))
	}
	p("\n## Headline ratios\n\n")
	p("Each case against plain TCP (case 1) and against mutual TLS (case 6): the median over rounds of the ratio within each round ")
	p("(cases of one round ran minutes apart, so drift of a shared machine cancels out). Connection rates: higher is better; latencies: lower is better.\n\n")
	rh := []string{"#", "case"}
	type col struct {
		base   int
		metric string
	}
	var cols []col
	for _, n := range st.Concurrency {
		cols = append(cols, col{1, fmt.Sprintf("conn_per_s_c%d", n)})
		rh = append(rh, fmt.Sprintf("conn/s c=%d ÷ case 1", n))
	}
	cols = append(cols, col{1, "connect_p50"}, col{1, "bulk_gbps"})
	rh = append(rh, "connect p50 ÷ case 1", "bulk ÷ case 1")
	for _, n := range st.Concurrency {
		cols = append(cols, col{6, fmt.Sprintf("conn_per_s_c%d", n)})
		rh = append(rh, fmt.Sprintf("conn/s c=%d ÷ case 6", n))
	}
	cols = append(cols, col{6, "connect_p50"})
	rh = append(rh, "connect p50 ÷ case 6")
	p("%s\n%s\n", row(rh), row(repeat("---", len(rh))))
	for _, c := range r.Cases {
		if c.Summary == nil || c.Key == "bireme-denied" {
			continue
		}
		cells := []string{fmt.Sprint(c.ID), c.Name}
		for _, k := range cols {
			if v, ok := Lookup(r.Ratios, c.ID, k.base, k.metric); ok {
				cells = append(cells, fmt.Sprintf("%.2fx", v))
			} else {
				cells = append(cells, "—")
			}
		}
		p("%s\n", row(cells))
	}
	twoMessageTable(p, r)
	for _, c := range r.Cases {
		rows := FloodComparison(c, st.Concurrency)
		if len(rows) == 0 {
			continue
		}
		p("\n## Under a forged-SYN flood (case %d)\n\n", c.ID)
		p("The legitimate client's load runs of case %d, each made twice back to back: without, then with a third namespace sending SYNs ", c.ID)
		p("with forged tokens (a real node certificate, fresh claims, a random signature: each new to the server) from a raw socket at the server's port. ")
		p("Ratios are flooded ÷ quiet within each round, median over rounds; success is completed ÷ attempted connections.\n\n")
		p("| clients | connect p50 µs quiet / flood | connect p99 µs quiet / flood | p50 ratio | p99 ratio | conn/s ratio | success quiet / flood |\n|---|---|---|---|---|---|---|\n")
		for _, fr := range rows {
			p("| %d | %s / %s | %s / %s | %.2fx | %.2fx | %.2fx | %.1f %% / %.1f %% |\n", fr.Concurrency,
				num(fr.QuietP50us), num(fr.FloodP50us), num(fr.QuietP99us), num(fr.FloodP99us),
				fr.P50Ratio, fr.P99Ratio, fr.ConnPerSRatio, 100*fr.QuietSuccess, 100*fr.FloodSuccess)
		}
	}
	if len(r.Targets) > 0 {
		p("\n## Targets of issue 6\n\n| goal | measured | met |\n|---|---|---|\n")
		for _, t := range r.Targets {
			met := "no"
			if t.Met {
				met = "yes"
			}
			unit := "x"
			if strings.Contains(t.Goal, "µs") {
				unit = " µs"
			}
			p("| %s | %.2f%s | %s |\n", t.Goal, t.Measured, unit, met)
		}
	}
	p("\n## Micro-benchmarks\n\n")
	p("From `go test -run '^$' -bench . -benchmem ./tokens/ ./policy/ ./enforcer/`, run by the harness after the cases.\n\n")
	if r.MicroErr != "" {
		p("Problems: %s\n\n", r.MicroErr)
	}
	if len(r.Micro) > 0 {
		p("| package | benchmark | ns/op | B/op | allocs/op | own metrics |\n|---|---|---|---|---|---|\n")
		for _, mb := range r.Micro {
			var extra []string
			for _, e := range mb.Extra {
				extra = append(extra, fmt.Sprintf("%g %s", e.Value, e.Unit))
			}
			p("| %s | %s | %.0f | %s | %s | %s |\n", mb.Package, mb.Name, mb.NsPerOp, optInt(mb.BytesPerOp), optInt(mb.AllocsPerOp), strings.Join(extra, ", "))
		}
	} else if r.MicroErr == "" {
		p("Not run (short mode, or `-micro=false`).\n")
	}
	if len(r.Notes) > 0 || hasCaseNotes(r.Cases) {
		p("\n## Notes\n\n")
		for _, n := range r.Notes {
			p("- %s\n", oneLine(n))
		}
		for _, c := range r.Cases {
			for _, n := range c.Notes {
				p("- Case %d (%s): %s\n", c.ID, c.Name, oneLine(n))
			}
		}
	}
	p("\nRaw numbers, per round: [`%s`](%s).\n", jsonName, jsonName)
	_, err := io.WriteString(w, b.String())
	return err
}

func hasCaseNotes(cs []*Case) bool {
	for _, c := range cs {
		if len(c.Notes) > 0 {
			return true
		}
	}
	return false
}

func row(cells []string) string {
	for i, c := range cells {
		c = strings.Join(strings.Fields(c), " ") // one table row, whatever the text
		cells[i] = strings.ReplaceAll(c, "|", "\\|")
	}
	return "| " + strings.Join(cells, " | ") + " |"
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func num(v float64) string {
	if v == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f", v)
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, "/")
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	default:
		return fmt.Sprintf("%d bytes", n)
	}
}

// clip shortens s to about n bytes for a table cell; the JSON keeps it whole.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "… (see the JSON)"
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// optInt renders -1 (not reported) as a dash.
func optInt(v int64) string {
	if v < 0 {
		return "—"
	}
	return fmt.Sprint(v)
}

// headline states the comparisons issue 6 asks for in sentences, from the
// computed ratios; a sentence whose numbers are missing is left out.
func headline(r *Results) []string {
	var out []string
	conc := r.Settings.Concurrency
	if len(conc) == 0 {
		return nil
	}
	top := conc[len(conc)-1]
	rate := fmt.Sprintf("conn_per_s_c%d", top)
	get := func(c, base int, metric string) (float64, bool) { return Lookup(r.Ratios, c, base, metric) }
	if v1, ok1 := get(4, 1, rate); ok1 {
		line := fmt.Sprintf("Bireme, allowed, known peer (case 4): %.2fx the connection rate of plain TCP with %d clients", v1, top)
		if v6, ok := get(4, 6, rate); ok {
			line += fmt.Sprintf(", %.2fx that of mutual TLS", v6)
		}
		if p6, ok := get(4, 6, "connect_p50"); ok {
			line += fmt.Sprintf("; connect p50 %.2fx mutual TLS's", p6)
		}
		if b, ok := get(4, 1, "bulk_gbps"); ok {
			line += fmt.Sprintf("; bulk throughput %.2fx plain TCP's", b)
		}
		out = append(out, line+".")
	}
	if f, ok := get(3, 1, rate); ok {
		line := fmt.Sprintf("The NFQUEUE floor (case 3, accept-only) alone reaches %.2fx plain TCP's rate with %d clients", f, top)
		if b, ok := get(4, 1, rate); ok && f > 0 {
			line += fmt.Sprintf("; Bireme keeps %.2fx of the floor", b/f)
		}
		out = append(out, line+".")
	}
	if p6, ok := get(5, 6, "connect_p50"); ok {
		out = append(out, fmt.Sprintf("First contact with a new identity (case 5): connect p50 %.2fx mutual TLS's.", p6))
	}
	for _, c := range r.Cases {
		if c.Key == "bireme-denied" && c.Summary != nil {
			out = append(out, fmt.Sprintf("Denied (case 7): the client hears nothing and gives up at its %d ms connect timeout; the enforcers spend %.3f CPU s per 10,000 denied attempts.",
				r.Settings.DeniedTimeoutMS, c.Summary.CPUPer10kNet))
		}
	}
	if la := strings.Fields(r.Machine.LoadAvgStart); len(la) > 0 && r.Machine.CPUs > 0 {
		var l float64
		if _, err := fmt.Sscan(la[0], &l); err == nil && l > float64(r.Machine.CPUs) {
			out = append(out, fmt.Sprintf("The machine was busy with other work during the run (load average %s at the start, %s at the end, on %d CPUs): absolute figures are low and noisy; ratios between cases of the same round hold better.",
				r.Machine.LoadAvgStart, r.Machine.LoadAvgEnd, r.Machine.CPUs))
		}
	}
	return out
}

// twoMessageTable compares the two-message handshake (case 4) with the
// three-message one (case 10) and the two NFQUEUE floors (cases 3 and 9,
// six and four queue trips), all ratios within rounds of the same run.
func twoMessageTable(p func(string, ...any), r *Results) {
	pairs := []struct{ c, base int }{{4, 10}, {4, 9}, {10, 3}, {9, 3}, {4, 3}}
	var cols []string
	for _, n := range r.Settings.Concurrency {
		cols = append(cols, fmt.Sprintf("conn_per_s_c%d", n))
	}
	cols = append(cols, "connect_p50")
	var rows []string
	for _, pr := range pairs {
		cells := []string{fmt.Sprintf("case %d ÷ case %d", pr.c, pr.base)}
		any := false
		for _, m := range cols {
			if v, ok := Lookup(r.Ratios, pr.c, pr.base, m); ok {
				cells = append(cells, fmt.Sprintf("%.2fx", v))
				any = true
			} else {
				cells = append(cells, "—")
			}
		}
		if any {
			rows = append(rows, row(cells))
		}
	}
	if len(rows) == 0 {
		return
	}
	p("\n## Two-message handshake (cases 4, 9, 10)\n\n")
	p("Case 4 completes known-peer handshakes in two messages (four queue trips, the ACK never queued), case 10 in three (six trips); ")
	p("cases 9 and 3 are the accept-only floors of four and six trips. Ratios within each round, median over rounds.\n\n")
	h := []string{"ratio"}
	for _, n := range r.Settings.Concurrency {
		h = append(h, fmt.Sprintf("conn/s c=%d", n))
	}
	h = append(h, "connect p50")
	p("%s\n%s\n", row(h), row(repeat("---", len(h))))
	for _, l := range rows {
		p("%s\n", l)
	}
}
