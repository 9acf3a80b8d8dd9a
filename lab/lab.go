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
//	state.json      options, the topology's layout, each enforcer's metrics address
//	store/          the enforcers' file store: the user's objects, pods annotated with bireme.io/netns
//	keys/           ca/ (cluster CA), untrusted-ca/, nodes/NODE/ (node.crt, node.key), as `bireme keys` lays them out
//	flows/NODE.jsonl  each enforcer's flow records
//	logs/           output of every enforcer and server
//	pids/           enforce-NODE.pid, while the enforcer runs
//	lock            held by the command working on the lab
//
// Up builds a lab, Open reopens it from another process, Apply and Delete
// change it, Probe measures it, Down removes it (also after a crash).
// StopEnforcer, KillEnforcer, StartEnforcer, RenewNodeCredentials and
// RestartPodSandbox play an operator's and a crash's part; Status and
// Metric read what runs.
//
// Readiness is one signal, each enforcer's bireme_workloads_protected
// gauge: the lab waits until it equals the number of pods the store gives
// the enforcer's node (see waitProtected).
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/bireme/bireme/k8s/filestore"
	"github.com/bireme/bireme/lab/topology"
	"github.com/bireme/bireme/policy"
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
	// NoServers starts no `bireme lab serve` in the pods: the caller runs
	// its own servers in the pods' namespaces (Lab.Pod gives them), and
	// Probe, which expects the lab's answers, is of no use.
	NoServers bool
	// Poll is the enforcers' store poll interval (200ms if zero).
	Poll time.Duration
	// IPBlockIdentityOnly runs the enforcers in the strict ipBlock mode
	// (--ipblock-identity-only): ipBlock rules match only peers without
	// identity.
	IPBlockIdentityOnly bool `json:",omitempty"`
	// FlowsMaxBytes rotates each enforcer's flow file before it grows past
	// this many bytes (--flows-max-bytes; FILE.1 is the newest old file,
	// the chain and its keyed head continue across); 0: never.
	FlowsMaxBytes int64 `json:",omitempty"`
	// Members are further clusters, each with its own CA, trust domain,
	// store, nodes and pods (federation.go).
	Members []Member `json:",omitempty"`
}

// state is what later commands need to know about a lab: state.json.
type state struct {
	Options  Options        `json:"options"`
	Topology topology.State `json:"topology"`
	// MetricsAddrs holds each enforcer's metrics address (host:port).
	MetricsAddrs map[string]string `json:"metricsAddrs,omitempty"`
	// NodeClusters gives the cluster of each member's node (absent: the
	// lab's own cluster).
	NodeClusters map[string]string `json:"nodeClusters,omitempty"`
}

// Lab is a running lab, opened by one command. It is not safe for
// concurrent use; the lock file keeps two commands off one lab.
type Lab struct {
	cfg  Config
	st   state
	topo *topology.Topology
	objs policy.Objects // what the store holds
	// members holds each member cluster's objects, as its store does.
	members map[string]policy.Objects
	lock    *os.File
	// enforcers this process started, by node, to learn their exit status.
	enforcers map[string]*child
}

func (c Config) path(parts ...string) string {
	return filepath.Join(append([]string{c.StateDir}, parts...)...)
}

func (c Config) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format+"\n", args...)
	}
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
	l := &Lab{cfg: cfg, enforcers: map[string]*child{}}
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
	if l.objs, err = filestore.LoadDir(cfg.path("store")); err != nil {
		l.unlock()
		return nil, fmt.Errorf("open lab: %w", err)
	}
	if err := l.openMembers(); err != nil {
		l.unlock()
		return nil, err
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
