package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bireme/bireme/lab/topology"
)

// Each node of an enforced lab runs one detached `bireme enforce`. Any lab
// command knows it by its pid file (pids/enforce-NODE.pid), written while it
// runs and removed when the lab stops or kills it; only the command that
// started it also learns its exit status.

func (l *Lab) pidFile(node string) string     { return l.cfg.path("pids", "enforce-"+node+".pid") }
func (l *Lab) enforcerLog(node string) string { return l.cfg.path("logs", "enforce-"+node+".log") }
func (l *Lab) flowFile(node string) string    { return l.cfg.path("flows", node+".jsonl") }

// FlowKey is the file of the key that signs node's flow file head.
func (l *Lab) FlowKey(node string) string { return filepath.Join(l.keyDir(node), "flows.key") }

// startEnforcer starts node's `bireme enforce`: with the node's keys
// (issued at its first start, kept across restarts), the lab's store, its
// flow file and its metrics address (chosen at its first start, kept
// across restarts so that readers need not look it up again).
func (l *Lab) startEnforcer(node string) error {
	if _, err := os.Stat(filepath.Join(l.keyDir(node), "node.crt")); errors.Is(err, os.ErrNotExist) {
		if err := l.issueNode(node); err != nil {
			return err
		}
	}
	addr, err := l.metricsAddr(node)
	if err != nil {
		return err
	}
	cmd := exec.Command(l.cfg.Binary, "enforce",
		"--node", node,
		"--store", l.storeDir(l.clusterOf(node)),
		"--cluster", l.clusterOf(node),
		"--trust-bundles", l.bundleDir(l.clusterOf(node)),
		"--end-revoked",
		"--ca-bundle", filepath.Join(l.caDir(node), "ca.crt"),
		"--cert", filepath.Join(l.keyDir(node), "node.crt"),
		"--key", filepath.Join(l.keyDir(node), "node.key"),
		"--flows", l.flowFile(node),
		// The key of the flow file's head (made at the first start):
		// `bireme flows verify --key` checks the records against it.
		"--flows-key", l.FlowKey(node),
		"--metrics-addr", addr,
		"--poll", l.st.Options.Poll.String(),
		// Every pod of the lab runs in the hosts' range; unprotected pods
		// there get tokens they ignore, like a pod whose enforcer is down.
		"--identity-networks", topology.HostsPrefix.String(),
	)
	cmd.Args = append(cmd.Args, l.natPeerArgs()...)
	if l.st.Options.IPBlockIdentityOnly {
		cmd.Args = append(cmd.Args, "--ipblock-identity-only")
	}
	if n := l.st.Options.FlowsMaxBytes; n > 0 {
		cmd.Args = append(cmd.Args, "--flows-max-bytes", strconv.FormatInt(n, 10))
	}
	proc, err := startDetached(cmd, l.enforcerLog(node))
	if err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	if err := writePID(l.pidFile(node), cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		return err
	}
	l.enforcers[node] = proc
	l.cfg.logf("node %s: enforcer pid %d, metrics http://%s/metrics", node, cmd.Process.Pid, addr)
	return nil
}

// metricsAddr returns node's metrics address, choosing a free loopback
// port and saving it with the lab's state the first time.
func (l *Lab) metricsAddr(node string) (string, error) {
	if addr := l.st.MetricsAddrs[node]; addr != "" {
		return addr, nil
	}
	// The port is free now; the enforcer binds it a moment later. Should
	// another process take it in between, the enforcer exits and
	// waitProtected reports its log.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("node %s: metrics port: %w", node, err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if l.st.MetricsAddrs == nil {
		l.st.MetricsAddrs = map[string]string{}
	}
	l.st.MetricsAddrs[node] = addr
	return addr, l.saveState()
}

// enforcerPID returns the pid of node's enforcer, or 0 if none runs.
func (l *Lab) enforcerPID(node string) int {
	data, err := os.ReadFile(l.pidFile(node))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || !alive(pid, l.cfg.StateDir) {
		return 0
	}
	return pid
}

// enforcerExited reports whether node's enforcer has exited, with its exit
// status when this process started it (and so learns it from wait, not
// from /proc).
func (l *Lab) enforcerExited(node string) (bool, error) {
	if proc := l.enforcers[node]; proc != nil {
		select {
		case <-proc.exited:
			return true, proc.err
		default:
			return false, nil
		}
	}
	if l.enforcerPID(node) == 0 {
		return true, errors.New("exit status unknown: started by another lab command")
	}
	return false, nil
}

func (l *Lab) checkEnforcedNode(node string) error {
	if l.st.Options.NoEnforce {
		return errors.New("the lab runs without enforcers")
	}
	if l.topo.Node(node) == nil {
		return fmt.Errorf("no node %q in the lab", node)
	}
	return nil
}

