// Package lab builds a Kubernetes-like cluster of workloads on one machine
// from standard Namespace, Pod and NetworkPolicy YAML, runs Bireme on it,
// and measures who can reach whom.
//
// Each pod becomes a network namespace (a host of package topology) with an
// address from 198.18.0.0/15 and a small server on every declared TCP
// container port that answers with the pod's "namespace/name". Each distinct
// spec.nodeName becomes a topology node with its own `bireme enforce`
// process, node keys issued by a lab CA (package tokens), and the shared
// file store.
//
// A lab lives in a state directory:
//
//	prefix          the topology's namespace prefix (written first, so `down` works after any crash)
//	state.json      options and the topology's layout
//	store/          the enforcers' file store: the user's objects, pods annotated with bireme.io/netns
//	keys/           ca/ (cluster CA), untrusted-ca/, nodes/NODE/ (node.crt, node.key), as `bireme keys` lays them out
//	flows/NODE.jsonl  each enforcer's flow records
//	logs/           output of every enforcer and server
//	pids/           enforce-NODE.pid
//	lock            held by the command working on the lab
//
// Up builds a lab, Open reopens it from another process, Apply and Delete
// change it, Probe measures it, Down removes it (also after a crash).
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
	"github.com/bireme/bireme/topology"
)

// DefaultStateDir is where `bireme lab up` keeps a lab unless told otherwise.
const DefaultStateDir = "/run/bireme-lab"

// DefaultNode is the node of pods that name none in spec.nodeName.
const DefaultNode = "node1"

// DefaultCluster is the trust domain of a lab's identities.
const DefaultCluster = "lab"

// Config says where a lab lives and which binary runs its parts.
type Config struct {
	// StateDir holds the lab (see the package doc).
	StateDir string
	// Binary is the bireme executable that runs the servers
	// (`bireme lab serve`), the enforcers and the key tools.
	Binary string
	// Log receives one line per step; nil discards.
	Log io.Writer
}

// Options choose how Up builds a lab.
type Options struct {
	// NAT masquerades traffic between nodes, so servers see node addresses.
	// The enforcers are told (--nat-peers) that the lab's trust domain is
	// reached through NAT from those addresses.
	NAT bool
	// NoNATDeclaration leaves that declaration out, so that connections
	// between nodes fail closed under NAT: for tests of exactly that.
	NoNATDeclaration bool `json:",omitempty"`
	// NoEnforce builds the lab without enforcers: plain routing, every
	// connection allowed. For comparisons and debugging.
	NoEnforce bool
	// UntrustedNodes get node keys from a CA the other nodes do not trust
	// (same trust domain): their pods present forged identities.
	UntrustedNodes []string
	// Prefix of every namespace name; a random "bl" + 4 hex digits if empty.
	Prefix string
	// Cluster is the trust domain (DefaultCluster if empty).
	Cluster string
	// Poll is the enforcers' store poll interval (200ms if zero).
	Poll time.Duration
}

// state is what later commands need to know about a lab: state.json.
type state struct {
	Options  Options        `json:"options"`
	Topology topology.State `json:"topology"`
}

// Lab is a running lab, opened by one command. It is not safe for
// concurrent use; the lock file keeps two commands off one lab.
type Lab struct {
	cfg  Config
	st   state
	topo *topology.Topology
	objs policy.Objects // what the store holds
	lock *os.File
}

func (c Config) path(parts ...string) string {
	return filepath.Join(append([]string{c.StateDir}, parts...)...)
}

func (c Config) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format+"\n", args...)
	}
}

