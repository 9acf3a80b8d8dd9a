package lab

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/k8s/filestore"
	"github.com/bireme/bireme/policy"
)

// Apply adds or replaces the objects in files on the running lab: new pods
// get a namespace, a server and (on a new node) an enforcer; pods whose node
// or ports changed are rebuilt; label changes of pods and namespaces,
// UnprotectedAnnotation and policy changes only update the store, which the
// enforcers reload. It returns once the enforcers protect exactly the pods
// they should and have had time to reload. Invalid input changes nothing.
func (l *Lab) Apply(ctx context.Context, files ...string) error {
	upd, err := filestore.LoadFiles(files...)
	if err != nil {
		return err
	}
	if err := checkPods(upd); err != nil {
		return err
	}
	next := merge(l.objs, upd)
	if _, err := k8s.Compile(next); err != nil {
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
	l.objs = l.annotate(next)
	if err := syncStore(l.cfg.path("store"), l.objs); err != nil {
		return err
	}
	if err := l.waitProtected(ctx); err != nil {
		return err
	}
	l.settle(ctx)
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
	del, err := filestore.LoadFiles(files...)
	if err != nil {
		return err
	}
	return l.shrinkTo(ctx, without(l.objs, del))
}

// shrinkTo makes next, the lab's objects less some, current and deletes the
// namespaces of the pods it no longer has. Those pods leave the store first,
// and their enforcer has let go of each namespace before it is deleted.
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
	if err := l.waitProtected(ctx); err != nil {
		return err
	}
	l.settle(ctx)
	for _, h := range gone {
		if err := l.topo.RemoveHost(ctx, h); err != nil {
			return err
		}
	}
	return l.saveState()
}

// RestartPodSandbox deletes pod ref's network namespace and makes a new one
// under the same name, node and address, as a container runtime does when
// it restarts a pod's sandbox; the pod's lab server starts again. The store
// does not change: the pod's enforcer finds the new namespace at its next
// poll and protects it. The number of protected pods stays the same, so
// this cannot wait for that and returns at once.
func (l *Lab) RestartPodSandbox(ctx context.Context, ref string) error {
	i := slices.IndexFunc(l.objs.Pods, func(p *corev1.Pod) bool { return podRef(p) == ref })
	if i < 0 {
		return fmt.Errorf("restart sandbox: no pod %s in the lab", ref)
	}
	pod := l.objs.Pods[i]
	if err := l.topo.RemoveHost(ctx, hostName(pod)); err != nil {
		return fmt.Errorf("restart sandbox of %s: %w", ref, err)
	}
	if _, err := l.topo.AddHost(ctx, nodeOf(pod), hostName(pod)); err != nil {
		return fmt.Errorf("restart sandbox of %s: %w", ref, err)
	}
	if err := l.saveState(); err != nil {
		return err
	}
	return l.startServers(ctx, []*corev1.Pod{pod})
}
