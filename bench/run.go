package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/bireme/bireme/bench/procstat"
	"github.com/bireme/bireme/bench/report"
	"github.com/bireme/bireme/bench/workload"
	"github.com/bireme/bireme/lab/topology"
	"github.com/bireme/bireme/netns"
)

// Ports the server workload listens on.
const (
	portPlain  = 8080 // plain TCP; Bireme's policy allows it
	portTLS    = 8443 // mutual TLS
	portDenied = 9090 // plain TCP; no policy rule allows it
)

// Node and host names in the topology.
const (
	clientNode, serverNode = "n1", "n2"
	clientHost, serverHost = "client", "server"
)

// runner holds the state of one run.
type runner struct {
	cfg    config
	exe    string // this binary, re-executed for workers
	tmp    string // logs, TLS material, keys, store
	procs  *procstat.Reader
	topo   *topology.Topology
	client *topology.Host
	server *topology.Host
	tlsDir string
	bireme *biremeEnv // nil when Bireme is not usable
	noBire string     // why bireme is nil
}

func (r *runner) serverAddr(port int) string {
	return netip.AddrPortFrom(r.server.Addr, uint16(port)).String()
}

// run does the whole benchmark. It returns partial results with the error
// when it fails after the setup, and always tears down what it built.
func run(ctx context.Context, cfg config) (res *report.Results, err error) {
	start := time.Now()
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (network namespaces, iptables)")
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not installed (run scripts/install-deps.sh)", tool)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own binary: %w", err)
	}
	tmp, err := os.MkdirTemp("", "bireme-bench-")
	if err != nil {
		return nil, err
	}
	if cfg.keep {
		fmt.Fprintf(os.Stderr, "bench: keeping %s\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	r := &runner{cfg: cfg, exe: exe, tmp: tmp, procs: procstat.NewReader()}
	res = &report.Results{
		Date:    start.UTC().Format(time.RFC3339),
		Command: cfg.command,
		Commit:  gitCommit(ctx),
		Short:   cfg.short,
		Machine: describeMachine(),
		Settings: report.Settings{
			Rounds:             cfg.rounds,
			Concurrency:        cfg.concurrency,
			LoadSeconds:        cfg.loadDur.Seconds(),
			BulkBytes:          cfg.bulkBytes,
			ColdSamples:        cfg.coldSamples,
			ConnectTimeoutMS:   cfg.connectTimeout.Milliseconds(),
			DeniedTimeoutMS:    cfg.deniedTimeout.Milliseconds(),
			ProcessModel:       processModel,
			ColdCacheMethod:    coldMethod,
			EnforcerQueues:     cfg.queues,
			EnforcerPoll:       enforcerPoll.String(),
			WarmupConnections:  cfg.warmup,
			ConntrackFlushed:   true,
			AlternationPattern: "round k starts with the k-th case and wraps around",
		},
	}
	defer func() {
		res.Duration = time.Since(start).Seconds()
		res.Machine.LoadAvgEnd = loadAvg()
	}()

	cleanup, err := r.setup(ctx)
	defer func() {
		if cerr := cleanup(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("teardown: %w", cerr))
		}
	}()
	if err != nil {
		return res, err
	}
	res.Topology = []report.HostInfo{
		{Role: "client", Node: r.client.Node, NS: r.client.NS.Name, Addr: r.client.Addr.String()},
		{Role: "server", Node: r.server.Node, NS: r.server.NS.Name, Addr: r.server.Addr.String()},
	}
	if r.bireme != nil && cfg.bireme == "" {
		res.Settings.BiremeBinary = "`bireme` built from ./cmd/bireme of this tree"
	} else if r.bireme != nil {
		res.Settings.BiremeBinary = "`" + r.bireme.bin + "`"
	} else {
		res.Settings.BiremeBinary = "not available: " + r.noBire
	}

	cases := r.cases()
	for _, c := range cases {
		res.Cases = append(res.Cases, c.result)
		if c.needsBireme && r.bireme == nil {
			c.result.Unavailable = r.noBire
		}
	}
	if err := r.rounds(ctx, cases); err != nil {
		// Summarize what was measured so the document shows it with the failure.
		finish(res, cases, cfg)
		return res, err
	}
	finish(res, cases, cfg)
	if cfg.micro {
		res.Micro, res.MicroErr = runMicro(ctx)
		if t, ok := report.HandshakeTarget(res.Micro); ok {
			res.Targets = append(res.Targets, t)
		}
	}
	return res, nil
}

