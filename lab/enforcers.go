package lab

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// startEnforcer issues the node's keys and starts its `bireme enforce`.
func (l *Lab) startEnforcer(node string) error {
	caDir, keyDir, err := l.issueNode(node)
	if err != nil {
		return err
	}
	cmd := exec.Command(l.cfg.Binary, "enforce",
		"--node", node,
		"--store", l.cfg.path("store"),
		"--cluster", l.st.Options.Cluster,
		"--ca-bundle", filepath.Join(caDir, "ca.crt"),
		"--cert", filepath.Join(keyDir, "node.crt"),
		"--key", filepath.Join(keyDir, "node.key"),
		"--flows", l.cfg.path("flows", node+".jsonl"),
		"--poll", l.st.Options.Poll.String(),
	)
	if _, err := startDetached(cmd, l.cfg.path("logs", "enforce-"+node+".log")); err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	if err := writePID(l.cfg.path("pids", "enforce-"+node+".pid"), cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		return err
	}
	l.cfg.logf("node %s: enforcer pid %d", node, cmd.Process.Pid)
	return nil
}

// enforcerAlive reports whether node's enforcer still runs.
func (l *Lab) enforcerAlive(node string) bool {
	data, err := os.ReadFile(l.cfg.path("pids", "enforce-"+node+".pid"))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	return err == nil && alive(pid, l.cfg.StateDir)
}

// ProtectTimeout bounds how long the lab waits for enforcers to protect
// new pods.
const ProtectTimeout = 30 * time.Second

// logSizes returns the current size of every node's enforcer log, so that
// waitProtected reads only what was logged after a change.
func (l *Lab) logSizes() map[string]int64 {
	sizes := map[string]int64{}
	for _, n := range l.topo.Nodes() {
		if st, err := os.Stat(l.enforcerLog(n.Name)); err == nil {
			sizes[n.Name] = st.Size()
		}
	}
	return sizes
}

func (l *Lab) enforcerLog(node string) string {
	return l.cfg.path("logs", "enforce-"+node+".log")
}

// waitProtected waits until the enforcer of each pod's node has said, in
// its log after offset since[node], that it protects the pod (the agent
// logs `msg="workload protected" ... pod=NS/NAME` once the pod's queue is
// open and its rules are complete). It fails early, with the log's tail,
// when an enforcer exits.
func (l *Lab) waitProtected(ctx context.Context, pods []*corev1.Pod, since map[string]int64) error {
	ctx, cancel := context.WithTimeout(ctx, ProtectTimeout)
	defer cancel()
	for _, p := range pods {
		node := nodeOf(p)
		for {
			if !l.enforcerAlive(node) {
				return fmt.Errorf("enforcer of node %s exited: %s", node, tail(l.enforcerLog(node)))
			}
			if protectedSince(l.enforcerLog(node), since[node], podRef(p)) {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("pod %s: enforcer of node %s did not protect it within %s: %s", podRef(p), node, ProtectTimeout, tail(l.enforcerLog(node)))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// protectedSince reports whether logFile, from offset on, has the line
// saying ref is protected.
func protectedSince(logFile string, offset int64, ref string) bool {
	f, err := os.Open(logFile)
	if err != nil {
		return false
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return false
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, `msg="workload protected"`) && strings.Contains(line+" ", " pod="+ref+" ") {
			return true
		}
	}
	return false
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
