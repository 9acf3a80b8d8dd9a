package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/bireme/bireme/bench/nfqaccept"
	"github.com/bireme/bireme/bench/workload"
	"github.com/bireme/bireme/netns"
)

// workerEnv, when set, turns the bench binary into one of its worker roles:
// the harness starts itself again (with `ip netns exec` for the workloads) so
// that client, server and queue readers are separate processes, like the
// workloads and node agents they stand for.
const workerEnv = "BIREME_BENCH_WORKER"

// Worker roles.
const (
	roleServer = "server"     // serves plain, TLS and "denied" ports until SIGTERM
	roleLoad   = "load"       // one load run; prints a workload.LoadResult as JSON
	roleBulk   = "bulk"       // one bulk transfer; prints a workload.BulkResult as JSON
	roleNFQ    = "nfq-accept" // accept-only NFQUEUE reader until SIGTERM
	// roleFlood (flood.go) sends forged-token SYNs until SIGTERM.
)

// readyLine is what long-running workers print once they serve.
const readyLine = "ready"

// runWorker runs role with args and returns the process exit code.
func runWorker(role string, args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch role {
	case roleServer:
		err = workerServer(ctx, args)
	case roleLoad:
		err = workerLoad(ctx, args)
	case roleBulk:
		err = workerBulk(ctx, args)
	case roleNFQ:
		err = workerNFQ(ctx, args)
	case roleFlood:
		err = workerFlood(ctx, args)
	default:
		err = fmt.Errorf("unknown worker role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", role, err)
		return 1
	}
	return 0
}

