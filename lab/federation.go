package lab

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"

	corev1 "k8s.io/api/core/v1"

	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/k8s/filestore"
	"github.com/bireme/bireme/lab/topology"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

// A lab may hold several clusters (federation, docs/federation.md): the
// lab's own cluster (Options.Cluster, from the files given to Up) and each
// Member, built from its own files with its own CA, trust domain, file
// store, nodes and pods. A member's node NAME becomes the lab node
// CLUSTER-NAME and its pods are named CLUSTER/NAMESPACE/POD in probes.
// Clusters trust nothing of each other until Trust copies one's trust
// bundle into another's bundle directory, which its enforcers watch
// (--trust-bundles); Distrust removes it and the enforcers, started with
// --end-revoked, also end the connections already established.
//
//	clusters/CLUSTER/store/   a member's file store
//	clusters/CLUSTER/ca/      a member's CA (ca.crt, ca.key)
//	bundles/CLUSTER/          the foreign bundles CLUSTER trusts, TRUST-DOMAIN.json

// Member is a further cluster of a lab.
type Member struct {
	// Cluster is its trust domain, distinct from every other cluster's.
	Cluster string `json:"cluster"`
	// Files are its Namespaces, Pods and NetworkPolicies (read by Up).
	Files []string `json:"files,omitempty"`
}

// memberNode is the lab node of a member's node.
func memberNode(cluster, node string) string { return cluster + "-" + node }

// memberHost is the topology host of a member's pod.
func memberHost(cluster string, p *corev1.Pod) string { return cluster + "." + hostName(p) }

// isMember reports whether cluster is one of the lab's members.
func (l *Lab) isMember(cluster string) bool {
	for _, m := range l.st.Options.Members {
		if m.Cluster == cluster {
			return true
		}
	}
	return false
}

// Clusters lists the lab's trust domains: its own first, then its members.
func (l *Lab) Clusters() []string {
	out := []string{l.st.Options.Cluster}
	for _, m := range l.st.Options.Members {
		out = append(out, m.Cluster)
	}
	return out
}

// clusterOf returns the cluster a lab node belongs to.
func (l *Lab) clusterOf(node string) string {
	if c, ok := l.st.NodeClusters[node]; ok {
		return c
	}
	return l.st.Options.Cluster
}

// storeDir is the file store of cluster's enforcers.
func (l *Lab) storeDir(cluster string) string {
	if l.isMember(cluster) {
		return l.cfg.path("clusters", cluster, "store")
	}
	return l.cfg.path("store")
}

// clusterCADir holds cluster's CA.
func (l *Lab) clusterCADir(cluster string) string {
	if l.isMember(cluster) {
		return l.cfg.path("clusters", cluster, "ca")
	}
	return l.cfg.path("keys", "ca")
}

// bundleDir holds the foreign bundles cluster trusts.
func (l *Lab) bundleDir(cluster string) string { return l.cfg.path("bundles", cluster) }

// checkMembers refuses members the lab cannot build.
func checkMembers(opts Options) error {
	seen := map[string]bool{opts.Cluster: true}
	for _, m := range opts.Members {
		if m.Cluster == "" || len(m.Files) == 0 {
			return fmt.Errorf("lab member %q: a cluster name and at least one file are needed", m.Cluster)
		}
		if seen[m.Cluster] {
			return fmt.Errorf("lab member %q: cluster names must differ", m.Cluster)
		}
		seen[m.Cluster] = true
	}
	return nil
}

// loadMember reads, checks and places a member's objects: its pods on
// the member's lab nodes, annotated with their network namespaces.
func (l *Lab) loadMember(m Member) (policy.Objects, error) {
	objs, err := filestore.LoadFiles(m.Files...)
	if err != nil {
		return policy.Objects{}, fmt.Errorf("lab member %s: %w", m.Cluster, err)
	}
	if _, err := k8s.Compile(objs); err != nil {
		return policy.Objects{}, fmt.Errorf("lab member %s: %w", m.Cluster, err)
	}
	out := objs
	out.Pods = make([]*corev1.Pod, len(objs.Pods))
	for i, p := range objs.Pods {
		if len(memberHost(m.Cluster, p)) > 63 {
			return policy.Objects{}, fmt.Errorf("lab member %s: pod %s: cluster, namespace and name together must be at most 61 characters", m.Cluster, podRef(p))
		}
		c := p.DeepCopy()
		c.Spec.NodeName = memberNode(m.Cluster, nodeOf(p))
		if c.Annotations == nil {
			c.Annotations = map[string]string{}
		}
		delete(c.Annotations, NetNSAnnotation)
		if c.Annotations[UnprotectedAnnotation] != "true" {
			c.Annotations[NetNSAnnotation] = topology.HostNSName(l.st.Options.Prefix, memberHost(m.Cluster, p))
		}
		out.Pods[i] = c
	}
	return out, nil
}

// memberSpecs adds the members' nodes and hosts to spec and records which
// cluster each node is of.
func (l *Lab) memberSpecs(spec *topology.Spec) {
	for _, m := range l.st.Options.Members {
		objs := l.members[m.Cluster]
		for _, node := range nodesOf(objs) { // already the member's lab nodes
			ns := topology.NodeSpec{Name: node}
			for _, p := range objs.Pods {
				if nodeOf(p) == node {
					ns.Hosts = append(ns.Hosts, memberHost(m.Cluster, p))
				}
			}
			spec.Nodes = append(spec.Nodes, ns)
			if l.st.NodeClusters == nil {
				l.st.NodeClusters = map[string]string{}
			}
			l.st.NodeClusters[node] = m.Cluster
		}
	}
}

