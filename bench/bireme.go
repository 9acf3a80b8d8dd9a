package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bireme/bireme/bench/report"
	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/internal/testbin"
	"github.com/bireme/bireme/lab/topology"
	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/supervisor"
	"github.com/bireme/bireme/tokens"
)

// How the enforcers run.
const (
	enforcerPoll  = 100 * time.Millisecond
	trustDomain   = "bench.local"
	benchNS       = "bench"
	generationKey = "bench-generation"
)

// coldMethod is recorded in the results: how case 5 gets cold caches.
const coldMethod = "a fresh identity per measured connection: before each one, the client's and the server's Pod labels " +
	"get a new `" + generationKey + "` value in the store, the enforcers reload it (the harness waits 5 poll intervals, then until the enforcers are idle for 100 ms), " +
	"so the SYN token, SYN-ACK token and both peers' identities are ones neither enforcer has seen; node keys stay the same. " +
	"Each sample is checked afterwards in the server enforcer's flow records (the ingress decision must show the new client identity)"

// biremeEnv is what the Bireme cases need: the binary, keys and a store.
type biremeEnv struct {
	bin        string
	dir        string
	store      string
	generation int
}

// prepareBireme builds bireme from the tree (unless -bireme names one),
// issues a CA and node keys with it, and writes the store.
func prepareBireme(ctx context.Context, r *runner) (*biremeEnv, error) {
	env := &biremeEnv{bin: r.cfg.bireme, dir: filepath.Join(r.tmp, "bireme")}
	if err := os.MkdirAll(env.dir, 0o700); err != nil {
		return nil, err
	}
	if env.bin == "" {
		env.bin = filepath.Join(env.dir, "bireme")
		root, err := moduleRoot(ctx)
		if err != nil {
			return nil, err
		}
		if err := testbin.Build(ctx, root, env.bin); err != nil {
			return nil, fmt.Errorf("build ./cmd/bireme (run from the module root): %w", err)
		}
	}
	help, _ := exec.CommandContext(ctx, env.bin, "enforce", "--help").CombinedOutput()
	if !strings.Contains(string(help), "--store") {
		return nil, fmt.Errorf("`bireme enforce` is not usable yet (its --help lists no --store flag): %s", firstLine(string(help)))
	}
	ca := filepath.Join(env.dir, "ca")
	steps := [][]string{{"keys", "init-ca", "--trust-domain", trustDomain, "--out", ca}}
	for _, n := range []string{clientNode, serverNode} {
		steps = append(steps, []string{"keys", "issue-node", "--ca-dir", ca, "--node", n, "--out", filepath.Join(env.dir, n)})
	}
	for _, s := range steps {
		if out, err := exec.CommandContext(ctx, env.bin, s...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("bireme %s: %v: %s", strings.Join(s, " "), err, strings.TrimSpace(string(out)))
		}
	}
	env.store = filepath.Join(env.dir, "store")
	if err := os.MkdirAll(env.store, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(env.store, "policy.yaml"), []byte(policyYAML()), 0o600); err != nil {
		return nil, err
	}
	if err := env.writePods(r); err != nil {
		return nil, err
	}
	return env, nil
}

// moduleRoot is the directory of the go.mod the bench belongs to, so the
// binary builds the same from the module root (go run ./bench) and from the
// package directory (go test).
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the Bireme module (go env GOMOD: %q, %v): run from the module root or pass -bireme", gomod, err)
	}
	return filepath.Dir(gomod), nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// policyYAML allows the client into the server's plain port only, so the
// same pair serves the allowed case (portPlain) and the denied one
// (portDenied).
func policyYAML() string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-client
  namespace: %[1]s
spec:
  podSelector:
    matchLabels:
      app: server
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: client
    ports:
    - protocol: TCP
      port: %[2]d
`, benchNS, portPlain)
}

// writePods writes both workloads' Pods with the current generation label,
// atomically (rename), so an enforcer never reads half a file.
func (env *biremeEnv) writePods(r *runner) error {
	pod := func(name, node, netnsName, app string, port int) string {
		ports := ""
		if port > 0 {
			ports = fmt.Sprintf("\n    ports:\n    - name: echo\n      containerPort: %d\n      protocol: TCP", port)
		}
		return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  labels:
    app: %s
    %s: "%d"
  annotations:
    bireme.io/netns: %s
spec:
  nodeName: %s
  containers:
  - name: app
    image: bench%s
`, name, benchNS, app, generationKey, env.generation, netnsName, node, ports)
	}
	data := pod(clientHost, clientNode, r.client.NS.Name, "client", 0) + "---\n" +
		pod(serverHost, serverNode, r.server.NS.Name, "server", portPlain)
	tmp := filepath.Join(env.store, ".pods.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(env.store, "pods.yaml"))
}