// rounds runs every case once per round, in an order rotated by one case per
// round. A failing case round becomes a note; only the end of ctx stops it.
func (r *runner) rounds(ctx context.Context, cases []*benchCase) error {
	cfg := r.cfg
	for round := 1; round <= cfg.rounds; round++ {
		for i := range cases {
			c := cases[(i+round-1)%len(cases)]
			if c.result.Unavailable != "" {
				continue
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("stopped in round %d: %w", round, err)
			}
			fmt.Fprintf(os.Stderr, "bench: round %d/%d case %d (%s)\n", round, cfg.rounds, c.id, c.result.Name)
			rr, err := r.measure(ctx, c, round)
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("round %d case %d: %w", round, c.id, err)
				}
				c.result.Notes = append(c.result.Notes, fmt.Sprintf("round %d failed: %v", round, err))
				fmt.Fprintf(os.Stderr, "bench: round %d case %d failed: %v\n", round, c.id, err)
				continue
			}
			c.result.Rounds = append(c.result.Rounds, rr)
		}
	}
	return nil
}

// finish summarizes every case, computes ratios and targets, and adds the
// notes about numbers that should not be trusted.
func finish(res *report.Results, cases []*benchCase, cfg config) {
	for _, c := range cases {
		if c.result.Unavailable == "" && len(c.result.Rounds) == 0 {
			c.result.Unavailable = "every round failed (see notes)"
			if len(c.result.Notes) == 0 {
				c.result.Unavailable = "not measured: the run stopped before this case"
			}
		}
		report.Summarize(c.result, cfg.concurrency, c.denied)
	}
	// 3, 9 and 10 are the bases of the two-message handshake's table and
	// targets: the six- and four-trip floors and the three-message
	// known-peer case.
	res.Ratios = report.Ratios(res.Cases, cfg.concurrency, 1, 6, 3, 9, 10)
	res.Targets = report.Targets(res.Ratios, cfg.concurrency)
	res.Notes = append(res.Notes, checkResults(res)...)
	for _, c := range cases {
		if !c.cold {
			continue
		}
		var samples, verified int
		for _, rd := range c.result.Rounds {
			samples += len(rd.Cold)
			verified += rd.ColdVerified
		}
		if samples > 0 {
			c.result.Notes = append(c.result.Notes, fmt.Sprintf("%d of %d first-contact samples verified in the server enforcer's flow records as decided on a fresh client identity; "+
				"each sample is a single connection, so the case has latencies but no connection rate, and its CPU figure sums %d short windows read in 10 ms clock ticks: an estimate", verified, samples, samples))
		}
	}
}

// setup builds the topology, the server workload, the TLS material and, if it
// can, the Bireme environment. The returned cleanup undoes all of it and is
// safe to call whatever setup managed to do.
func (r *runner) setup(ctx context.Context) (cleanup func() error, err error) {
	var undo undoStack
	cleanup = undo.run
	var b [3]byte
	_, _ = rand.Read(b[:])
	prefix := "bb" + hex.EncodeToString(b[:])
	nodes := []topology.NodeSpec{
		{Name: clientNode, Hosts: []string{clientHost}},
		{Name: serverNode, Hosts: []string{serverHost}},
	}
	if r.cfg.cases[8] {
		nodes = append(nodes, topology.NodeSpec{Name: attackerNode, Hosts: []string{attackerHost}})
	}
	topo, err := topology.Build(ctx, topology.Spec{Prefix: prefix, Nodes: nodes})
	if err != nil {
		return cleanup, fmt.Errorf("build topology: %w", err)
	}
	r.topo = topo
	undo.push(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return topo.Destroy(ctx)
	})
	r.client, r.server = topo.Host(clientHost), topo.Host(serverHost)

	// Many short connections: let the client reuse ports in TIME_WAIT and use
	// the whole port range, or the 64-client runs exhaust ephemeral ports.
	for _, s := range [][2]string{
		{"net.ipv4.tcp_tw_reuse", "1"},
		{"net.ipv4.ip_local_port_range", "1024 65535"},
	} {
		if err := r.client.NS.Exec(ctx, "sysctl", "-q", "-w", s[0]+"="+s[1]); err != nil {
			return cleanup, err
		}
	}
	if err := r.server.NS.Exec(ctx, "sysctl", "-q", "-w", "net.core.somaxconn=4096"); err != nil {
		return cleanup, err
	}

	r.tlsDir = r.tmp + "/tls"
	if err := os.Mkdir(r.tlsDir, 0o700); err != nil {
		return cleanup, err
	}
	if err := workload.WriteTLSMaterial(r.tlsDir); err != nil {
		return cleanup, err
	}
	srv, err := r.startWorker(ctx, "server", r.server.NS, roleServer,
		"-plain", fmt.Sprintf(":%d,:%d", portPlain, portDenied),
		"-tls", fmt.Sprintf(":%d", portTLS), "-tls-dir", r.tlsDir)
	if err != nil {
		return cleanup, err
	}
	undo.push(srv.stop)

	if r.cfg.cases[4] || r.cfg.cases[5] || r.cfg.cases[7] || r.cfg.cases[8] {
		env, err := prepareBireme(ctx, r)
		if err != nil {
			r.noBire = err.Error()
			fmt.Fprintf(os.Stderr, "bench: Bireme cases not available: %v\n", err)
		} else {
			r.bireme = env
		}
	} else {
		r.noBire = "not selected with -cases"
	}
	return cleanup, nil
}

