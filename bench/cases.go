package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/bireme/bireme/bench/report"
	"github.com/bireme/bireme/bench/workload"
	"github.com/bireme/bireme/lab/topology"
	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/supervisor"
)

// processModel is recorded in the results: how the measured parties run.
const processModel = "client and server are separate processes (the bench binary in a hidden worker mode, " +
	"started with `ip netns exec` in their workloads' namespaces, GOMAXPROCS = all CPUs); " +
	"each enforcer (`bireme enforce`, case 3: the accept-only reader) is its own process in the root namespace, one per node. " +
	"Everything shares the machine's CPUs without pinning, as workloads and node agents do on a real node; " +
	"the load client is a fresh process per load run, its start-up is outside the measured window"

// floorQueue is the queue of the accept-only floor (case 3); Bireme's own
// rules feed it, installed by Bireme's supervisor with this queue number.
const floorQueue = 7

// benchCase is one compared setup.
type benchCase struct {
	id          int
	port        int
	tls         bool
	denied      bool // connections must fail; latency is the time to give up
	cold        bool // first contact: one fresh identity per measured connection
	flood       bool // each load run twice: without, then with a forged-SYN flood (flood.go)
	needsBireme bool
	result      *report.Case
	// start installs the case (rules, processes) and returns what to charge
	// and how to undo it.
	start func(ctx context.Context) (*active, error)
}

// active is an installed case.
type active struct {
	procs []*worker // processes whose CPU and memory are the enforcer cost
	stop  func() error
}

func (r *runner) cases() []*benchCase {
	all := []*benchCase{
		{id: 1, port: portPlain, result: &report.Case{Key: "plain", Name: "plain TCP"},
			start: func(context.Context) (*active, error) { return &active{stop: func() error { return nil }}, nil }},
		{id: 2, port: portPlain, result: &report.Case{Key: "iptables-allow", Name: "iptables allow by source address"},
			start: r.startFirewall},
		{id: 3, port: portPlain, result: &report.Case{Key: "nfqueue-accept", Name: "NFQUEUE accept-only, no token"},
			start: func(ctx context.Context) (*active, error) { return r.startFloor(ctx, false) }},
		{id: 4, port: portPlain, needsBireme: true, result: &report.Case{Key: "bireme-allowed", Name: "Bireme allowed, known peer"},
			start: r.startBireme},
		{id: 5, port: portPlain, needsBireme: true, cold: true, result: &report.Case{Key: "bireme-cold", Name: "Bireme first contact, new peer identity"},
			start: r.startBireme},
		{id: 6, port: portTLS, tls: true, result: &report.Case{Key: "mtls", Name: "TCP + TLS 1.3 mutual auth (P-256)"},
			start: func(context.Context) (*active, error) { return &active{stop: func() error { return nil }}, nil }},
		{id: 7, port: portDenied, needsBireme: true, denied: true, result: &report.Case{Key: "bireme-denied", Name: "Bireme denied"},
			start: r.startBireme},
		{id: 8, port: portPlain, needsBireme: true, flood: true, result: &report.Case{Key: "bireme-flood", Name: "Bireme allowed, known peer, under a forged-SYN flood"},
			start: r.startBireme},
		{id: 9, port: portPlain, result: &report.Case{Key: "nfqueue-accept-4", Name: "NFQUEUE accept-only, no token, four trips (ACK not queued)"},
			start: func(ctx context.Context) (*active, error) { return r.startFloor(ctx, true) }},
		{id: 10, port: portPlain, needsBireme: true, result: &report.Case{Key: "bireme-allowed-3msg", Name: "Bireme allowed, known peer, three-message handshake (--two-message=false)"},
			start: func(ctx context.Context) (*active, error) { return r.startBiremeWith(ctx, false) }},
	}
	var out []*benchCase
	for _, c := range all {
		c.result.ID = c.id
		if r.cfg.cases[c.id] {
			out = append(out, c)
		}
	}
	return out
}

