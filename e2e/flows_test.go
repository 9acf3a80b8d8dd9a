package e2e

import (
	"bytes"
	"context"
	"encoding/xml"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/internal/syncbuf"
)

// TestFlowsCLI runs `bireme flows`, `flows top`, `flows map`, `flows
// verify` and `flows --follow` on the records of a lab whose pods made
// allowed and denied connections, and checks that verify notices a record
// removed from a copy of a node's file.
func TestFlowsCLI(t *testing.T) {
	c := newCluster(t, modelSpec(false))
	n1, n2 := c.node("n1"), c.node("n2")

	// Allowed: web -> db:5432 (n1), web -> cache:8080 (n1 -> n2).
	// Denied: web -> db:8080 (by x/db-ingress's port), intruder -> cache (namespace).
	for _, p := range []struct {
		from, to string
		port     uint16
	}{{"web", "db", 5432}, {"web", "cache", 8080}} {
		conn, err := c.dial(p.from, p.to, p.port, 3*time.Second)
		if err != nil {
			t.Fatalf("%s -> %s:%d: %v", p.from, p.to, p.port, err)
		}
		conn.Close()
	}
	c.expectDenied(t, "web", "db", 8080)
	c.expectDenied(t, "intruder", "cache", 8080)
	c.expectFlow(t, "n1", flowMatch{Direction: "ingress", Local: "x/db", Peer: "x/web", Verdict: "deny", LocalPort: 8080}, "", "x/db-ingress")
	c.expectFlow(t, "n2", flowMatch{Direction: "ingress", Local: "x/cache", Peer: "y/intruder", Verdict: "deny"}, "", "x/cache-ingress")
	c.expectFlow(t, "n2", flowMatch{Direction: "ingress", Local: "x/cache", Peer: "x/web", Verdict: "allow"}, "x/cache-ingress", "x/cache-ingress")
	files := []string{n1.Flows, n2.Flows}

	t.Run("filter", func(t *testing.T) {
		out, err := bireme(append([]string{"flows", "--verdict", "deny", "--to", "x/", "--port", "8080", "-o", "json"}, files...)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		var froms []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			r, err := flowlog.ParseLine([]byte(line))
			if err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			if r.Verdict != flowlog.Deny || r.Direction != "ingress" || !strings.HasSuffix(r.LocalAddr, ":8080") || r.Seq == 0 {
				t.Errorf("record does not pass the filter: %s", line)
			}
			froms = append(froms, r.Peer.Ref())
		}
		if got := strings.Join(froms, " "); !strings.Contains(got, "x/web") || !strings.Contains(got, "y/intruder") {
			t.Errorf("denied clients %q, want x/web and y/intruder", got)
		}
		out, err = bireme(append([]string{"flows", "--from-label", "app=web", "--from", "y/", "-o", "compact"}, files...)...)
		if err != nil || !strings.Contains(out, "y/intruder -> x/cache:8080/TCP syn DENY") || strings.Contains(out, "x/web ->") {
			t.Errorf("compact: %v\n%s", err, out)
		}
		// By policy, reason and server labels; each answer checked record
		// by record, and known records must be among them.
		for _, tc := range []struct {
			args []string
			ok   func(r flowlog.Record) bool
			want string // a client -> server pair that must be there
		}{
			{[]string{"--policy", "x/db-ingress"}, func(r flowlog.Record) bool {
				return r.Policy == "x/db-ingress" || slices.Contains(r.SelectedBy, "x/db-ingress")
			}, "x/web -> x/db"},
			{[]string{"--reason", "NO RULE ALLOWS"}, func(r flowlog.Record) bool {
				return strings.Contains(strings.ToLower(r.Reason+" "+r.TokenError), "no rule allows")
			}, "y/intruder -> x/cache"},
			{[]string{"--to-label", "app=cache"}, func(r flowlog.Record) bool {
				return recServer(r) != nil && recServer(r).Ref() == "x/cache"
			}, "x/web -> x/cache"},
		} {
			out, err := bireme(append(append([]string{"flows", "-o", "json"}, tc.args...), files...)...)
			if err != nil {
				t.Fatalf("%v: %v\n%s", tc.args, err, out)
			}
			found := false
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				r, err := flowlog.ParseLine([]byte(line))
				if err != nil {
					t.Fatalf("%v: line %q: %v", tc.args, line, err)
				}
				if !tc.ok(r) {
					t.Errorf("%v: record does not pass the filter: %s", tc.args, line)
				}
				if c, s := recClient(r), recServer(r); c != nil && s != nil && c.Ref()+" -> "+s.Ref() == tc.want {
					found = true
				}
			}
			if !found {
				t.Errorf("%v: no record %s:\n%s", tc.args, tc.want, out)
			}
		}
		// A time range: the records at or after the middle one's time with
		// --since, the others with --until, nothing lost or repeated. On
		// a copy, which no late record changes.
		copies := copyFiles(t, t.TempDir(), files)
		all, err := bireme(append([]string{"flows", "-o", "json"}, copies...)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, all)
		}
		lines := strings.Split(strings.TrimSpace(all), "\n")
		mid, err := flowlog.ParseLine([]byte(lines[len(lines)/2]))
		if err != nil {
			t.Fatal(err)
		}
		at := mid.Time.UTC().Format(time.RFC3339Nano)
		var before, after int
		for _, line := range lines {
			r, err := flowlog.ParseLine([]byte(line))
			if err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			if r.Time.Before(mid.Time) {
				before++
			} else {
				after++
			}
		}
		if before == 0 || after == 0 {
			t.Fatalf("records before %s: %d, at or after: %d; want some of each", at, before, after)
		}
		for _, tc := range []struct {
			flag string
			want int
		}{{"--since", after}, {"--until", before}} {
			out, err := bireme(append([]string{"flows", "-o", "json", tc.flag, at}, copies...)...)
			if got := strings.Count(out, "\n"); err != nil || got != tc.want {
				t.Errorf("%s %s: %d records, want %d of %d (%v)", tc.flag, at, got, tc.want, len(lines), err)
			}
		}
		if out, err := bireme(append([]string{"flows", "--since", "1h", "--until", "59m"}, copies...)...); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("--since 1h --until 59m (before the lab existed): %v\n%s", err, out)
		}
		// The table (the default output): a header, then one row per record.
		out, err = bireme(append([]string{"flows", "--verdict", "deny", "--from", "y/intruder"}, files...)...)
		rows := strings.Split(strings.TrimSpace(out), "\n")
		if err != nil || len(rows) < 2 || strings.Join(strings.Fields(rows[0]), " ") != "TIME NODE DIR STAGE FROM TO PORT PROTO VERDICT POLICY REASON OTHER" {
			t.Fatalf("table: %v\n%s", err, out)
		}
		for _, row := range rows[1:] {
			if !strings.Contains(row, "y/intruder") || !strings.Contains(row, "x/cache") || !strings.Contains(row, "deny") {
				t.Errorf("table row: %q", row)
			}
		}
	})

	t.Run("top", func(t *testing.T) {
		out, err := bireme(append([]string{"flows", "top"}, files...)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		for _, want := range [][]string{{"x/web", "x/db", "allow", "5432"}, {"x/web", "x/db", "deny", "8080"}, {"y/intruder", "x/cache", "deny", "8080"}, {"x/web", "x/cache", "allow", "8080"}} {
			found := false
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) == 5 && f[1] == want[0] && f[2] == want[1] && f[3] == want[2] && f[4] == want[3] {
					found = true
				}
			}
			if !found {
				t.Errorf("top has no line %v:\n%s", want, out)
			}
		}
	})

	t.Run("map", func(t *testing.T) {
		out, err := bireme(append([]string{"flows", "map", "--format", "dot"}, files...)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		for _, want := range []string{`"y/intruder" -> "x/cache" [color="#c62828"`, `"x/web" -> "x/cache" [color="#2e7d32"`, `subgraph "cluster_x"`} {
			if !strings.Contains(out, want) {
				t.Errorf("DOT lacks %s:\n%s", want, out)
			}
		}
		svgFile := filepath.Join(t.TempDir(), "map.svg")
		if out, err := bireme(append([]string{"flows", "map", "--out", svgFile}, files...)...); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		svg, err := os.ReadFile(svgFile)
		if err != nil {
			t.Fatal(err)
		}
		dec := xml.NewDecoder(bytes.NewReader(svg))
		lines := 0
		for {
			tok, err := dec.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("SVG is not XML: %v", err)
			}
			if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "line" {
				lines++
			}
		}
		if lines < 4 || !bytes.Contains(svg, []byte("y/intruder")) {
			t.Errorf("SVG has %d edges:\n%s", lines, svg)
		}
	})

	t.Run("verify", func(t *testing.T) {
		for _, n := range []string{"n1", "n2"} {
			node := c.node(n)
			out, err := bireme("flows", "verify", "--key", node.FlowKey, node.Flows)
			if err != nil || !strings.HasPrefix(out, "intact: ") {
				t.Errorf("verify %s: %v\n%s", n, err, out)
			}
		}
		// A copy of n1's file and head with one record removed. The head
		// is copied first: the enforcer writes records before their head.
		dir := t.TempDir()
		cp := filepath.Join(dir, "n1.jsonl")
		copyFile(t, flowlog.HeadPath(n1.Flows), flowlog.HeadPath(cp))
		copyFile(t, n1.Flows, cp)
		b, _ := os.ReadFile(cp)
		lines := strings.SplitAfter(string(b), "\n")
		if len(lines) < 4 {
			t.Fatalf("n1 wrote %d records", len(lines))
		}
		os.WriteFile(cp, []byte(strings.Join(append(lines[:1:1], lines[2:]...), "")), 0o600)
		out, err := bireme("flows", "verify", "--key", n1.FlowKey, cp)
		if err == nil || !strings.Contains(out, "broken: "+cp+":2 (record 3): record 3 follows record 1") {
			t.Errorf("verify after removing record 2: %v\n%s", err, out)
		}
		// The same copy with one byte of record 2 flipped: record 3's link
		// to it no longer holds.
		if err := os.WriteFile(cp, []byte(lines[0]+flipNodeByte(t, lines[1])+strings.Join(lines[2:], "")), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err = bireme("flows", "verify", "--key", n1.FlowKey, cp)
		if err == nil || !strings.Contains(out, "broken: "+cp+":3 ") || !strings.Contains(out, "does not link") {
			t.Errorf("verify after flipping a byte of record 2: %v\n%s", err, out)
		}
		// The same copy cut short instead.
		os.WriteFile(cp, []byte(strings.Join(lines[:2], "")), 0o600)
		out, err = bireme("flows", "verify", "--key", n1.FlowKey, cp)
		if err == nil || !strings.Contains(out, "truncated") {
			t.Errorf("verify after truncation: %v\n%s", err, out)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		for _, m := range []struct {
			name   string
			labels map[string]string
		}{
			{"bireme_handshake_stage_seconds_count", map[string]string{"stage": "syn", "direction": "ingress"}},
			{"bireme_handshake_stage_seconds_count", map[string]string{"stage": "synack", "direction": "ingress"}},
			{"bireme_handshake_stage_seconds_count", map[string]string{"stage": "syn", "direction": "egress"}},
			{"bireme_decisions_total", map[string]string{"verdict": "deny", "tier": "networkpolicy", "reason": "no-rule-allows"}},
		} {
			if v, err := c.metric("n1", m.name, m.labels); err != nil || v < 1 {
				t.Errorf("n1 %s%v = %v, %v; want at least 1", m.name, m.labels, v, err)
			}
		}
		// What deciding each stage cost here (for the record, not checked).
		for _, st := range []string{"syn", "synack", "ack"} {
			for _, dir := range []string{"ingress", "egress"} {
				l := map[string]string{"stage": st, "direction": dir}
				sum, err1 := c.metric("n1", "bireme_handshake_stage_seconds_sum", l)
				n, err2 := c.metric("n1", "bireme_handshake_stage_seconds_count", l)
				if err1 == nil && err2 == nil && n > 0 {
					t.Logf("n1 %s %s: %.0f packets, mean %.1f µs", dir, st, n, sum/n*1e6)
				}
			}
		}
		// Read from the kernel in each workload's namespace: present, and
		// nothing dropped at this load.
		for _, reason := range []string{"queue-full", "socket-full"} {
			if v, err := c.metric("n2", "bireme_queue_drops_total", map[string]string{"reason": reason}); err != nil || v != 0 {
				t.Errorf("n2 bireme_queue_drops_total{reason=%s} = %v, %v; want 0", reason, v, err)
			}
		}
	})

	t.Run("follow", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var out syncbuf.Buffer
		cmd := exec.CommandContext(ctx, biremeBin, "flows", "--follow", "--to", "x/db", "--port", "5432", n1.Flows)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			cancel()
			_ = cmd.Wait()
		}()
		// The record already there is printed, then a new connection's.
		for strings.Count(out.String(), "x/web -> x/db:5432") == 0 && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
		before := strings.Count(out.String(), "x/web -> x/db:5432")
		conn, err := c.dial("web", "db", 5432, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		for strings.Count(out.String(), "x/web -> x/db:5432") == before && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
		if ctx.Err() != nil {
			t.Fatalf("--follow printed no new record:\n%s", out.String())
		}
	})
}