// flushConntrack empties the conntrack tables of both workloads, so each case
// starts from the same state (no leftover entries or marks from the last one).
func (r *runner) flushConntrack(ctx context.Context) {
	for _, ns := range []*netns.NS{r.client.NS, r.server.NS} {
		// conntrack -F exits non-zero when the table is already empty.
		_ = ns.Exec(ctx, "conntrack", "-F")
	}
}

// checkResults returns warnings about numbers that should not be trusted.
func checkResults(res *report.Results) []string {
	var notes []string
	for _, c := range res.Cases {
		for _, rd := range c.Rounds {
			for _, l := range append(append([]*report.Load{}, rd.Loads...), rd.Cold...) {
				switch {
				case c.Key == "bireme-denied" && l.Result.Completed > 0:
					notes = append(notes, fmt.Sprintf("WRONG: case %d round %d: %d denied connections completed", c.ID, rd.Round, l.Result.Completed))
				case c.Key != "bireme-denied" && l.Result.Failed > 0:
					notes = append(notes, fmt.Sprintf("case %d round %d c=%d: %d of %d connections failed (first: %s)",
						c.ID, rd.Round, l.Concurrency, l.Result.Failed, l.Result.Attempts, l.Result.FirstError))
				}
			}
			if fl := rd.ServerFlows; fl != nil {
				var allowed, attempts int
				for _, l := range append(append([]*report.Load{}, rd.Loads...), rd.Cold...) {
					allowed += l.Result.Completed
					attempts += l.Result.Attempts
				}
				if rd.Bulk != nil {
					allowed++
				}
				if c.Key != "bireme-denied" && fl.Deny > 0 {
					notes = append(notes, fmt.Sprintf("case %d round %d: the server enforcer denied %d connections the policy allows: %v", c.ID, rd.Round, fl.Deny, fl.DenyReasons))
				}
				switch {
				case c.Key == "bireme-denied" && fl.Deny < attempts:
					notes = append(notes, fmt.Sprintf("case %d round %d: %d denied attempts but only %d deny records at the server enforcer", c.ID, rd.Round, attempts, fl.Deny))
				case c.Key != "bireme-denied" && fl.Allow < allowed:
					// Not proof of a bypass: the enforcer drops (and counts) flow
					// records when their output falls behind.
					notes = append(notes, fmt.Sprintf("case %d round %d: %d connections completed and the server enforcer wrote %d ingress allow records (it drops records when their output falls behind)", c.ID, rd.Round, allowed, fl.Allow))
				}
			}
			if rd.BulkError != "" {
				notes = append(notes, fmt.Sprintf("case %d round %d: bulk transfer failed: %s", c.ID, rd.Round, rd.BulkError))
			}
		}
	}
	return notes
}

// describeMachine reads the CPU, memory and kernel from /proc.
func describeMachine() report.Machine {
	m := report.Machine{CPUModel: "unknown", GoVersion: goVersion()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "model name":
				m.CPUModel = strings.TrimSpace(v)
			case "processor":
				m.CPUs++
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
				m.MemoryMB = kb / 1024
			}
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	m.LoadAvgStart = loadAvg()
	if out, err := exec.Command("iptables", "--version").Output(); err == nil {
		m.Iptables = strings.TrimSpace(string(out))
	}
	return m
}

// loadAvg is the first three fields of /proc/loadavg.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// gitCommit names the tree the benchmark ran on.
func gitCommit(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	commit := strings.TrimSpace(string(out))
	if st, err := exec.CommandContext(ctx, "git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		commit += "+dirty"
	}
	return commit
}