// measure installs case c, runs its load runs (and bulk transfer or cold
// samples), and removes it again.
func (r *runner) measure(ctx context.Context, c *benchCase, round int) (rr *report.Round, err error) {
	r.flushConntrack(ctx)
	rr = &report.Round{Round: round}
	var flowsFrom int64
	if c.needsBireme {
		flowsFrom = fileSize(r.bireme.flowsFile(serverNode))
	}
	t0 := time.Now()
	act, err := c.start(ctx)
	if err != nil {
		return nil, err
	}
	t1 := time.Now()
	defer func() {
		t2 := time.Now()
		serr := act.stop()
		fmt.Fprintf(os.Stderr, "bench: case %d: set up in %.1fs, measured in %.1fs, removed in %.1fs\n",
			c.id, t1.Sub(t0).Seconds(), t2.Sub(t1).Seconds(), time.Since(t2).Seconds())
		if serr != nil {
			// The measurements stand; how the case ended is worth knowing.
			c.result.Notes = append(c.result.Notes, fmt.Sprintf("round %d: stopping: %v", round, serr))
		}
		if c.needsBireme && err == nil {
			// After stop: the enforcer has written (and closed) its records.
			fc, ferr := countIngress(r.bireme.flowsFile(serverNode), flowsFrom)
			if ferr != nil {
				err = fmt.Errorf("read server flow records: %w", ferr)
				return
			}
			rr.ServerFlows = fc
		}
	}()
	if c.needsBireme || c.id == 3 || c.id == 9 {
		// Warm up: the peer becomes known, and the path is proven to work.
		if err := r.warmup(ctx); err != nil {
			return nil, err
		}
		if rr.IdleCPUPerS, err = r.idleCPU(ctx, act); err != nil {
			return nil, err
		}
	}
	if c.cold {
		if err := r.measureCold(ctx, act, rr); err != nil {
			return nil, err
		}
	} else if c.flood {
		if err := r.measureFlood(ctx, c, act, rr); err != nil {
			return nil, err
		}
	} else {
		for _, n := range r.cfg.concurrency {
			l, err := r.load(ctx, c, act, n)
			if err != nil {
				return nil, err
			}
			rr.Loads = append(rr.Loads, l)
		}
		if !c.denied {
			var b workload.BulkResult
			if err := r.bulk(ctx, c, &b); err != nil {
				rr.BulkError = err.Error()
			} else {
				rr.Bulk = &b
			}
		}
	}
	for _, w := range act.procs {
		s, err := r.procs.Read(w.cmd.Process.Pid)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", w.name, err)
		}
		rr.Procs = append(rr.Procs, report.Proc{Name: w.name, PID: w.cmd.Process.Pid,
			PeakRSSMB: float64(s.PeakRSS) / (1 << 20), CPUS: s.CPU.Seconds()})
	}
	return rr, nil
}

// load runs one load worker in the client namespace at concurrency n and
// charges the enforcer processes' CPU time during it.
func (r *runner) load(ctx context.Context, c *benchCase, act *active, n int) (*report.Load, error) {
	timeout := r.cfg.connectTimeout
	if c.denied {
		timeout = r.cfg.deniedTimeout
	}
	args := []string{"-addr", r.serverAddr(c.port), "-c", strconv.Itoa(n), "-d", r.cfg.loadDur.String(), "-timeout", timeout.String()}
	if c.tls {
		args = append(args, "-tls-dir", r.tlsDir)
	}
	return r.chargedLoad(ctx, act, n, args)
}

func (r *runner) chargedLoad(ctx context.Context, act *active, n int, args []string) (*report.Load, error) {
	before, err := r.cpu(act)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var res workload.LoadResult
	if err := r.runOnce(ctx, r.client.NS, roleLoad, r.cfg.loadDur+r.cfg.connectTimeout+30*time.Second, &res, args...); err != nil {
		return nil, err
	}
	after, err := r.cpu(act)
	if err != nil {
		return nil, err
	}
	return &report.Load{Concurrency: n, Result: res, EnforcerCPU: (after - before).Seconds(), WindowS: time.Since(start).Seconds()}, nil
}

// idleCPU measures the enforcer processes' CPU use over one second (short
// mode: one load-run duration) without traffic, in CPU seconds per second.
func (r *runner) idleCPU(ctx context.Context, act *active) (float64, error) {
	before, err := r.cpu(act)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(min(time.Second, r.cfg.loadDur)):
	}
	after, err := r.cpu(act)
	if err != nil {
		return 0, err
	}
	return (after - before).Seconds() / time.Since(start).Seconds(), nil
}

