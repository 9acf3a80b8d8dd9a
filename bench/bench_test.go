package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/bench/report"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
)

// TestMain lets the test binary serve as the harness's worker processes,
// which it starts by re-executing itself.
func TestMain(m *testing.M) {
	if role := os.Getenv(workerEnv); role != "" {
		os.Exit(runWorker(role, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// TestShortRun runs the whole harness in short mode and checks that its
// output is complete and consistent. It asserts no timing: only that every
// case was either measured or says why not, that allowed connections
// completed and denied ones did not.
func TestShortRun(t *testing.T) {
	netnstest.RequireNamespaces(t)
	dir := t.TempDir()
	cfg, err := parseFlags([]string{"-short", "-out", filepath.Join(dir, "b.md")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := runAndWrite(ctx, cfg); err != nil {
		t.Fatalf("run: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "b.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res report.Results
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatalf("JSON output: %v", err)
	}
	if !res.Short || res.Failure != "" || res.Machine.CPUs < 1 || len(res.Topology) != 2 {
		t.Fatalf("header: short=%v failure=%q machine=%+v topology=%+v", res.Short, res.Failure, res.Machine, res.Topology)
	}
	if len(res.Cases) != 10 {
		t.Fatalf("%d cases, want 10", len(res.Cases))
	}
	for i, c := range res.Cases {
		if c.ID != i+1 {
			t.Fatalf("case %d has id %d", i+1, c.ID)
		}
		if c.Unavailable != "" {
			if c.ID != 4 && c.ID != 5 && c.ID != 7 && c.ID != 8 && c.ID != 10 {
				t.Errorf("case %d unavailable: %s", c.ID, c.Unavailable)
			}
			t.Logf("case %d not available: %s", c.ID, c.Unavailable)
			continue
		}
		s := c.Summary
		if s == nil || len(c.Rounds) != 1 {
			t.Errorf("case %d: summary %v, %d rounds", c.ID, s, len(c.Rounds))
			continue
		}
		switch c.Key {
		case "bireme-denied":
			if s.Connected != 0 || s.Failed == 0 || s.GiveUpP50us <= 0 {
				t.Errorf("case 7: connected %d failed %d give-up %v", s.Connected, s.Failed, s.GiveUpP50us)
			}
		case "bireme-flood":
			// The flooded runs' failures are a result, not an error; the
			// quiet ones must all connect.
			r := c.Rounds[0]
			rows := report.FloodComparison(c, cfg.concurrency)
			if len(r.Quiet) != 3 || len(r.Loads) != 3 || len(rows) != 3 || s.Connected == 0 {
				t.Errorf("case 8: %d quiet and %d flooded runs, %d comparisons, %d connected", len(r.Quiet), len(r.Loads), len(rows), s.Connected)
			}
			for _, q := range r.Quiet {
				if q.Result.Failed != 0 {
					t.Errorf("case 8: %d connections failed without the flood", q.Result.Failed)
				}
			}
		case "bireme-cold":
			r := c.Rounds[0]
			if len(r.Cold) != cfg.coldSamples || s.Failed != 0 || r.ColdVerified != cfg.coldSamples || s.ConnectP50us <= 0 {
				t.Errorf("case 5: %d samples, %d failed, %d verified cold", len(r.Cold), s.Failed, r.ColdVerified)
			}
		default:
			if s.Failed != 0 || s.Connected == 0 || s.ConnectP50us <= 0 || !s.HasBulk || len(s.ConnPerS) != 3 {
				t.Errorf("case %d: %+v", c.ID, s)
			}
			for i, rate := range s.ConnPerS {
				if rate <= 0 {
					t.Errorf("case %d: no connection rate at concurrency %d", c.ID, cfg.concurrency[i])
				}
			}
		}
		wantEnforcer := c.ID == 3 || c.ID == 4 || c.ID == 5 || c.ID == 7 || c.ID == 8 || c.ID == 9 || c.ID == 10
		if s.HasEnforcer != wantEnforcer || (wantEnforcer && (s.PeakRSSMB <= 0 || len(c.Rounds[0].Procs) != 2)) {
			t.Errorf("case %d: enforcer figures %v, peak RSS %v", c.ID, s.HasEnforcer, s.PeakRSSMB)
		}
	}
	for _, n := range res.Notes {
		if strings.HasPrefix(n, "WRONG") {
			t.Error(n)
		}
	}
	if _, ok := report.Lookup(res.Ratios, 6, 1, "conn_per_s_c1"); !ok {
		t.Error("no ratio of case 6 against case 1")
	}
	md, err := os.ReadFile(filepath.Join(dir, "b.md"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"# Benchmarks", "| 1 | plain TCP |", "| 6 | TCP + TLS 1.3", "Headline ratios", "b.json"}
	if res.Cases[7].Unavailable == "" {
		want = append(want, "Under a forged-SYN flood (case 8)")
	}
	for _, want := range want {
		if !strings.Contains(string(md), want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	prefix := strings.TrimSuffix(res.Topology[0].NS, "-"+clientHost)
	if left, err := netns.List(prefix + "-"); err != nil || len(left) > 0 {
		t.Errorf("namespaces left behind: %v %v", left, err)
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr bool
	}{
		{"defaults", nil, false},
		{"short", []string{"-short"}, false},
		{"concurrency must start at 1", []string{"-concurrency", "8,64"}, true},
		{"bad concurrency", []string{"-concurrency", "1,x"}, true},
		{"bad case", []string{"-cases", "1,11"}, true},
		{"queues", []string{"-queues", "2"}, false},
		{"bad queues", []string{"-queues", "0"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseFlags(tt.args)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil && (cfg.rounds < 1 || cfg.loadDur <= 0 || !strings.HasSuffix(cfg.jsonOut, ".json") || cfg.micro == cfg.short) {
				t.Fatalf("config %+v", cfg)
			}
		})
	}
}

func TestUndoStackRunsNewestFirstAndKeepsErrors(t *testing.T) {
	var undo undoStack
	run := undo.run // bound before the pushes, as the setups do
	var order []int
	errA := errors.New("a")
	undo.push(func() error { order = append(order, 1); return errA })
	undo.push(func() error { order = append(order, 2); return nil })
	err := run()
	if fmt.Sprint(order) != "[2 1]" || !errors.Is(err, errA) {
		t.Fatalf("order %v, err %v; want [2 1] and the first step's error", order, err)
	}
}
