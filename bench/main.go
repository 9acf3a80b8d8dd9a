// Command bench measures what Bireme's identity costs against what users
// would pick instead, in one run on one pair of workloads:
//
//  1. plain TCP;
//  2. an iptables allow rule by source address;
//  3. NFQUEUE on the same handshake packets, accept-only, no token;
//  4. Bireme, allowed connection with a known peer;
//  5. Bireme, first contact with a new peer identity;
//  6. TCP plus a TLS 1.3 mutually authenticated handshake (P-256);
//  7. Bireme, denied connection.
//
// It builds a topology of two nodes with one workload each (client on n1,
// server on n2), runs every case once per round in a rotated order, and
// writes a markdown table and the raw JSON. See bench/README.md.
//
// Usage (as root, from the module root):
//
//	go run ./bench                 # full run, writes docs/benchmarks.md and docs/benchmarks.json
//	BENCH_SHORT=1 go run ./bench   # under a minute, writes to a temporary directory
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bireme/bireme/bench/report"
)

// config holds the command-line settings of a run.
type config struct {
	short          bool
	rounds         int
	loadDur        time.Duration
	concurrency    []int
	bulkBytes      int64
	coldSamples    int
	connectTimeout time.Duration
	deniedTimeout  time.Duration
	warmup         int
	queues         int
	out, jsonOut   string
	bireme         string
	micro          bool
	cases          map[int]bool
	limit          time.Duration
	keep           bool
	command        string
}

func main() {
	if role := os.Getenv(workerEnv); role != "" {
		os.Exit(runWorker(role, os.Args[1:]))
	}
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runAndWrite(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	short := os.Getenv("BENCH_SHORT") == "1"
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var cfg config
	fs.BoolVar(&cfg.short, "short", short, "short mode (also BENCH_SHORT=1): few samples, small bulk transfer, under a minute")
	rounds := fs.Int("rounds", 0, "rounds; each runs every case once (default 3, short 1)")
	loadDur := fs.Duration("load", 0, "duration of each load run (default 3s, short 500ms)")
	conc := fs.String("concurrency", "1,8,64", "concurrent clients of the load runs")
	bulk := fs.Int64("bulk-bytes", 0, "bytes of the bulk transfer (default 1 GiB, short 32 MiB)")
	cold := fs.Int("cold", 0, "first-contact samples per round in case 5 (default 15, short 3)")
	fs.DurationVar(&cfg.connectTimeout, "connect-timeout", 5*time.Second, "connect timeout of allowed connections")
	fs.DurationVar(&cfg.deniedTimeout, "denied-timeout", 500*time.Millisecond, "connect timeout of the denied case (the client gives up after it)")
	fs.IntVar(&cfg.warmup, "warmup", 20, "connections made before measuring a Bireme or NFQUEUE case")
	fs.StringVar(&cfg.out, "out", "", "markdown output (default docs/benchmarks.md; short: a temporary directory)")
	fs.StringVar(&cfg.jsonOut, "json", "", "JSON output (default: the markdown path with .json)")
	fs.IntVar(&cfg.queues, "queues", 1, "NFQUEUE queues per workload for `bireme enforce --queues`")
	fs.StringVar(&cfg.bireme, "bireme", "", "bireme binary (default: built from ./cmd/bireme)")
	fs.BoolVar(&cfg.micro, "micro", true, "run the tokens/policy/enforcer Go micro-benchmarks at the end (default off in short mode)")
	casesFlag := fs.String("cases", "1,2,3,4,5,6,7,8,9,10", "cases to run")
	fs.DurationVar(&cfg.limit, "limit", 0, "abort the whole run after this long (default 30m, short 5m)")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory (logs, keys, store)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	microSet := false
	fs.Visit(func(f *flag.Flag) { microSet = microSet || f.Name == "micro" })
	if cfg.short && !microSet {
		cfg.micro = false
	}
	pick := func(set, full, shortV int64) int64 {
		switch {
		case set > 0:
			return set
		case cfg.short:
			return shortV
		default:
			return full
		}
	}
	cfg.rounds = int(pick(int64(*rounds), 3, 1))
	cfg.loadDur = time.Duration(pick(int64(*loadDur), int64(3*time.Second), int64(500*time.Millisecond)))
	cfg.bulkBytes = pick(*bulk, 1<<30, 32<<20)
	cfg.coldSamples = int(pick(int64(*cold), 15, 3))
	cfg.limit = time.Duration(pick(int64(cfg.limit), int64(30*time.Minute), int64(5*time.Minute)))
	for _, f := range strings.Split(*conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 1024 {
			return cfg, fmt.Errorf("-concurrency: %q is not a client count in 1..1024", f)
		}
		cfg.concurrency = append(cfg.concurrency, n)
	}
	if cfg.queues < 1 || cfg.queues > 64 {
		return cfg, fmt.Errorf("-queues %d: want 1..64", cfg.queues)
	}
	if cfg.concurrency[0] != 1 {
		return cfg, fmt.Errorf("-concurrency must start with 1 (latencies come from the single-client run)")
	}
	cfg.cases = map[int]bool{}
	for _, f := range strings.Split(*casesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 10 {
			return cfg, fmt.Errorf("-cases: %q is not a case number 1..10", f)
		}
		cfg.cases[n] = true
	}
	if cfg.out == "" {
		if cfg.short {
			cfg.out = filepath.Join(os.TempDir(), "bireme-bench", "benchmarks.md")
		} else {
			cfg.out = filepath.Join("docs", "benchmarks.md")
		}
	}
	if cfg.jsonOut == "" {
		cfg.jsonOut = strings.TrimSuffix(cfg.out, filepath.Ext(cfg.out)) + ".json"
	}
	cfg.command = "go run ./bench"
	if cfg.short {
		cfg.command = "BENCH_SHORT=1 " + cfg.command
	}
	if len(args) > 0 {
		cfg.command += " " + strings.Join(args, " ")
	}
	return cfg, nil
}

// runAndWrite runs the benchmark and writes both outputs, also when the run
// failed halfway (the document then says so); the run's error is returned.
func runAndWrite(ctx context.Context, cfg config) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.limit)
	defer cancel()
	res, runErr := run(ctx, cfg)
	if res == nil {
		return runErr
	}
	if runErr != nil {
		res.Failure = runErr.Error()
	}
	if err := writeOutputs(cfg, res); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s and %s\n", cfg.out, cfg.jsonOut)
	return runErr
}

func writeOutputs(cfg config, res *report.Results) error {
	if err := os.MkdirAll(filepath.Dir(cfg.out), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(cfg.jsonOut), 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(cfg.jsonOut, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", cfg.jsonOut, err)
	}
	// Sections measured elsewhere (make k8s-scale) survive regeneration.
	previous, err := os.ReadFile(cfg.out)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := os.Create(cfg.out)
	if err != nil {
		return err
	}
	if err := report.WriteMarkdown(f, res, filepath.Base(cfg.jsonOut)); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", cfg.out, err)
	}
	if kept := report.Kept(string(previous)); kept != "" {
		if _, err := io.WriteString(f, "\n"+kept); err != nil {
			f.Close()
			return fmt.Errorf("write %s: %w", cfg.out, err)
		}
	}
	return f.Close()
}