// flowsFile is where the enforcer of node writes its flow records.
func (env *biremeEnv) flowsFile(node string) string {
	return filepath.Join(env.dir, "flows-"+node+".jsonl")
}

// startBireme runs one `bireme enforce` per node and waits until both
// workloads' namespaces have their queueing rules and a bound queue.
func (r *runner) startBireme(ctx context.Context) (*active, error) {
	return r.startBiremeWith(ctx, true)
}

// startBiremeWith is startBireme with the two-message handshake on or off.
// On, it waits out the enforcers' start-up window (no two-message
// handshake is accepted until it has passed, tokens.Config.TwoMessageWindow)
// so that the warm-up and the measured runs take the path they are for.
func (r *runner) startBiremeWith(ctx context.Context, twoMessage bool) (*active, error) {
	env := r.bireme
	act := &active{}
	var undo undoStack
	act.stop = undo.run
	// Whatever happened to the enforcers, no rule of theirs may outlive the
	// case: the next case would measure through it.
	undo.push(r.removeLeftoverRules)
	for _, node := range []string{clientNode, serverNode} {
		args := []string{"enforce", "--node", node, "--store", env.store, "--cluster", trustDomain,
			"--ca-bundle", filepath.Join(env.dir, "ca", "ca.crt"),
			"--cert", filepath.Join(env.dir, node, "node.crt"), "--key", filepath.Join(env.dir, node, "node.key"),
			"--flows", env.flowsFile(node), "--queues", strconv.Itoa(r.cfg.queues), "--poll", enforcerPoll.String(),
			"--identity-networks", topology.HostsPrefix.String(),
			"--two-message=" + strconv.FormatBool(twoMessage)}
		w, err := r.startProcess(ctx, "bireme enforce "+node, env.bin, args...)
		if err != nil {
			return nil, errors.Join(err, act.stop())
		}
		act.procs = append(act.procs, w)
		undo.push(w.stop)
	}
	for _, ns := range []*netns.NS{r.client.NS, r.server.NS} {
		if err := waitQueueBound(ctx, ns, act.procs); err != nil {
			return nil, errors.Join(err, act.stop())
		}
	}
	if twoMessage {
		select {
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), act.stop())
		case <-time.After(tokens.DefaultTwoMessageWindow + 500*time.Millisecond):
		}
	}
	return act, nil
}