// TestFlowsVerifyAcrossRotation: a lab whose enforcers rotate their flow
// files every few records. The rotated files and the live one read and
// verify as one chain with `bireme flows` and `bireme flows verify`, and a
// byte flipped in a rotated file is found there.
func TestFlowsVerifyAcrossRotation(t *testing.T) {
	c := newCluster(t, clusterSpec{Files: []string{"testdata/cluster/model.yaml"}, FlowsMaxBytes: 8000})
	n1 := c.node("n1")
	const conns = 20 // about 40 records, five files of 8000 bytes
	for i := 0; i < conns; i++ {
		conn, err := c.dial("web", "db", 5432, 3*time.Second)
		if err != nil {
			t.Fatalf("web -> db:5432 #%d: %v", i, err)
		}
		conn.Close()
	}
	// The live file and its rotated predecessors (FILE.1 the newest), not
	// the head.
	flowFiles := func() []string {
		files := []string{n1.Flows}
		for i := 1; ; i++ {
			f := flowlog.RotatedPath(n1.Flows, i)
			if _, err := os.Stat(f); err != nil {
				return files
			}
			files = append(files, f)
		}
	}
	// Every connection's ingress records, read across the files (records
	// are written a moment after the decision), and no more coming.
	var files []string
	deadline := time.Now().Add(15 * time.Second)
	for last := -1; ; {
		files = flowFiles()
		out, err := bireme(append([]string{"flows", "-o", "json", "--direction", "ingress", "--to", "x/db", "--port", "5432", "--verdict", "allow"}, files...)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		n := strings.Count(out, "\n")
		if n >= conns && n == last {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d ingress records of web -> db:5432 in %v, want %d, then no more:\n%s", n, files, conns, out)
		}
		last = n
		time.Sleep(300 * time.Millisecond)
	}
	if len(files) < 3 {
		t.Fatalf("flow files %v: want the live one and at least two rotated", files)
	}
	out, err := bireme(append([]string{"flows", "verify", "--key", n1.FlowKey}, files...)...)
	if err != nil || !strings.HasPrefix(out, "intact: ") {
		t.Fatalf("verify %v: %v\n%s", files, err, out)
	}
	t.Logf("%d files: %s", len(files), strings.TrimSpace(out))

	// A copy (head first: the enforcer writes records before their head),
	// with one byte flipped in the second record of the newest rotated file.
	dir := t.TempDir()
	copyFile(t, flowlog.HeadPath(n1.Flows), flowlog.HeadPath(filepath.Join(dir, filepath.Base(n1.Flows))))
	copies := copyFiles(t, dir, files)
	if out, err := bireme(append([]string{"flows", "verify", "--key", n1.FlowKey}, copies...)...); err != nil || !strings.HasPrefix(out, "intact: ") {
		t.Fatalf("verify the untouched copy: %v\n%s", err, out)
	}
	rotated := copies[1]
	b, err := os.ReadFile(rotated)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	if n := strings.Count(string(b), "\n"); n < 3 {
		t.Fatalf("%s holds %d records, want 3 or more (record 3 is where a flipped record 2 shows)", rotated, n)
	}
	lines[1] = flipNodeByte(t, lines[1])
	if err := os.WriteFile(rotated, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = bireme(append([]string{"flows", "verify", "--key", n1.FlowKey}, copies...)...)
	if err == nil || !strings.Contains(out, "broken: "+rotated+":") {
		t.Errorf("verify after flipping a byte of %s: %v\n%s", rotated, err, out)
	}
}

// bireme runs the bireme binary under test, bounded in time.
func bireme(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, biremeBin, args...).CombinedOutput()
	return string(out), err
}

// copyFiles copies files into dir under their base names and returns the
// copies' paths, in order.
func copyFiles(t *testing.T, dir string, files []string) []string {
	t.Helper()
	var copies []string
	for _, f := range files {
		cp := filepath.Join(dir, filepath.Base(f))
		copyFile(t, f, cp)
		copies = append(copies, cp)
	}
	return copies
}

// flipNodeByte returns the flow record line with one bit of its node
// name's first byte flipped: still JSON, but not what was chained.
func flipNodeByte(t *testing.T, line string) string {
	t.Helper()
	const field = `"node":"`
	i := strings.Index(line, field)
	if i < 0 || i+len(field) >= len(line) {
		t.Fatalf("record has no %s: %q", field, line)
	}
	b := []byte(line)
	b[i+len(field)] ^= 0x01
	return string(b)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// recClient and recServer are a record's client and server, whichever side
// recorded it.
func recClient(r flowlog.Record) *identity.Identity {
	if r.Direction == "egress" {
		return r.Local
	}
	return r.Peer
}

func recServer(r flowlog.Record) *identity.Identity {
	if r.Direction == "egress" {
		return r.Peer
	}
	return r.Local
}
