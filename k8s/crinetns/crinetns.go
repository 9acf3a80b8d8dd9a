// Package crinetns asks the node's container runtime, through the CRI
// RuntimeService (k8s.io/cri-api), for the network namespace of a pod's
// sandbox: the agent's --cri-socket lookup.
//
// A pod's sandboxes are found by the labels kubelet puts on every sandbox
// it runs (io.kubernetes.pod.namespace, .name and .uid); of the ready ones
// the newest is taken, and its namespace path is read from the verbose
// PodSandboxStatus: the runtime spec's network namespace (containerd and
// CRI-O both put the OCI spec there), else /proc/PID/ns/net of the
// sandbox's process. The runtime is trusted for the path only: the caller
// still checks that the namespace holds the pod's IP (package apisource
// does, on every reconcile), since a path that names the wrong namespace
// would give the pod's identity to another.
package crinetns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The labels kubelet sets on every pod sandbox it asks the runtime for.
const (
	LabelPodNamespace = "io.kubernetes.pod.namespace"
	LabelPodName      = "io.kubernetes.pod.name"
	LabelPodUID       = "io.kubernetes.pod.uid"
)

// ErrNoSandbox means the runtime has no ready sandbox for the pod.
var ErrNoSandbox = errors.New("no ready pod sandbox")

// Config configures a Client.
type Config struct {
	// Endpoint is the runtime's socket: unix:///run/containerd/containerd.sock
	// or a plain path (required).
	Endpoint string
	// ProcDir is where the runtime's processes are seen (default /proc;
	// the agent needs the host's PID namespace for the /proc fallback).
	ProcDir string
	// Timeout bounds each call to the runtime (default 2s): a hung runtime
	// must not hold up the reconcile, whose fallback is the address scan.
	Timeout time.Duration
	// Forget is how long a sandbox's path is remembered after it was last
	// asked for (default 10 minutes).
	Forget time.Duration
}

// Client looks up pods' network namespaces through one runtime socket.
// It is safe for concurrent use.
type Client struct {
	cfg  Config
	conn *grpc.ClientConn
	rt   runtimeapi.RuntimeServiceClient

	mu    sync.Mutex
	paths map[string]cached // sandbox ID -> its namespace path
}

// cached is a sandbox's namespace path, with the pod it belongs to and
// when it was last used (to forget sandboxes of pods gone).
type cached struct {
	path, uid string
	used      time.Time
}

// Dial connects to the runtime (lazily: a runtime that is down now is
// tried again on every lookup) and returns the Client.
func Dial(cfg Config) (*Client, error) {
	if cfg.Endpoint == "" {
		return nil, errors.New("CRI: an endpoint is required")
	}
	if cfg.ProcDir == "" {
		cfg.ProcDir = "/proc"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Forget <= 0 {
		cfg.Forget = 10 * time.Minute
	}
	target := cfg.Endpoint
	switch {
	case strings.HasPrefix(target, "unix://"):
	case strings.HasPrefix(target, "/"):
		target = "unix://" + target
	default:
		return nil, fmt.Errorf("CRI endpoint %q: only unix sockets (unix:///path or /path) are supported", cfg.Endpoint)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("CRI endpoint %q: %w", cfg.Endpoint, err)
	}
	return &Client{cfg: cfg, conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn), paths: map[string]cached{}}, nil
}

// Close closes the connection to the runtime.
func (c *Client) Close() error { return c.conn.Close() }

// Version asks the runtime its name and version (to log at start, and to
// fail early on a socket that is not a CRI runtime).
func (c *Client) Version(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	v, err := c.rt.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return "", fmt.Errorf("CRI %s: version: %w", c.cfg.Endpoint, err)
	}
	return v.RuntimeName + " " + v.RuntimeVersion + " (CRI " + v.RuntimeApiVersion + ")", nil
}

// PodNetNS returns the path of the network namespace of the pod's ready
// sandbox. The caller must check that the namespace holds the pod's IP.
func (c *Client) PodNetNS(ctx context.Context, namespace, name, uid string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	list, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		LabelSelector: map[string]string{
			LabelPodNamespace: namespace, LabelPodName: name, LabelPodUID: uid,
		},
	}})
	if err != nil {
		return "", fmt.Errorf("CRI %s: list sandboxes of pod %s/%s: %w", c.cfg.Endpoint, namespace, name, err)
	}
	sb := newestReady(list.Items, namespace, name, uid)
	now := time.Now()
	c.forget(uid, sb, now)
	if sb == nil {
		return "", fmt.Errorf("CRI %s: pod %s/%s (uid %s): %w", c.cfg.Endpoint, namespace, name, uid, ErrNoSandbox)
	}
	if path, ok := c.remembered(sb.Id, now); ok {
		return path, nil
	}
	st, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.Id, Verbose: true})
	if err != nil {
		return "", fmt.Errorf("CRI %s: status of sandbox %s of pod %s/%s: %w", c.cfg.Endpoint, sb.Id, namespace, name, err)
	}
	if st.Status != nil && st.Status.GetLinux().GetNamespaces().GetOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE {
		return "", fmt.Errorf("CRI %s: sandbox %s of pod %s/%s is on the node's network", c.cfg.Endpoint, sb.Id, namespace, name)
	}
	path, err := NetNSFromInfo(st.Info, c.cfg.ProcDir)
	if err != nil {
		return "", fmt.Errorf("CRI %s: sandbox %s of pod %s/%s: %w", c.cfg.Endpoint, sb.Id, namespace, name, err)
	}
	c.mu.Lock()
	c.paths[sb.Id] = cached{path: path, uid: uid, used: now}
	c.mu.Unlock()
	return path, nil
}