// removeLeftoverRules removes Bireme's chains from both workloads if a
// stopped enforcer left any (it should remove them itself on SIGTERM), and
// says so.
func (r *runner) removeLeftoverRules() error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var errs []error
	for _, h := range []*topology.Host{r.client, r.server} {
		var left bool
		for _, table := range []string{"mangle", "filter"} {
			out, err := h.NS.Output(ctx, "iptables", "-w", "-t", table, "-S")
			if err != nil {
				errs = append(errs, err)
				continue
			}
			left = left || strings.Contains(string(out), supervisor.ChainPrefix)
		}
		if !left {
			continue
		}
		err := supervisor.New(marks.Layout{}).Unprotect(ctx, h.NS.Path())
		errs = append(errs, fmt.Errorf("the enforcer left %s* rules in %s (removed: %v)", supervisor.ChainPrefix, h.NS.Name, err == nil))
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// startProcess starts a non-worker program (the enforcer) with its output in
// a log file; it is ready when waitQueueBound says so.
func (r *runner) startProcess(ctx context.Context, name, bin string, args ...string) (*worker, error) {
	logPath := filepath.Join(r.tmp, strings.ReplaceAll(name, " ", "-")+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	w := &worker{name: name, cmd: cmd, done: make(chan error, 1), log: logPath}
	go func() { w.done <- cmd.Wait() }()
	return w, nil
}

// protectedJumps are the jumps the supervisor inserts last, after its
// chains are complete (see package supervisor): while any is missing,
// traffic in the namespace is not yet enforced.
var protectedJumps = []struct{ table, rule string }{
	{"mangle", "-A INPUT -p tcp -m comment --comment bireme -j BIREME-INPUT"},
	{"mangle", "-A OUTPUT -p tcp -m comment --comment bireme -j BIREME-OUTPUT"},
	{"filter", "-A INPUT -p tcp -m comment --comment bireme -j BIREME-SAVE"},
	{"filter", "-A OUTPUT -p tcp -m comment --comment bireme -j BIREME-SAVE"},
}

// waitQueueBound polls (bounded) until ns is fully protected (every jump of
// the supervisor in place) and a queue is bound by a reader, or one of procs
// exits.
func waitQueueBound(ctx context.Context, ns *netns.NS, procs []*worker) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		if protected(ctx, ns) {
			queues, _ := ns.Output(ctx, "cat", "/proc/net/netfilter/nfnetlink_queue")
			if len(strings.TrimSpace(string(queues))) > 0 {
				return nil
			}
		}
		for _, w := range procs {
			select {
			case err := <-w.done:
				w.done <- err // let stop() see it too
				return fmt.Errorf("%s exited: %v: %s", w.name, err, tail(w.log))
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not protected (Bireme's jumps and a bound queue) after 20s; enforcer logs: %s", ns.Name, tailAll(procs))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// protected reports whether every jump of protectedJumps is in ns.
func protected(ctx context.Context, ns *netns.NS) bool {
	rules := map[string]string{}
	for _, table := range []string{"mangle", "filter"} {
		out, err := ns.Output(ctx, "iptables", "-w", "-t", table, "-S")
		if err != nil {
			return false
		}
		rules[table] = string(out)
	}
	for _, j := range protectedJumps {
		if !strings.Contains(rules[j.table], j.rule) {
			return false
		}
	}
	return true
}

func tailAll(ws []*worker) string {
	var parts []string
	for _, w := range ws {
		parts = append(parts, w.name+": "+tail(w.log))
	}
	return strings.Join(parts, " | ")
}

// measureCold takes cfg.coldSamples first-contact connections, each after
// both workloads got a fresh identity, and checks in the server enforcer's
// flow records that each one was decided on the fresh client identity.
func (r *runner) measureCold(ctx context.Context, act *active, rr *report.Round) error {
	env := r.bireme
	var gens []int
	for i := 0; i < r.cfg.coldSamples; i++ {
		env.generation++
		if err := env.writePods(r); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * enforcerPoll):
		}
		if err := r.waitQuiet(ctx, act); err != nil {
			return err
		}
		args := []string{"-addr", r.serverAddr(portPlain), "-c", "1", "-d", "10s", "-max", "1", "-timeout", r.cfg.connectTimeout.String()}
		l, err := r.chargedLoad(ctx, act, 1, args)
		if err != nil {
			return err
		}
		rr.Cold = append(rr.Cold, l)
		gens = append(gens, env.generation)
	}
	verified, err := countFreshDecisions(env.flowsFile(serverNode), gens)
	if err != nil {
		return fmt.Errorf("check cold samples in flow records: %w", err)
	}
	rr.ColdVerified = verified
	return nil
}

// waitQuiet waits (at most 2 s) until the enforcers used at most one clock
// tick of CPU in 100 ms, so the work of reloading the store is over and not
// charged to the connection that follows.
func (r *runner) waitQuiet(ctx context.Context, act *active) error {
	for i := 0; i < 20; i++ {
		before, err := r.cpu(act)
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		after, err := r.cpu(act)
		if err != nil {
			return err
		}
		if after-before <= 10*time.Millisecond {
			return nil
		}
	}
	return nil // busy for other reasons (the machine is shared): measure anyway
}

// countFreshDecisions counts generations for which the flow file holds an
// allowed ingress decision whose peer (the client) carried that generation.
func countFreshDecisions(path string, gens []int) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	recs, err := flowlog.Read(f)
	if err != nil {
		return 0, err
	}
	want := map[string]bool{}
	for _, g := range gens {
		want[strconv.Itoa(g)] = true
	}
	seen := map[string]bool{}
	for _, rec := range recs {
		if rec.Direction != "ingress" || rec.Verdict != "allow" || rec.Peer == nil {
			continue
		}
		if g := rec.Peer.Labels[generationKey]; want[g] {
			seen[g] = true
		}
	}
	return len(seen), nil
}

// fileSize is the size of path, 0 if it does not exist yet.
func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// countIngress counts the ingress decisions in the flow records that follow
// byte offset from in path.
func countIngress(path string, from int64) (*report.FlowCount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil, err
	}
	recs, err := flowlog.Read(f)
	if err != nil {
		return nil, err
	}
	fc := &report.FlowCount{}
	for _, rec := range recs {
		if rec.Direction != "ingress" {
			continue
		}
		switch rec.Verdict {
		case "allow":
			fc.Allow++
		case "deny":
			fc.Deny++
			if fc.DenyReasons == nil {
				fc.DenyReasons = map[string]int{}
			}
			reason := rec.Reason
			if rec.TokenError != "" {
				reason += " (token: " + rec.TokenError + ")"
			}
			fc.DenyReasons[reason]++
		}
	}
	return fc, nil
}