// initMembers writes each member's store and CA, and every cluster's
// (empty) bundle directory: no cluster trusts another yet.
func (l *Lab) initMembers() error {
	for _, c := range l.Clusters() {
		if err := os.MkdirAll(l.bundleDir(c), 0o755); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
	}
	for _, m := range l.st.Options.Members {
		if err := os.MkdirAll(l.storeDir(m.Cluster), 0o755); err != nil {
			return fmt.Errorf("lab member %s: %w", m.Cluster, err)
		}
		if err := syncStore(l.storeDir(m.Cluster), l.members[m.Cluster]); err != nil {
			return err
		}
		if l.st.Options.NoEnforce {
			continue
		}
		ca, err := tokens.NewCA(m.Cluster, caValidity)
		if err != nil {
			return fmt.Errorf("lab member %s keys: %w", m.Cluster, err)
		}
		dir := l.clusterCADir(m.Cluster)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("lab member %s keys: %w", m.Cluster, err)
		}
		if err := ca.Save(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")); err != nil {
			return fmt.Errorf("lab member %s keys: %w", m.Cluster, err)
		}
	}
	return nil
}

// openMembers loads the members' stores (Open).
func (l *Lab) openMembers() error {
	l.members = map[string]policy.Objects{}
	for _, m := range l.st.Options.Members {
		objs, err := filestore.LoadDir(l.storeDir(m.Cluster))
		if err != nil {
			return fmt.Errorf("open lab member %s: %w", m.Cluster, err)
		}
		l.members[m.Cluster] = objs
	}
	return nil
}

// memberTargets lists the members' pods as probe targets, named
// CLUSTER/NAMESPACE/POD.
func (l *Lab) memberTargets() []Target {
	var out []Target
	for _, m := range l.st.Options.Members {
		for _, p := range l.members[m.Cluster].Pods {
			if h := l.topo.Host(memberHost(m.Cluster, p)); h != nil {
				out = append(out, Target{Ref: m.Cluster + "/" + podRef(p), NS: h.NS, Addr: h.Addr, Ports: tcpPorts(p)})
			}
		}
	}
	return out
}

// checkClusters refuses names that are not two distinct clusters of the lab.
func (l *Lab) checkClusters(truster, trusted string) error {
	if l.st.Options.NoEnforce {
		return errors.New("the lab runs without enforcers")
	}
	for _, c := range []string{truster, trusted} {
		if !slices.Contains(l.Clusters(), c) {
			return fmt.Errorf("no cluster %q in the lab (clusters: %v)", c, l.Clusters())
		}
	}
	if truster == trusted {
		return fmt.Errorf("cluster %q trusts its own CA already", truster)
	}
	return nil
}

// Trust makes truster's enforcers trust trusted's workloads: trusted's
// bundle, exported as `bireme keys bundle export` does, is written into
// truster's bundle directory, which its enforcers read at their next poll.
// It returns the bundle's CA fingerprints, what operators would compare.
func (l *Lab) Trust(ctx context.Context, truster, trusted string) ([]string, error) {
	if err := l.checkClusters(truster, trusted); err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	dir := l.clusterCADir(trusted)
	ca, err := tokens.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	b, err := tokens.NewBundle(trusted, []*x509.Certificate{ca.Cert}, 1, 0)
	if err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	file := filepath.Join(l.bundleDir(truster), trusted+".json")
	if err := b.SaveSPIFFE(file); err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	l.cfg.logf("cluster %s trusts cluster %s: bundle %s (CA %s)", truster, trusted, file, tokens.Fingerprint(ca.Cert))
	l.settle(ctx)
	return []string{tokens.Fingerprint(ca.Cert)}, nil
}

// Distrust removes trusted's bundle from truster's bundle directory:
// truster's enforcers refuse trusted's new connections at their next poll
// and end the established ones (they run with --end-revoked).
func (l *Lab) Distrust(ctx context.Context, truster, trusted string) error {
	if err := l.checkClusters(truster, trusted); err != nil {
		return fmt.Errorf("distrust: %w", err)
	}
	file := filepath.Join(l.bundleDir(truster), trusted+".json")
	if err := os.Remove(file); err != nil {
		return fmt.Errorf("distrust: %w", err)
	}
	l.cfg.logf("cluster %s no longer trusts cluster %s: removed %s", truster, trusted, file)
	l.settle(ctx)
	return nil
}

// Trusts lists, per cluster, the clusters whose bundles it holds.
func (l *Lab) Trusts() map[string][]string {
	out := map[string][]string{}
	for _, c := range l.Clusters() {
		entries, _ := os.ReadDir(l.bundleDir(c))
		for _, e := range entries {
			if name := e.Name(); filepath.Ext(name) == ".json" {
				out[c] = append(out[c], name[:len(name)-len(".json")])
			}
		}
		sort.Strings(out[c])
	}
	return out
}

// natPeerArgs declares, in a lab with NAT between nodes, that every
// cluster of the lab (the enforcer's own and the federated ones) is
// reached through NAT from the nodes' router-facing addresses: v2
// handshakes bind the client's address, which a server on another node
// sees translated to its node's. Without the declaration every connection
// between nodes fails closed (endpoint-mismatch).
func (l *Lab) natPeerArgs() []string {
	if !l.st.Options.NAT || l.st.Options.NoNATDeclaration {
		return nil
	}
	var args []string
	for _, c := range l.Clusters() {
		args = append(args, "--nat-peers", c+"="+topology.NATSources().String())
	}
	return args
}

// startMemberServers starts the servers of a member's pods, then waits
// for all of them.
func (l *Lab) startMemberServers(ctx context.Context, cluster string) error {
	if l.st.Options.NoServers {
		return nil
	}
	var waits []func() error
	for _, p := range l.members[cluster].Pods {
		wait, err := l.startServerAs(ctx, p, cluster+"/"+podRef(p), memberHost(cluster, p))
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
