package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/k8s/filestore"
	"github.com/bireme/bireme/lab/topology"
	"github.com/bireme/bireme/policy"
)

// Up builds a lab from the objects in files and leaves it running. If any
// step fails, everything made so far is removed.
func Up(ctx context.Context, cfg Config, opts Options, files ...string) (_ *Lab, err error) {
	if len(files) == 0 {
		return nil, errors.New("lab up: no files (-f FILE)")
	}
	objs, err := filestore.LoadFiles(files...)
	if err != nil {
		return nil, err
	}
	if _, err := k8s.Compile(objs); err != nil {
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
	if err := checkMembers(opts); err != nil {
		return nil, err
	}
	if opts.FlowsMaxBytes < 0 {
		return nil, fmt.Errorf("lab up: --flows-max-bytes %d: want 0 (never rotate) or more", opts.FlowsMaxBytes)
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
	l := &Lab{cfg: cfg, st: state{Options: opts}, enforcers: map[string]*child{}, members: map[string]policy.Objects{}}
	for _, m := range opts.Members {
		if l.members[m.Cluster], err = l.loadMember(m); err != nil {
			return nil, err
		}
	}
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
	l.memberSpecs(&spec)
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
	for _, m := range opts.Members {
		if err := l.startMemberServers(ctx, m.Cluster); err != nil {
			return nil, err
		}
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
	if err := l.initMembers(); err != nil {
		return nil, err
	}
	if !opts.NoEnforce {
		for _, n := range l.topo.Nodes() {
			if err := l.startEnforcer(n.Name); err != nil {
				return nil, err
			}
		}
		if err := l.waitProtected(ctx); err != nil {
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

// annotate returns objs with every pod placed on its node and, unless it
// is to stay unprotected, annotated with its network namespace, as the
// enforcers expect.
func (l *Lab) annotate(objs policy.Objects) policy.Objects {
	out := objs
	out.Pods = make([]*corev1.Pod, len(objs.Pods))
	for i, p := range objs.Pods {
		c := p.DeepCopy()
		c.Spec.NodeName = nodeOf(p)
		if c.Annotations == nil {
			c.Annotations = map[string]string{}
		}
		delete(c.Annotations, NetNSAnnotation)
		if c.Annotations[UnprotectedAnnotation] != "true" {
			c.Annotations[NetNSAnnotation] = topology.HostNSName(l.st.Options.Prefix, hostName(p))
		}
		out.Pods[i] = c
	}
	return out
}