// StartEnforcer starts node's enforcer again after StopEnforcer or
// KillEnforcer, with the same keys, store, flow file and metrics address,
// and waits until it protects the node's pods.
func (l *Lab) StartEnforcer(ctx context.Context, node string) error {
	if err := l.checkEnforcedNode(node); err != nil {
		return fmt.Errorf("start enforcer: %w", err)
	}
	if pid := l.enforcerPID(node); pid != 0 {
		return fmt.Errorf("start enforcer: node %s: already running (pid %d)", node, pid)
	}
	if err := l.startEnforcer(node); err != nil {
		return err
	}
	return l.waitProtected(ctx)
}

// StopEnforcer stops node's enforcer as an operator or a rolling update
// would: SIGTERM, after which it closes its queues and exits, leaving its
// rules in place (fail closed: new connections of the node's pods wait,
// authorized ones continue in the kernel) until StartEnforcer, whose
// enforcer takes the rules over. It is killed if it takes longer than
// StopGrace. For an enforcer that this process started, a non-zero exit
// status is an error too. `bireme uninstall` removes the rules.
func (l *Lab) StopEnforcer(ctx context.Context, node string) error {
	if err := l.checkEnforcedNode(node); err != nil {
		return fmt.Errorf("stop enforcer: %w", err)
	}
	if err := stopPID(ctx, l.pidFile(node), l.cfg.StateDir, StopGrace); err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	return l.reap(node)
}

// KillEnforcer kills node's enforcer with SIGKILL, as a crash would: it
// removes nothing, so its rules stay and keep handing the handshakes of the
// node's pods to a queue nobody reads (new connections fail closed; those
// already authorized continue in the kernel) until StartEnforcer.
func (l *Lab) KillEnforcer(node string) error {
	if err := l.checkEnforcedNode(node); err != nil {
		return fmt.Errorf("kill enforcer: %w", err)
	}
	if err := killPID(l.pidFile(node), l.cfg.StateDir); err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	if err := l.reap(node); err != nil && !isKilled(err) {
		return err
	}
	return nil
}

// reap collects the exit status of node's enforcer if this process started
// it; the process has already exited.
func (l *Lab) reap(node string) error {
	proc := l.enforcers[node]
	if proc == nil {
		return nil
	}
	delete(l.enforcers, node)
	select {
	case <-proc.exited:
	case <-time.After(5 * time.Second):
		return fmt.Errorf("node %s: enforcer exited but was not reaped", node)
	}
	if proc.err != nil {
		return fmt.Errorf("enforcer of node %s: %w", node, proc.err)
	}
	return nil
}

// isKilled reports whether err is the exit of a process killed by SIGKILL.
func isKilled(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// ProtectTimeout bounds how long the lab waits for enforcers to protect
// new pods or release removed ones.
const ProtectTimeout = 30 * time.Second

// protectedMetric is the enforcer's readiness signal: the number of
// workloads whose namespace has its complete rules and an open queue.
const protectedMetric = "bireme_workloads_protected"

// wantProtected counts, per node, the pods the store asks the node's
// enforcer to protect.
func (l *Lab) wantProtected() map[string]int {
	want := map[string]int{}
	for _, p := range l.objs.Pods {
		if p.Annotations[NetNSAnnotation] != "" {
			want[nodeOf(p)]++
		}
	}
	for _, objs := range l.members {
		for _, p := range objs.Pods {
			if p.Annotations[NetNSAnnotation] != "" {
				want[nodeOf(p)]++
			}
		}
	}
	return want
}

// waitProtected waits until every running enforcer's protectedMetric
// equals the number of pods the store gives its node: each has protected
// all of them, or released the ones removed. It fails early, with the
// log's tail, when an enforcer has exited.
//
// The gauge is a count: it cannot tell one pod from another, so a change
// that unprotects a pod and protects another of the same node in one step
// looks done at once. Apply settles after every change for that reason
// (and for label and policy changes, which no count shows).
func (l *Lab) waitProtected(ctx context.Context) error {
	if l.st.Options.NoEnforce {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, ProtectTimeout)
	defer cancel()
	want := l.wantProtected()
	for _, n := range l.topo.Nodes() {
		if _, err := os.Stat(l.pidFile(n.Name)); err != nil {
			continue // stopped or killed on purpose: nobody to wait for
		}
		for {
			if exited, status := l.enforcerExited(n.Name); exited {
				return fmt.Errorf("enforcer of node %s exited (%v): %s", n.Name, status, tail(l.enforcerLog(n.Name)))
			}
			got, err := l.Metric(ctx, n.Name, protectedMetric, nil)
			if err == nil && got == float64(want[n.Name]) {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("node %s: enforcer protects %v of %d pods after %s (%v): %s", n.Name, got, want[n.Name], ProtectTimeout, err, tail(l.enforcerLog(n.Name)))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// settle gives enforcers time to notice a store change: they poll it.
func (l *Lab) settle(ctx context.Context) {
	if l.st.Options.NoEnforce {
		return
	}
	select {
	case <-ctx.Done():
	case <-time.After(4*l.st.Options.Poll + 200*time.Millisecond):
	}
}

func tail(file string) string {
	data, _ := os.ReadFile(file)
	s := strings.TrimSpace(string(data))
	if len(s) > 800 {
		s = "..." + s[len(s)-800:]
	}
	if s == "" {
		return "(no output in " + file + ")"
	}
	return s
}