func workerServer(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(roleServer, flag.ContinueOnError)
	plain := fs.String("plain", "", "comma-separated listen addresses for plain TCP")
	tlsAddr := fs.String("tls", "", "listen address for mutual TLS")
	tlsDir := fs.String("tls-dir", "", "directory with the TLS material")
	if err := fs.Parse(args); err != nil {
		return err
	}
	srvTLS, err := workload.ServerTLSConfig(*tlsDir)
	if err != nil {
		return err
	}
	type listener struct {
		ln   net.Listener
		conf *tls.Config
	}
	var lns []listener
	for _, a := range strings.Split(*plain, ",") {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return err
		}
		lns = append(lns, listener{ln, nil})
	}
	ln, err := net.Listen("tcp", *tlsAddr)
	if err != nil {
		return err
	}
	lns = append(lns, listener{ln, srvTLS})
	errs := make(chan error, len(lns))
	for _, l := range lns {
		go func() { errs <- workload.Serve(ctx, l.ln, l.conf) }()
	}
	fmt.Println(readyLine)
	var first error
	for range lns {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func workerLoad(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(roleLoad, flag.ContinueOnError)
	var spec workload.LoadSpec
	fs.StringVar(&spec.Addr, "addr", "", "server host:port")
	fs.IntVar(&spec.Concurrency, "c", 1, "concurrent clients")
	fs.DurationVar(&spec.Duration, "d", time.Second, "duration")
	fs.IntVar(&spec.MaxConns, "max", 0, "maximum attempts (0: no limit)")
	fs.DurationVar(&spec.ConnectTimeout, "timeout", 5*time.Second, "connect timeout")
	tlsDir := fs.String("tls-dir", "", "use mutual TLS with the material in this directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *tlsDir != "" {
		conf, err := workload.ClientTLSConfig(*tlsDir)
		if err != nil {
			return err
		}
		spec.TLS = conf
	}
	res, err := workload.RunLoad(ctx, spec)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func workerBulk(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(roleBulk, flag.ContinueOnError)
	addr := fs.String("addr", "", "server host:port")
	n := fs.Int64("bytes", 1<<30, "bytes to send")
	timeout := fs.Duration("timeout", 5*time.Second, "connect timeout")
	tlsDir := fs.String("tls-dir", "", "use mutual TLS with the material in this directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var conf *tls.Config
	if *tlsDir != "" {
		var err error
		if conf, err = workload.ClientTLSConfig(*tlsDir); err != nil {
			return err
		}
	}
	res, err := workload.RunBulk(ctx, *addr, conf, *n, *timeout)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func workerNFQ(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(roleNFQ, flag.ContinueOnError)
	var cfg nfqaccept.Config
	fs.StringVar(&cfg.NetNSPath, "netns", "", "namespace path of the queue")
	queue := fs.Uint("queue", 0, "queue number")
	pending := fs.Uint("pending", 0, "packet mark for accepted SYN-ACKs (the supervisor's Pending bit)")
	authorized := fs.Uint("authorized", 0, "packet mark for accepted handshake ACKs (the supervisor's Authorized bit)")
	fs.BoolVar(&cfg.FourTrips, "four-trips", false, "mark every accepted SYN and SYN-ACK Authorized: the ACK is never queued")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.Queue, cfg.Pending, cfg.Authorized = uint16(*queue), uint32(*pending), uint32(*authorized)
	return nfqaccept.Run(ctx, cfg, func() { fmt.Println(readyLine) })
}

// worker is a long-running worker process started by the harness.
type worker struct {
	name string
	cmd  *exec.Cmd
	done chan error
	log  string // file with its standard error
}

// startWorker starts role as a separate process, inside ns when ns is non-nil,
// and waits (bounded) until it prints the ready line.
func (r *runner) startWorker(ctx context.Context, name string, ns *netns.NS, role string, args ...string) (*worker, error) {
	cmd := r.workerCmd(ns, role, args...)
	logPath := fmt.Sprintf("%s/%s.log", r.tmp, strings.ReplaceAll(name, " ", "-"))
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	w := &worker{name: name, cmd: cmd, done: make(chan error, 1), log: logPath}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == readyLine {
				ready <- true
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		w.done <- cmd.Wait()
	}()
	select {
	case <-ready:
		return w, nil
	case err := <-w.done:
		return nil, fmt.Errorf("%s exited before it was ready: %v: %s", name, err, tail(logPath))
	case <-time.After(15 * time.Second):
		w.stop()
		return nil, fmt.Errorf("%s not ready after 15s: %s", name, tail(logPath))
	case <-ctx.Done():
		w.stop()
		return nil, ctx.Err()
	}
}

// stop sends SIGTERM, waits up to 10 s, then kills; it reports a non-zero
// exit that followed SIGTERM.
func (w *worker) stop() error {
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-w.done:
		if err != nil {
			return fmt.Errorf("%s: %w: %s", w.name, err, tail(w.log))
		}
		return nil
	case <-time.After(10 * time.Second):
		_ = w.cmd.Process.Kill()
		<-w.done
		return fmt.Errorf("%s ignored SIGTERM for 10s and was killed", w.name)
	}
}

// workerCmd builds the command running role, inside ns when non-nil.
func (r *runner) workerCmd(ns *netns.NS, role string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if ns != nil {
		// Not CommandContext: workers are stopped with SIGTERM by stop,
		// not killed when a context ends.
		cmd = ns.Command(context.Background(), r.exe, args...)
	} else {
		cmd = exec.Command(r.exe, args...)
	}
	cmd.Env = append(os.Environ(), workerEnv+"="+role)
	return cmd
}

// runOnce runs a short-lived worker in ns and decodes its JSON answer into
// out; the worker is killed if it outlives limit.
func (r *runner) runOnce(ctx context.Context, ns *netns.NS, role string, limit time.Duration, out any, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := r.workerCmd(ns, role, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s worker: %w", role, err)
	}
	stopKill := context.AfterFunc(ctx, func() { _ = cmd.Process.Kill() })
	defer stopKill()
	data, _ := io.ReadAll(stdout)
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s worker killed after %s", role, limit)
		}
		return fmt.Errorf("%s worker: %w: %s", role, err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s worker output %q: %w", role, data, err)
	}
	return nil
}

// tail returns the last lines of a log file, for error messages.
func tail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	s := strings.TrimSpace(string(data))
	if len(s) > 1500 {
		s = "..." + s[len(s)-1500:]
	}
	if s == "" {
		return "(empty log)"
	}
	return s
}
