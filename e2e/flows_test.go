package e2e

import (
	"bytes"
	"context"
	"encoding/xml"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/flowlog"
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

	bireme := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, biremeBin, args...).CombinedOutput()
		return string(out), err
	}

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