// newestReady picks, of the sandboxes listed, the newest ready one whose
// labels name the pod (checked again: a runtime that ignored the filter
// must not hand over another pod's sandbox).
func newestReady(items []*runtimeapi.PodSandbox, namespace, name, uid string) *runtimeapi.PodSandbox {
	var best *runtimeapi.PodSandbox
	for _, sb := range items {
		if sb.State != runtimeapi.PodSandboxState_SANDBOX_READY {
			continue
		}
		l := sb.Labels
		if l[LabelPodNamespace] != namespace || l[LabelPodName] != name || l[LabelPodUID] != uid {
			continue
		}
		if best == nil || sb.CreatedAt > best.CreatedAt {
			best = sb
		}
	}
	return best
}

// remembered returns a sandbox's cached path while it still exists.
func (c *Client) remembered(id string, now time.Time) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.paths[id]
	if !ok {
		return "", false
	}
	if _, err := os.Stat(e.path); err != nil {
		delete(c.paths, id) // the process or the bind mount went: ask the runtime again
		return "", false
	}
	e.used = now
	c.paths[id] = e
	return e.path, true
}

// forget drops the pod's other sandboxes (replaced or stopped) and any
// sandbox not asked for in a while (its pod is gone).
func (c *Client) forget(uid string, keep *runtimeapi.PodSandbox, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, e := range c.paths {
		if (e.uid == uid && (keep == nil || id != keep.Id)) || now.Sub(e.used) > c.cfg.Forget {
			delete(c.paths, id)
		}
	}
}

// sandboxInfo is what is read of the verbose status's "info" JSON: the
// sandbox process and the OCI runtime spec.
type sandboxInfo struct {
	Pid                int  `json:"pid"`
	NetNamespaceClosed bool `json:"netNamespaceClosed"`
	RuntimeSpec        *struct {
		Linux *struct {
			Namespaces []struct {
				Type string `json:"type"`
				Path string `json:"path"`
			} `json:"namespaces"`
		} `json:"linux"`
	} `json:"runtimeSpec"`
}

// NetNSFromInfo reads the network namespace path from a verbose
// PodSandboxStatus's info: the runtime spec's network namespace path when
// it exists here (a /var/run path is also tried under /run, where the
// agent's DaemonSet mounts the host's /run/netns), else procDir/PID/ns/net
// of the sandbox process.
func NetNSFromInfo(info map[string]string, procDir string) (string, error) {
	raw, ok := info["info"]
	if !ok {
		return "", errors.New(`verbose status has no "info": the runtime does not tell the sandbox's namespace`)
	}
	var si sandboxInfo
	if err := json.Unmarshal([]byte(raw), &si); err != nil {
		return "", fmt.Errorf(`verbose status "info": %w`, err)
	}
	if si.NetNamespaceClosed {
		return "", errors.New("the sandbox's network namespace is closed")
	}
	var tried []string
	if si.RuntimeSpec != nil && si.RuntimeSpec.Linux != nil {
		for _, ns := range si.RuntimeSpec.Linux.Namespaces {
			if ns.Type != "network" || ns.Path == "" {
				continue
			}
			cands := []string{ns.Path}
			if rest, ok := strings.CutPrefix(ns.Path, "/var/run/"); ok {
				cands = append(cands, "/run/"+rest)
			}
			for _, p := range cands {
				if !filepath.IsAbs(p) {
					continue
				}
				if _, err := os.Stat(p); err == nil {
					return filepath.Clean(p), nil
				}
				tried = append(tried, p)
			}
		}
	}
	if si.Pid > 0 {
		p := filepath.Join(procDir, strconv.Itoa(si.Pid), "ns/net")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	if len(tried) == 0 {
		return "", errors.New(`verbose status "info" names no network namespace path and no sandbox pid`)
	}
	return "", fmt.Errorf("no network namespace path of the sandbox exists here (tried %s)", strings.Join(tried, ", "))
}