// cpu is the total CPU time of the case's enforcer processes.
func (r *runner) cpu(act *active) (time.Duration, error) {
	var total time.Duration
	for _, w := range act.procs {
		s, err := r.procs.Read(w.cmd.Process.Pid)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", w.name, err)
		}
		total += s.CPU
	}
	return total, nil
}

func (r *runner) bulk(ctx context.Context, c *benchCase, out *workload.BulkResult) error {
	args := []string{"-addr", r.serverAddr(c.port), "-bytes", strconv.FormatInt(r.cfg.bulkBytes, 10), "-timeout", r.cfg.connectTimeout.String()}
	if c.tls {
		args = append(args, "-tls-dir", r.tlsDir)
	}
	return r.runOnce(ctx, r.client.NS, roleBulk, 5*time.Minute, out, args...)
}

// warmup makes cfg.warmup allowed connections, retrying for a few seconds
// while rules and queues come up; it fails if the path never works.
func (r *runner) warmup(ctx context.Context) error {
	deadline := time.Now().Add(15 * time.Second)
	var last workload.LoadResult
	for time.Now().Before(deadline) {
		args := []string{"-addr", r.serverAddr(portPlain), "-c", "1", "-d", "10s", "-max", strconv.Itoa(r.cfg.warmup), "-timeout", "1s"}
		if err := r.runOnce(ctx, r.client.NS, roleLoad, 30*time.Second, &last, args...); err != nil {
			return err
		}
		if last.Completed == last.Attempts && last.Completed > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("warm-up connections keep failing: %d of %d failed (%s)", last.Failed, last.Attempts, last.FirstError)
}

// startFirewall installs case 2 in the server namespace: new TCP connections
// are dropped unless they come from the client's address; packets of known
// connections pass on conntrack state.
func (r *runner) startFirewall(ctx context.Context) (*active, error) {
	ns := r.server.NS
	const chain = "BENCH-FW"
	remove := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = ns.Exec(ctx, "iptables", "-w", "-D", "INPUT", "-p", "tcp", "-j", chain)
		_ = ns.Exec(ctx, "iptables", "-w", "-F", chain)
		_ = ns.Exec(ctx, "iptables", "-w", "-X", chain)
		if ns.Exec(ctx, "iptables", "-w", "-n", "-L", chain) == nil {
			return fmt.Errorf("chain %s still present in %s", chain, ns.Name)
		}
		return nil
	}
	rules := [][]string{
		{"-N", chain},
		{"-A", chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		{"-A", chain, "-p", "tcp", "-s", r.client.Addr.String(), "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"},
		{"-A", chain, "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"},
		{"-I", "INPUT", "-p", "tcp", "-j", chain},
	}
	for _, rule := range rules {
		if err := ns.Exec(ctx, "iptables", append([]string{"-w"}, rule...)...); err != nil {
			return nil, errors.Join(fmt.Errorf("case 2 rules: %w", err), remove())
		}
	}
	return &active{stop: remove}, nil
}

// startFloor installs case 3 (or 9, fourTrips): Bireme's rules (its own
// supervisor, so the shape cannot drift) in both workloads, and one
// accept-only reader process per node.
func (r *runner) startFloor(ctx context.Context, fourTrips bool) (*active, error) {
	sup := supervisor.New(marks.Layout{QueueBase: floorQueue})
	layout := sup.Layout()
	act := &active{}
	var undo undoStack
	act.stop = undo.run
	for _, h := range []*topology.Host{r.client, r.server} {
		w, err := r.startWorker(ctx, "nfq-accept "+h.Node, nil, roleNFQ,
			"-netns", h.NS.Path(), "-queue", strconv.Itoa(floorQueue),
			"-pending", strconv.FormatUint(uint64(layout.Pending), 10),
			"-authorized", strconv.FormatUint(uint64(layout.Authorized), 10),
			"-four-trips="+strconv.FormatBool(fourTrips))
		if err != nil {
			return nil, errors.Join(err, act.stop())
		}
		act.procs = append(act.procs, w)
		undo.push(w.stop)
	}
	for _, h := range []*topology.Host{r.client, r.server} {
		path := h.NS.Path()
		undo.push(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return sup.Unprotect(ctx, path)
		})
		if err := sup.Protect(ctx, path); err != nil {
			return nil, errors.Join(err, act.stop())
		}
	}
	return act, nil
}

func goVersion() string { return runtime.Version() }