// Up builds a lab from the objects in files and leaves it running. If any
// step fails, everything made so far is removed.
func Up(ctx context.Context, cfg Config, opts Options, files ...string) (_ *Lab, err error) {
	if len(files) == 0 {
		return nil, errors.New("lab up: no files (-f FILE)")
	}
	objs, err := policy.LoadFiles(files...)
	if err != nil {
		return nil, err
	}
	if _, err := policy.Compile(objs); err != nil {
		return nil, fmt.Errorf("lab up: %w", err)
	}
	if err := checkPods(objs); err != nil {
		return nil, err
	}
	if opts.Prefix == "" {
		var b [2]byte
		_, _ = rand.Read(b[:])
		opts.Prefix = "bl" + hex.EncodeToString(b[:])
	}
	if opts.Cluster == "" {
		opts.Cluster = DefaultCluster
	}
	if opts.Poll == 0 {
		opts.Poll = 200 * time.Millisecond
	}
	if _, err := os.Stat(cfg.path("prefix")); err == nil {
		return nil, fmt.Errorf("lab up: a lab already lives in %s (run `bireme lab down --state %s` first)", cfg.StateDir, cfg.StateDir)
	}
	if cfg.Binary == "" {
		return nil, errors.New("lab up: no bireme binary configured")
	}
	for _, d := range []string{"", "store", "keys", "flows", "logs", "pids"} {
		if err := os.MkdirAll(cfg.path(d), 0o755); err != nil {
			return nil, fmt.Errorf("lab up: %w", err)
		}
	}
	l := &Lab{cfg: cfg, st: state{Options: opts}}
	if err := l.takeLock(); err != nil {
		return nil, err
	}
	// From here on a failure tears down whatever was made.
	if err := os.WriteFile(cfg.path("prefix"), []byte(opts.Prefix+"\n"), 0o644); err != nil {
		l.unlock()
		return nil, fmt.Errorf("lab up: %w", err)
	}
	defer func() {
		if err != nil {
			l.unlock()
			if derr := Down(context.WithoutCancel(ctx), cfg); derr != nil {
				err = errors.Join(err, fmt.Errorf("clean up after failed lab up: %w", derr))
			}
		}
	}()

	spec := topology.Spec{Prefix: opts.Prefix, NAT: opts.NAT}
	for _, node := range nodesOf(objs) {
		ns := topology.NodeSpec{Name: node}
		for _, p := range objs.Pods {
			if nodeOf(p) == node {
				ns.Hosts = append(ns.Hosts, hostName(p))
			}
		}
		spec.Nodes = append(spec.Nodes, ns)
	}
	cfg.logf("building %d nodes, %d pods (prefix %s)", len(spec.Nodes), len(objs.Pods), opts.Prefix)
	l.topo, err = topology.Build(ctx, spec)
	if err != nil {
		return nil, err
	}
	if err := l.saveState(); err != nil {
		return nil, err
	}
	if err := l.startServers(ctx, objs.Pods); err != nil {
		return nil, err
	}
	if !opts.NoEnforce {
		if err := l.initKeys(); err != nil {
			return nil, err
		}
	}
	l.objs = l.annotate(objs)
	if err := syncStore(cfg.path("store"), l.objs); err != nil {
		return nil, err
	}
	if !opts.NoEnforce {
		for _, n := range l.topo.Nodes() {
			if err := l.startEnforcer(n.Name); err != nil {
				return nil, err
			}
		}
		if err := l.waitProtected(ctx, l.objs.Pods, nil); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// checkPods refuses pods the lab cannot build: namespace and name too long
// for a network namespace name (every other check is the policy loader's).
func checkPods(objs policy.Objects) error {
	for _, p := range objs.Pods {
		if len(hostName(p)) > 63 {
			return fmt.Errorf("pod %s: namespace and name together must be at most 62 characters in a lab", podRef(p))
		}
	}
	return nil
}

func nodeOf(p *corev1.Pod) string {
	if p.Spec.NodeName == "" {
		return DefaultNode
	}
	return p.Spec.NodeName
}

// nodesOf returns the distinct nodes of objs' pods, sorted.
func nodesOf(objs policy.Objects) []string {
	var nodes []string
	for _, p := range objs.Pods {
		if !slices.Contains(nodes, nodeOf(p)) {
			nodes = append(nodes, nodeOf(p))
		}
	}
	sort.Strings(nodes)
	return nodes
}

// annotate returns objs with every pod placed on its node and annotated
// with its network namespace, as the enforcers expect.
func (l *Lab) annotate(objs policy.Objects) policy.Objects {
	out := objs
	out.Pods = make([]*corev1.Pod, len(objs.Pods))
	for i, p := range objs.Pods {
		c := p.DeepCopy()
		c.Spec.NodeName = nodeOf(p)
		if c.Annotations == nil {
			c.Annotations = map[string]string{}
		}
		c.Annotations[NetNSAnnotation] = topology.HostNSName(l.st.Options.Prefix, hostName(p))
		out.Pods[i] = c
	}
	return out
}

// Open reopens the lab in cfg.StateDir, made by Up in this or another
// process. Close releases it.
func Open(cfg Config) (*Lab, error) {
	data, err := os.ReadFile(cfg.path("state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no lab in %s (start one with `bireme lab up`)", cfg.StateDir)
	}
	if err != nil {
		return nil, fmt.Errorf("open lab: %w", err)
	}
	l := &Lab{cfg: cfg}
	if err := json.Unmarshal(data, &l.st); err != nil {
		return nil, fmt.Errorf("open lab: %s: %w", cfg.path("state.json"), err)
	}
	if err := l.takeLock(); err != nil {
		return nil, err
	}
	if l.topo, err = topology.Restore(l.st.Topology); err != nil {
		l.unlock()
		return nil, fmt.Errorf("open lab (run `bireme lab down` to clean up): %w", err)
	}
	if l.objs, err = policy.LoadDir(cfg.path("store")); err != nil {
		l.unlock()
		return nil, fmt.Errorf("open lab: %w", err)
	}
	return l, nil
}

// Close releases the lab for other commands; the lab keeps running.
func (l *Lab) Close() error {
	l.unlock()
	return nil
}

func (l *Lab) takeLock() error {
	f, err := os.OpenFile(l.cfg.path("lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("lab lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("lab in %s is busy with another command", l.cfg.StateDir)
	}
	l.lock = f
	return nil
}

func (l *Lab) unlock() {
	if l.lock != nil {
		l.lock.Close()
		l.lock = nil
	}
}

func (l *Lab) saveState() error {
	l.st.Topology = l.topo.State()
	data, err := json.MarshalIndent(l.st, "", "  ")
	if err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	tmp := l.cfg.path(".state.json.tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	if err := os.Rename(tmp, l.cfg.path("state.json")); err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	return nil
}

// startServer runs `bireme lab serve` inside the pod's namespace, on every
// declared TCP port; the returned function waits until each port answers.
// Starting every server before waiting for any keeps a large lab quick.
func (l *Lab) startServer(ctx context.Context, p *corev1.Pod) (wait func() error, err error) {
	ports := tcpPorts(p)
	if len(ports) == 0 {
		return func() error { return nil }, nil
	}
	h := l.topo.Host(hostName(p))
	if h == nil {
		return nil, fmt.Errorf("pod %s: no host", podRef(p))
	}
	args := []string{"lab", "serve", "--ref", podRef(p)}
	for _, port := range ports {
		args = append(args, "--port", strconv.Itoa(int(port)))
	}
	// Not bound to ctx: the server outlives this command; it dies with
	// its namespace.
	cmd := h.NS.Command(context.Background(), l.cfg.Binary, args...)
	logFile := l.cfg.path("logs", "serve-"+h.Name+".log")
	exited, err := startDetached(cmd, logFile)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", podRef(p), err)
	}
	return func() error {
		deadline := time.Now().Add(ServerTimeout)
		target := Target{Ref: podRef(p), NS: h.NS, Addr: h.Addr}
		for _, port := range ports {
			for {
				r := Result{Port: port}
				probeOne(ctx, target, target, &r)
				if r.Connected {
					break
				}
				select {
				case <-exited:
					return fmt.Errorf("pod %s: server exited: %s", podRef(p), tail(logFile))
				default:
				}
				if time.Now().After(deadline) || ctx.Err() != nil {
					return fmt.Errorf("pod %s: server on port %d does not answer (%s): %s", podRef(p), port, r.Reason, tail(logFile))
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		return nil
	}, nil
}

// ServerTimeout bounds how long a pod's server may take to answer after
// it was started.
const ServerTimeout = 10 * time.Second

// startServers starts the servers of pods, then waits for all of them.
func (l *Lab) startServers(ctx context.Context, pods []*corev1.Pod) error {
	var waits []func() error
	for _, p := range pods {
		wait, err := l.startServer(ctx, p)
		if err != nil {
			return err
		}
		waits = append(waits, wait)
	}
	for _, wait := range waits {
		if err := wait(); err != nil {
			return err
		}
	}
	return nil
}

// Key lifetimes in a lab: long enough for any session, short enough that
// stray lab keys are worthless soon.
const (
	caValidity   = 30 * 24 * time.Hour
	nodeValidity = 7 * 24 * time.Hour
)

// initKeys makes the cluster CA and the untrusted CA of forged nodes, in
// the layout of `bireme keys init-ca` (DIR/ca.crt, DIR/ca.key).
func (l *Lab) initKeys() error {
	for _, dir := range []string{"ca", "untrusted-ca"} {
		ca, err := tokens.NewCA(l.st.Options.Cluster, caValidity)
		if err != nil {
			return fmt.Errorf("lab keys: %w", err)
		}
		if err := os.MkdirAll(l.cfg.path("keys", dir), 0o700); err != nil {
			return fmt.Errorf("lab keys: %w", err)
		}
		if err := ca.Save(l.cfg.path("keys", dir, "ca.crt"), l.cfg.path("keys", dir, "ca.key")); err != nil {
			return fmt.Errorf("lab keys: %w", err)
		}
	}
	return nil
}

// issueNode gives node its credentials (as `bireme keys issue-node`) from
// the cluster CA, or from the untrusted CA for an untrusted node; it
// returns the directory of the issuing CA.
func (l *Lab) issueNode(node string) (caDir, keyDir string, err error) {
	caDir = l.cfg.path("keys", "ca")
	if l.untrusted(node) {
		caDir = l.cfg.path("keys", "untrusted-ca")
	}
	keyDir = l.cfg.path("keys", "nodes", node)
	ca, err := tokens.LoadCA(filepath.Join(caDir, "ca.crt"), filepath.Join(caDir, "ca.key"))
	if err != nil {
		return "", "", fmt.Errorf("node %s keys: %w", node, err)
	}
	creds, err := ca.IssueNode(node, nodeValidity)
	if err != nil {
		return "", "", fmt.Errorf("node %s keys: %w", node, err)
	}
	if err := os.MkdirAll(keyDir, 0o700); err != nil {
		return "", "", fmt.Errorf("node %s keys: %w", node, err)
	}
	if err := creds.Save(filepath.Join(keyDir, "node.crt"), filepath.Join(keyDir, "node.key")); err != nil {
		return "", "", fmt.Errorf("node %s keys: %w", node, err)
	}
	return caDir, keyDir, nil
}

func (l *Lab) untrusted(node string) bool {
	return slices.Contains(l.st.Options.UntrustedNodes, node)
}

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
	cmd.Args = append(cmd.Args, l.natPeerArgs()...)
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

// Apply adds or replaces the objects in files on the running lab: new pods
// get a namespace, a server and (on a new node) an enforcer; pods whose node
// or ports changed are rebuilt; label changes of pods and namespaces and
// policy changes only update the store, which the enforcers reload. Invalid
// input changes nothing.
func (l *Lab) Apply(ctx context.Context, files ...string) error {
	upd, err := policy.LoadFiles(files...)
	if err != nil {
		return err
	}
	if err := checkPods(upd); err != nil {
		return err
	}
	next := merge(l.objs, upd)
	if _, err := policy.Compile(next); err != nil {
		return fmt.Errorf("lab apply: %w", err)
	}
	var added, rebuilt []*corev1.Pod
	for _, p := range upd.Pods {
		old := l.objs.Pod(p.Namespace, p.Name)
		switch {
		case old == nil:
			added = append(added, p)
		case nodeOf(old) != nodeOf(p) || !slices.Equal(tcpPorts(old), tcpPorts(p)):
			rebuilt = append(rebuilt, p)
		}
	}
	if len(rebuilt) > 0 {
		if err := l.shrinkTo(ctx, without(l.objs, policy.Objects{Pods: rebuilt})); err != nil {
			return err
		}
	}
	fresh := append(added, rebuilt...)
	for _, p := range fresh {
		if err := l.addPod(ctx, p); err != nil {
			return err
		}
	}
	if err := l.startServers(ctx, fresh); err != nil {
		return err
	}
	since := l.logSizes()
	l.objs = l.annotate(next)
	if err := syncStore(l.cfg.path("store"), l.objs); err != nil {
		return err
	}
	l.settle(ctx)
	if !l.st.Options.NoEnforce && len(fresh) > 0 {
		return l.waitProtected(ctx, fresh, since)
	}
	return nil
}

// addPod makes the pod's host (and node, with its enforcer, when new).
func (l *Lab) addPod(ctx context.Context, p *corev1.Pod) error {
	node := nodeOf(p)
	if l.topo.Node(node) == nil {
		if _, err := l.topo.AddNode(ctx, node); err != nil {
			return err
		}
		if err := l.saveState(); err != nil {
			return err
		}
		if !l.st.Options.NoEnforce {
			if err := l.startEnforcer(node); err != nil {
				return err
			}
		}
	}
	if _, err := l.topo.AddHost(ctx, node, hostName(p)); err != nil {
		return err
	}
	return l.saveState()
}

// Delete removes the objects named in files (by kind, namespace and name;
// the rest of each object is ignored). Deleting a Namespace deletes its
// pods and policies. Removed pods leave the store before their namespace
// is deleted.
func (l *Lab) Delete(ctx context.Context, files ...string) error {
	del, err := policy.LoadFiles(files...)
	if err != nil {
		return err
	}
	return l.shrinkTo(ctx, without(l.objs, del))
}

// shrinkTo makes next, the lab's objects less some, current and deletes the
// namespaces of the pods it no longer has. Those pods leave the store first,
// so their enforcer lets go of each namespace before it is deleted.
func (l *Lab) shrinkTo(ctx context.Context, next policy.Objects) error {
	if err := syncStore(l.cfg.path("store"), next); err != nil {
		return err
	}
	var gone []string
	for _, p := range l.objs.Pods {
		if next.Pod(p.Namespace, p.Name) == nil {
			gone = append(gone, hostName(p))
		}
	}
	l.objs = next
	l.settle(ctx)
	for _, h := range gone {
		if err := l.topo.RemoveHost(ctx, h); err != nil {
			return err
		}
	}
	return l.saveState()
}

// targets lists the lab's pods as probe targets, sorted by reference.
func (l *Lab) targets() []Target {
	var out []Target
	for _, p := range l.objs.Pods {
		h := l.topo.Host(hostName(p))
		if h == nil {
			continue
		}
		out = append(out, Target{Ref: podRef(p), NS: h.NS, Addr: h.Addr, Ports: tcpPorts(p)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ref < out[j].Ref })
	return out
}

// Pods returns the references ("namespace/name") of the lab's pods, sorted.
func (l *Lab) Pods() []string {
	var out []string
	for _, t := range l.targets() {
		out = append(out, t.Ref)
	}
	return out
}

// Probe tries every (pod, other pod, declared TCP port) with a real TCP
// connection and explains refusals from the enforcers' flow records.
func (l *Lab) Probe(ctx context.Context) ([]Result, error) {
	start := time.Now()
	results := ProbeAll(ctx, l.targets())
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var files []string
	for _, n := range l.topo.Nodes() {
		files = append(files, l.cfg.path("flows", n.Name+".jsonl"))
	}
	// Records of handshakes that timed out may be written a moment after
	// the client gave up.
	time.Sleep(100 * time.Millisecond)
	records, err := ReadFlowFiles(files...)
	if err != nil {
		return nil, err
	}
	var recent = records[:0]
	for _, r := range records {
		if !r.Time.Before(start.Add(-time.Second)) {
			recent = append(recent, r)
		}
	}
	ExplainFromFlows(results, recent)
	return results, nil
}

// PodStatus describes one pod of a running lab: `lab status`.
type PodStatus struct {
	Pod    string            `json:"pod"`   // "namespace/name"
	NetNS  string            `json:"netns"` // usable with `ip netns exec`
	Addr   netip.Addr        `json:"addr"`
	Node   string            `json:"node"`
	Labels map[string]string `json:"labels"`
	Ports  []uint16          `json:"ports"`
}

// NodeStatus describes one node of a running lab.
type NodeStatus struct {
	Name  string     `json:"name"`
	NetNS string     `json:"netns"`
	Addr  netip.Addr `json:"addr"` // router-facing address (the NAT source)
	// EnforcerPID is the node's `bireme enforce` process, 0 if none runs.
	EnforcerPID int    `json:"enforcerPid"`
	Flows       string `json:"flows,omitempty"` // flow record file
}

// Status is `lab status --output json`.
type Status struct {
	StateDir string       `json:"stateDir"`
	Prefix   string       `json:"prefix"`
	NAT      bool         `json:"nat"`
	Enforced bool         `json:"enforced"`
	Router   string       `json:"router"`
	Nodes    []NodeStatus `json:"nodes"`
	Pods     []PodStatus  `json:"pods"`
}

// Status describes the running lab.
func (l *Lab) Status() Status {
	s := Status{StateDir: l.cfg.StateDir, Prefix: l.st.Options.Prefix, NAT: l.st.Options.NAT,
		Enforced: !l.st.Options.NoEnforce, Router: l.topo.Router().Name}
	for _, n := range l.topo.Nodes() {
		ns := NodeStatus{Name: n.Name, NetNS: n.NS.Name, Addr: n.Addr}
		if data, err := os.ReadFile(l.cfg.path("pids", "enforce-"+n.Name+".pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && alive(pid, l.cfg.StateDir) {
				ns.EnforcerPID = pid
			}
			ns.Flows = l.cfg.path("flows", n.Name+".jsonl")
		}
		s.Nodes = append(s.Nodes, ns)
	}
	pods := append([]*corev1.Pod(nil), l.objs.Pods...)
	sort.Slice(pods, func(i, j int) bool { return podRef(pods[i]) < podRef(pods[j]) })
	for _, p := range pods {
		h := l.topo.Host(hostName(p))
		if h == nil {
			continue
		}
		labels := p.Labels
		if labels == nil {
			labels = map[string]string{}
		}
		s.Pods = append(s.Pods, PodStatus{Pod: podRef(p), NetNS: h.NS.Name, Addr: h.Addr, Node: h.Node, Labels: labels, Ports: tcpPorts(p)})
	}
	return s
}

// StopGrace is how long an enforcer may take to remove its rules after
// SIGTERM before it is killed.
const StopGrace = 30 * time.Second

// Down removes the lab in cfg.StateDir: it stops the enforcers (which
// remove their rules), deletes every namespace with the lab's prefix (and
// with them the servers), and removes the state directory. It works from
// whatever a crash left behind and does nothing if there is no lab.
func Down(ctx context.Context, cfg Config) error {
	var errs []error
	// Enforcers stop in parallel: each removes its own rules.
	pids, _ := filepath.Glob(cfg.path("pids", "*.pid"))
	stopErrs := make([]error, len(pids))
	var wg sync.WaitGroup
	for i, f := range pids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stopErrs[i] = stopPID(ctx, f, cfg.StateDir, StopGrace)
		}()
	}
	wg.Wait()
	errs = append(errs, stopErrs...)
	if data, err := os.ReadFile(cfg.path("prefix")); err == nil {
		if prefix := strings.TrimSpace(string(data)); prefix != "" {
			if err := topology.DestroyPrefix(ctx, prefix); err != nil {
				errs = append(errs, err)
			}
			if left, _ := netns.List(prefix + "-"); len(left) > 0 {
				errs = append(errs, fmt.Errorf("namespaces left: %v", left))
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("lab down: %w", err))
	}
	// Only what a lab puts there is removed, so a mistyped --state never
	// deletes anything else.
	for _, name := range []string{"store", "keys", "flows", "logs", "pids", "state.json", ".state.json.tmp", "prefix", "lock"} {
		if err := os.RemoveAll(cfg.path(name)); err != nil {
			errs = append(errs, fmt.Errorf("lab down: %w", err))
		}
	}
	if err := os.Remove(cfg.StateDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("lab down: state directory not empty: %w", err))
	}
	return errors.Join(errs...)
}

// Run builds a lab in a fresh temporary state directory, probes it and
// tears it down, returning the pods and the probe results.
func Run(ctx context.Context, cfg Config, opts Options, files ...string) (pods []string, results []Result, err error) {
	dir, err := os.MkdirTemp("", "bireme-lab-")
	if err != nil {
		return nil, nil, fmt.Errorf("lab run: %w", err)
	}
	cfg.StateDir = dir
	l, err := Up(ctx, cfg, opts, files...)
	if err != nil {
		os.Remove(dir)
		return nil, nil, err
	}
	defer func() {
		l.Close()
		if derr := Down(context.WithoutCancel(ctx), cfg); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	results, err = l.Probe(ctx)
	return l.Pods(), results, err
}
