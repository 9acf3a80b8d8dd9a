// Package apisource is the agent's Kubernetes source of desired state: it
// follows the API server through client-go informers and tells the agent
// which pods of its node to protect, with which identities, under which
// compiled NetworkPolicies.
//
// It watches the pods of one node (a field selector on spec.nodeName, so a
// node's agent holds only its own pods in full), every Namespace and
// NetworkPolicy, and every pod trimmed to where it runs: the placement
// against which peers' tokens are checked (a node speaks only for its own
// pods). A pod is protected once it is Running, has an IP, and one
// network namespace on the node holds that IP (package podnetns finds it;
// nothing the pod wrote is trusted); it is released when it is deleted,
// stops running or its namespace can no longer be found. hostNetwork pods
// share the node's namespace and are never protected. Pod identity is
// [k8s.IdentityOf]: namespace, name, labels, namespace labels, service
// account and trust domain.
//
// Changes are pushed, not polled: any change to a pod of the node, a
// namespace or a policy recomputes the state at once, so a label or policy
// change reaches the agent in milliseconds. The pods' namespaces are also
// checked again every Verify interval, since a namespace can vanish or
// move without the API server knowing.
//
// It implements [desired.Source] without importing the agent.
package apisource

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	certlisters "k8s.io/client-go/listers/certificates/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	cnpinformers "sigs.k8s.io/network-policy-api/pkg/client/informers/externalversions"
	cnplisters "sigs.k8s.io/network-policy-api/pkg/client/listers/apis/v1beta1"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/k8s/podnetns"
	"github.com/bireme/bireme/policy"
)

// NetNSScanner finds the network namespaces holding pod addresses on this
// node; [podnetns.Scanner] is the real one.
type NetNSScanner interface {
	Scan(ctx context.Context) (*podnetns.Snapshot, error)
}

// Config configures a Source.
type Config struct {
	// Client talks to the API server (required).
	Client kubernetes.Interface
	// Node is this node's name, matched against pods' spec.nodeName
	// (required).
	Node string
	// Cluster is the trust domain of the workloads' identities (required).
	Cluster string
	// NetNS finds pods' network namespaces (required).
	NetNS NetNSScanner
	// Verify is how often the pods' network namespaces are looked up again
	// when nothing changed in the API (default 1s).
	Verify time.Duration
	// SyncTimeout bounds the wait for the first complete view of the API
	// (default 1 minute); Run fails after it, since it has no state to give.
	SyncTimeout time.Duration
	// Log receives the pods' protection status changes and rejected
	// policy sets (nil: discarded).
	Log *slog.Logger
	// Policy are the policy compile options (the ipBlock mode).
	Policy policy.Options
	// ClusterPolicies, if set, watches ClusterNetworkPolicies
	// (policy.networking.k8s.io/v1beta1, the admin and baseline tiers).
	// When the API server does not serve them (CRD not installed) the
	// tiers are empty, which is what such a cluster means, and the API is
	// looked for again every CRDRecheck until it is served.
	ClusterPolicies cnpclient.Interface
	// NodeCertificates, if set, watches the certificate signing requests
	// of signer bireme.io/node (the node certificates `bireme signer`
	// issued) and delivers, per node, the certificates published there
	// with the addresses of the pods the API places on that node
	// (desired.State.NodeCerts): the tokens engine then makes even the
	// first SYN to such a pod a two-message one. It needs list and watch
	// on certificatesigningrequests.
	NodeCertificates bool
	// CRDRecheck is how often an agent started before the
	// ClusterNetworkPolicy CRD was installed asks the API server for it
	// again (default 5s): an admin denial must not wait for a restart.
	CRDRecheck time.Duration
}

// nodeSignerName is the signer of Bireme node certificates (nodecert.SignerName).
const nodeSignerName = "bireme.io/node"

// Source delivers one node's desired state from the API server.
type Source struct {
	cfg Config
	log *slog.Logger
}

var _ desired.Source = (*Source)(nil)

// New checks cfg and returns the Source.
func New(cfg Config) (*Source, error) {
	if cfg.Client == nil || cfg.Node == "" || cfg.Cluster == "" || cfg.NetNS == nil {
		return nil, errors.New("API source: Client, Node, Cluster and NetNS are required")
	}
	if cfg.Verify < 0 || cfg.SyncTimeout < 0 || cfg.CRDRecheck < 0 {
		return nil, fmt.Errorf("API source: intervals must not be negative (verify %v, sync timeout %v, CRD recheck %v)", cfg.Verify, cfg.SyncTimeout, cfg.CRDRecheck)
	}
	if cfg.CRDRecheck == 0 {
		cfg.CRDRecheck = 5 * time.Second
	}
	if cfg.Verify == 0 {
		cfg.Verify = time.Second
	}
	if cfg.SyncTimeout == 0 {
		cfg.SyncTimeout = time.Minute
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{cfg: cfg, log: log}, nil
}

// listers are the informers' caches the state is computed from.
type listers struct {
	pods       corelisters.PodLister // this node's pods only
	allPods    corelisters.PodLister // every pod, trimmed to its placement and identity
	namespaces corelisters.NamespaceLister
	policies   networkinglisters.NetworkPolicyLister
	cluster    cnplisters.ClusterNetworkPolicyLister // nil: no ClusterNetworkPolicy API
	services   corelisters.ServiceLister
	csrs       certlisters.CertificateSigningRequestLister // nil: node certificates not watched
}

// Run implements [desired.Source]: it starts the informers, delivers the
// first state once their caches are complete, then a new state after every
// change, until ctx ends.
func (s *Source) Run(ctx context.Context, update func(desired.State)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	strip := informers.WithTransform(stripBookkeeping)
	cluster := informers.NewSharedInformerFactoryWithOptions(s.cfg.Client, 0, strip)
	nodePods := informers.NewSharedInformerFactoryWithOptions(s.cfg.Client, 0, strip,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", s.cfg.Node).String()
		}))
	// Where every pod runs (node authorization of peer tokens) needs only
	// a few fields of each pod of the cluster: the rest is dropped as
	// objects arrive, so the cache stays small on large clusters.
	allPods := informers.NewSharedInformerFactoryWithOptions(s.cfg.Client, 0, informers.WithTransform(trimPod))
	podInformer := nodePods.Core().V1().Pods()
	allPodInformer := allPods.Core().V1().Pods()
	nsInformer := cluster.Core().V1().Namespaces()
	npInformer := cluster.Networking().V1().NetworkPolicies()
	svcInformer := cluster.Core().V1().Services()

	// Each informer marks what its change affects and wakes the loop; a
	// burst of changes is computed once.
	var ch changes
	ch.wake = make(chan struct{}, 1)
	var handlersSynced []cache.InformerSynced
	for _, reg := range []struct {
		inf  cache.SharedIndexInformer
		mark func()
	}{
		{podInformer.Informer(), ch.podsChanged},
		{allPodInformer.Informer(), ch.placementChanged},
		{nsInformer.Informer(), ch.namespacesChanged}, // namespace labels: identities and policy
		{npInformer.Informer(), ch.policyChanged},
		{svcInformer.Informer(), ch.servicesChanged},
	} {
		h, err := reg.inf.AddEventHandler(notifyOn(reg.mark))
		if err != nil {
			return fmt.Errorf("API source: watch: %w", err)
		}
		handlersSynced = append(handlersSynced, h.HasSynced)
	}
	l := listers{pods: podInformer.Lister(), allPods: allPodInformer.Lister(), namespaces: nsInformer.Lister(),
		policies: npInformer.Lister(), services: svcInformer.Lister()}
	served, err := s.clusterPoliciesServed(true)
	if err != nil {
		return err
	}
	if served {
		lister, synced, shutdown, err := s.watchClusterPolicies(ctx, &ch)
		if err != nil {
			return err
		}
		defer shutdown() // after cancel (deferred below, run first)
		handlersSynced = append(handlersSynced, synced)
		l.cluster = lister
	}
	// Until the CRD is installed, its API is asked for again now and then.
	var recheckCRD <-chan time.Time
	if s.cfg.ClusterPolicies != nil && !served {
		t := time.NewTicker(s.cfg.CRDRecheck)
		defer t.Stop()
		recheckCRD = t.C
	}

	factories := []informers.SharedInformerFactory{cluster, nodePods, allPods}
	if s.cfg.NodeCertificates {
		// Only the node signer's requests, trimmed to their certificate.
		csrFactory := informers.NewSharedInformerFactoryWithOptions(s.cfg.Client, 0, informers.WithTransform(trimCSR),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("spec.signerName", nodeSignerName).String()
			}))
		inf := csrFactory.Certificates().V1().CertificateSigningRequests()
		h, err := inf.Informer().AddEventHandler(notifyOn(ch.nodeCertsChanged))
		if err != nil {
			return fmt.Errorf("API source: watch: %w", err)
		}
		handlersSynced = append(handlersSynced, h.HasSynced)
		l.csrs = inf.Lister()
		factories = append(factories, csrFactory)
	}
	for _, f := range factories {
		f.Start(ctx.Done())
	}
	defer func() {
		cancel()
		for _, f := range factories {
			f.Shutdown()
		}
	}()

	syncCtx, syncDone := context.WithTimeout(ctx, s.cfg.SyncTimeout)
	// Synced handlers have seen every object of the initial lists (and so
	// have the caches): the first state below covers those events.
	synced := cache.WaitForCacheSync(syncCtx.Done(), handlersSynced...)
	syncDone()
	if !synced {
		if ctx.Err() != nil {
			return nil
		}
		what := "pods, namespaces, network policies and services"
		if s.cfg.NodeCertificates {
			what += " and node certificate signing requests"
		}
		return fmt.Errorf("API source: no complete view of %s after %v (is the API server reachable, and may this agent list and watch them?)", what, s.cfg.SyncTimeout)
	}

	st := &state{cfg: s.cfg, log: s.log, l: l, status: map[string]string{}, published: map[string]map[string]*x509.Certificate{}}
	verify := time.NewTicker(s.cfg.Verify)
	defer verify.Stop()
	ch.take()
	first, _ := st.compute(ctx, changed{policy: true, placement: true, pods: true, services: true, nodeCerts: true})
	update(first)
	for {
		verifyDue := false
		select {
		case <-ctx.Done():
			return nil
		case <-ch.wake:
		case <-verify.C:
			verifyDue = true
		case <-recheckCRD:
			if lister, shutdown := s.lateClusterPolicies(ctx, &ch); lister != nil {
				defer shutdown()
				st.l.cluster = lister
				recheckCRD = nil
				ch.policyChanged()
			}
		}
		what := ch.take()
		what.pods = what.pods || verifyDue
		if next, differs := st.compute(ctx, what); differs {
			update(next)
		}
	}
}

// clusterPoliciesServed says whether to watch ClusterNetworkPolicies:
// asked for, and served by the API server (the CRD is installed). Any
// answer but "not found" is an error: guessing "absent" would drop admin
// denials. warn logs the absence (once, at start).
func (s *Source) clusterPoliciesServed(warn bool) (bool, error) {
	if s.cfg.ClusterPolicies == nil {
		return false, nil
	}
	_, err := s.cfg.ClusterPolicies.Discovery().ServerResourcesForGroupVersion(cnp.GroupVersion.String())
	switch {
	case apierrors.IsNotFound(err):
		if warn {
			s.log.Warn("ClusterNetworkPolicy API not served (CRD not installed): admin and baseline tiers empty until it is",
				"groupVersion", cnp.GroupVersion.String(), "recheck", s.cfg.CRDRecheck)
		}
		return false, nil
	case err != nil:
		return false, fmt.Errorf("API source: discover %s: %w", cnp.GroupVersion, err)
	}
	return true, nil
}

// watchClusterPolicies starts the ClusterNetworkPolicy informer; its
// changes mark the policy changed. shutdown waits for it after ctx ends.
func (s *Source) watchClusterPolicies(ctx context.Context, ch *changes) (cnplisters.ClusterNetworkPolicyLister, cache.InformerSynced, func(), error) {
	factory := cnpinformers.NewSharedInformerFactoryWithOptions(s.cfg.ClusterPolicies, 0, cnpinformers.WithTransform(stripBookkeeping))
	inf := factory.Policy().V1beta1().ClusterNetworkPolicies()
	h, err := inf.Informer().AddEventHandler(notifyOn(ch.policyChanged))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("API source: watch ClusterNetworkPolicies: %w", err)
	}
	factory.Start(ctx.Done())
	return inf.Lister(), h.HasSynced, factory.Shutdown, nil
}

// lateClusterPolicies looks for the ClusterNetworkPolicy API once more
// and, if it is served now, starts following it and waits for its first
// complete list: the tiers go in force whole, never from half a list. It
// returns a nil lister when the API is still absent or did not sync (the
// next recheck tries again); shutdown is for Run's exit.
func (s *Source) lateClusterPolicies(ctx context.Context, ch *changes) (cnplisters.ClusterNetworkPolicyLister, func()) {
	served, err := s.clusterPoliciesServed(false)
	if err != nil {
		s.log.Error("looking for the ClusterNetworkPolicy API", "err", err)
		return nil, nil
	}
	if !served {
		return nil, nil
	}
	watchCtx, stop := context.WithCancel(ctx)
	lister, synced, shutdown, err := s.watchClusterPolicies(watchCtx, ch)
	if err != nil {
		stop()
		s.log.Error("following ClusterNetworkPolicies", "err", err)
		return nil, nil
	}
	syncCtx, syncDone := context.WithTimeout(ctx, s.cfg.SyncTimeout)
	ok := cache.WaitForCacheSync(syncCtx.Done(), synced)
	syncDone()
	stopAndWait := func() { stop(); shutdown() }
	if !ok {
		stopAndWait()
		if ctx.Err() == nil {
			s.log.Error("ClusterNetworkPolicy API served but not listed in time; trying again", "timeout", s.cfg.SyncTimeout)
		}
		return nil, nil
	}
	s.log.Info("ClusterNetworkPolicy API now served: admin and baseline tiers followed", "groupVersion", cnp.GroupVersion.String())
	return lister, stopAndWait
}

// stripBookkeeping drops what the informers need not keep: managed fields
// and kubectl's last-applied copy are the API server's and kubectl's
// bookkeeping, often the largest part of an object.
func stripBookkeeping(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
		if a := m.GetAnnotations(); a != nil {
			delete(a, corev1.LastAppliedConfigAnnotation)
		}
	}
	return obj, nil
}

// changed says what the informers saw change: the policy (network
// policies and namespaces), the placement (any pod's node, address or
// labels; namespaces' labels, for the identities by address), this node's
// pods (which also asks for a new scan of the namespaces), the Services or
// the node certificates.
type changed struct{ policy, placement, pods, services, nodeCerts bool }

// changes collects what changed since the loop last looked.
type changes struct {
	mu   sync.Mutex
	seen changed
	wake chan struct{}
}

func (c *changes) policyChanged()    { c.mark(changed{policy: true}) }
func (c *changes) placementChanged() { c.mark(changed{placement: true}) }
func (c *changes) podsChanged()      { c.mark(changed{pods: true}) }
func (c *changes) servicesChanged()  { c.mark(changed{services: true}) }
func (c *changes) nodeCertsChanged() { c.mark(changed{nodeCerts: true}) }
func (c *changes) namespacesChanged() {
	c.mark(changed{policy: true, placement: true})
}

func (c *changes) mark(w changed) {
	c.mu.Lock()
	c.seen.policy = c.seen.policy || w.policy
	c.seen.placement = c.seen.placement || w.placement
	c.seen.pods = c.seen.pods || w.pods
	c.seen.services = c.seen.services || w.services
	c.seen.nodeCerts = c.seen.nodeCerts || w.nodeCerts
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// take returns and clears what changed.
func (c *changes) take() changed {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.seen
	c.seen = changed{}
	return w
}

// notifyOn calls mark on every add, update and delete; resyncs (an update
// with the same resource version) change nothing.
func notifyOn(mark func()) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { mark() },
		UpdateFunc: func(oldObj, newObj any) {
			o, okOld := oldObj.(metav1.Object)
			n, okNew := newObj.(metav1.Object)
			if okOld && okNew && o.GetResourceVersion() != "" && o.GetResourceVersion() == n.GetResourceVersion() {
				return
			}
			mark()
		},
		DeleteFunc: func(any) { mark() },
	}
}

// state computes desired states and remembers the last one delivered, to
// deliver only changes.
type state struct {
	cfg Config
	log *slog.Logger
	l   listers

	snapshot  *podnetns.Snapshot // the last scan of the node's namespaces
	workloads []desired.Workload // last delivered
	services  *desired.Services  // last delivered
	status    map[string]string  // pod ref -> its protection status, as last logged
	// published holds the node certificates seen in requests, by node
	// and DER, until they expire (nodecerts.go); nodeCerts is the last
	// delivered.
	published map[string]map[string]*x509.Certificate
	nodeCerts *desired.NodeCerts
}

// compute builds the desired state; differs reports whether it differs
// from the last one delivered (a new policy or placement always does). A
// change of policy or placement alone reuses the last scan: it must take
// effect at once, and the pods' namespaces did not move.
func (s *state) compute(ctx context.Context, what changed) (next desired.State, differs bool) {
	if what.policy {
		if eng, err := s.compilePolicy(); err != nil {
			s.log.Error("network policies rejected; keeping the policy in force", "err", err)
		} else {
			next.Policy = eng
			differs = true
			s.log.Info("network policies in force", "policies", len(eng.Objects().Policies))
		}
	}
	if what.placement {
		if p, a, err := s.placement(); err != nil { // a cache lister does not fail; keep the placement if it ever does
			s.log.Error("list every pod's node", "err", err)
		} else {
			next.Placement, next.Addresses = p, a
			differs = true
		}
	}
	if s.l.csrs != nil && (what.nodeCerts || what.placement) {
		if nc, err := s.computeNodeCerts(time.Now()); err != nil {
			s.log.Error("list node certificate signing requests", "err", err)
		} else if !sameNodeCerts(nc, s.nodeCerts) {
			next.NodeCerts, s.nodeCerts = nc, nc
			differs = true
		}
	}
	pods, err := s.l.pods.List(labels.Everything())
	if err != nil {
		s.log.Error("list this node's pods", "err", err)
		next.Workloads = s.workloads
		return next, differs
	}
	if what.services || what.pods {
		if svcs, err := s.computeServices(pods); err != nil {
			s.log.Error("list services", "err", err)
		} else if !reflect.DeepEqual(svcs, s.services) {
			next.Services, s.services = svcs, svcs
			differs = true
		}
	}
	if what.pods || s.snapshot == nil {
		s.rescan(ctx, pods)
	}
	next.Workloads = s.selectWorkloads(pods)
	if !desired.SameWorkloads(next.Workloads, s.workloads) {
		differs = true
		s.workloads = next.Workloads
	}
	return next, differs
}

// placement maps every pod the API server places on a node to that node.
// A pod not yet scheduled runs nowhere and is left out, so a token for it
// is refused as unknown. It also maps every pod address to the pod holding
// it, for the peers of UDP and SCTP flows (decided by address): pods on
// the host network (their address is the node's) and pods that finished
// are left out, and an address two pods claim maps to neither (the peer is
// then an address only, fail closed for pod selectors).
func (s *state) placement() (desired.Placement, desired.Addresses, error) {
	pods, err := s.l.allPods.List(labels.Everything())
	if err != nil {
		return nil, nil, err
	}
	p := make(desired.Placement, len(pods))
	addrs := make(desired.Addresses, len(pods))
	claimed := map[netip.Addr]bool{}
	// Identities of a namespace share one namespace-labels map: on a
	// cluster of 10,000 pods a copy each would cost megabytes.
	nsLabels := map[string]map[string]string{}
	for _, pod := range pods {
		if pod.Spec.NodeName != "" {
			p[podRef(pod)] = pod.Spec.NodeName
		}
		if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		var id *identity.Identity
		for _, ip := range podIPs(pod) {
			if claimed[ip] {
				delete(addrs, ip)
				continue
			}
			claimed[ip] = true
			if id == nil {
				id = s.identityByAddress(pod, nsLabels)
			}
			addrs[ip] = id
		}
	}
	return p, addrs, nil
}

// identityByAddress is the pod's identity, its namespace labels shared
// with the other pods of its namespace through nsLabels.
func (s *state) identityByAddress(pod *corev1.Pod, nsLabels map[string]map[string]string) *identity.Identity {
	ns, err := s.l.namespaces.Get(pod.Namespace)
	if err != nil {
		ns = nil
	}
	id := k8s.IdentityOf(s.cfg.Cluster, ns, pod)
	if shared, ok := nsLabels[id.Namespace]; ok {
		id.NamespaceLabels = shared
	} else {
		nsLabels[id.Namespace] = id.NamespaceLabels
	}
	return id
}

// podIPs are the pod's addresses that parse (status.podIPs, or podIP).
func podIPs(pod *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	if len(out) == 0 {
		if a, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// trimPod keeps of a pod what its placement and its identity by address
// (the peer of a UDP or SCTP flow) need: namespace, name, labels, service
// account, named container ports, node, phase and addresses.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone of a deleted pod: nothing to trim
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: p.Namespace, Name: p.Name, UID: p.UID, ResourceVersion: p.ResourceVersion, Labels: p.Labels,
		},
		Spec: corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork,
			ServiceAccountName: p.Spec.ServiceAccountName,
			Containers:         trimContainers(p.Spec.Containers, false),
			InitContainers:     trimContainers(p.Spec.InitContainers, true)},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}, nil
}

// trimContainers keeps the named ports of containers (of sidecars only,
// for init containers: the others never serve), nothing else.
func trimContainers(cs []corev1.Container, sidecarsOnly bool) []corev1.Container {
	var out []corev1.Container
	for _, c := range cs {
		if sidecarsOnly && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
			continue
		}
		var ports []corev1.ContainerPort
		for _, p := range c.Ports {
			if p.Name != "" {
				ports = append(ports, corev1.ContainerPort{Name: p.Name, Protocol: p.Protocol, ContainerPort: p.ContainerPort})
			}
		}
		if len(ports) > 0 {
			out = append(out, corev1.Container{Ports: ports, RestartPolicy: c.RestartPolicy})
		}
	}
	return out
}

// computeServices lists the TCP ports of every Service with a selector
// (the frontends: a client's SYN to one carries its token) and, for each,
// the address and target port of this node's running pods the selector
// picks in the Service's namespace (the backends a SYN sent to that
// frontend may arrive at). The endpoints are computed here from the
// selector and the pods, not read from EndpointSlices: anyone allowed to
// write an EndpointSlice, in any namespace, could otherwise make any
// address a "Service" of any pod. Selectorless Services (endpoints written
// by hand), headless Services (no cluster IP: clients dial the pods) and
// ExternalName Services are no frontends.
func (s *state) computeServices(pods []*corev1.Pod) (*desired.Services, error) {
	svcs, err := s.l.services.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	out := &desired.Services{Frontends: map[netip.AddrPort]desired.TargetPort{}, Backends: map[netip.AddrPort][]netip.AddrPort{}}
	for _, svc := range svcs {
		if len(svc.Spec.Selector) == 0 || svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		var vips []netip.Addr
		for _, ip := range append([]string{svc.Spec.ClusterIP}, svc.Spec.ClusterIPs...) {
			if a, err := netip.ParseAddr(ip); err == nil && !slices.Contains(vips, a.Unmap()) {
				vips = append(vips, a.Unmap())
			}
		}
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		var selected []*corev1.Pod
		for _, p := range pods {
			if p.Namespace == svc.Namespace && p.Spec.NodeName == s.cfg.Node && candidate(p) && sel.Matches(labels.Set(p.Labels)) {
				selected = append(selected, p)
			}
		}
		for _, sp := range svc.Spec.Ports {
			if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
				continue
			}
			target := desired.TargetPort{Number: uint16(sp.Port)}
			switch {
			case sp.TargetPort.Type == intstr.String:
				target = desired.TargetPort{Name: sp.TargetPort.StrVal}
			case sp.TargetPort.IntVal != 0:
				target = desired.TargetPort{Number: uint16(sp.TargetPort.IntVal)}
			}
			for _, vip := range vips {
				fe := netip.AddrPortFrom(vip, uint16(sp.Port))
				out.Frontends[fe] = target
				for _, p := range selected {
					port, ok := resolveTarget(p, target)
					if !ok {
						continue // the pod has no such named port: kube-proxy sends it nothing
					}
					for _, ip := range podIPs(p) {
						if ip.Is4() == vip.Is4() {
							out.Backends[fe] = append(out.Backends[fe], netip.AddrPortFrom(ip, port))
						}
					}
				}
			}
		}
	}
	return out, nil
}

// resolveTarget is the pod's port a Service's target port means: the
// number, or the pod's TCP container port of that name.
func resolveTarget(p *corev1.Pod, t desired.TargetPort) (uint16, bool) {
	if t.Name == "" {
		return t.Number, true
	}
	for _, c := range append(slices.Clone(p.Spec.Containers), p.Spec.InitContainers...) {
		for _, cp := range c.Ports {
			if cp.Name == t.Name && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
				return uint16(cp.ContainerPort), true
			}
		}
	}
	return 0, false
}

// compilePolicy compiles every NetworkPolicy and ClusterNetworkPolicy, with
// the namespaces their selectors look at.
func (s *state) compilePolicy() (*policy.Engine, error) {
	nss, err := s.l.namespaces.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	nps, err := s.l.policies.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	// Sorted: the engine explains decisions by policy name, and the same
	// objects must give the same engine whatever order the cache lists.
	sort.Slice(nss, func(i, j int) bool { return nss[i].Name < nss[j].Name })
	sort.Slice(nps, func(i, j int) bool {
		return nps[i].Namespace+"/"+nps[i].Name < nps[j].Namespace+"/"+nps[j].Name
	})
	var cnps []*cnp.ClusterNetworkPolicy
	if s.l.cluster != nil {
		if cnps, err = s.l.cluster.List(labels.Everything()); err != nil {
			return nil, err
		}
		sort.Slice(cnps, func(i, j int) bool { return cnps[i].Name < cnps[j].Name })
	}
	return k8s.CompileWith(policy.Objects{Namespaces: nss, Policies: nps, ClusterPolicies: cnps}, s.cfg.Policy)
}

// rescan looks up the node's namespaces again, when a pod could be
// protected: a node with no running pod needs no scan.
func (s *state) rescan(ctx context.Context, pods []*corev1.Pod) {
	for _, p := range pods {
		if candidate(p) {
			snap, err := s.cfg.NetNS.Scan(ctx)
			if err != nil {
				s.log.Error("scan network namespaces; keeping the previous scan", "err", err)
				return
			}
			for _, problem := range snap.Problems {
				s.log.Warn("network namespace not readable", "err", problem)
			}
			s.snapshot = snap
			return
		}
	}
	s.snapshot = podnetns.NewSnapshot(nil)
}

// candidate reports whether a pod may be protected: Running, not on the
// host network, with an IP (workloadOf says why one is not).
func candidate(p *corev1.Pod) bool {
	if p.Spec.HostNetwork || p.Status.Phase != corev1.PodRunning {
		return false
	}
	_, err := netip.ParseAddr(p.Status.PodIP)
	return err == nil
}

// selectWorkloads picks the workloads: pods that may be protected and whose IP one
// network namespace holds. Every pod's status is logged when it changes.
func (s *state) selectWorkloads(pods []*corev1.Pod) []desired.Workload {
	sort.Slice(pods, func(i, j int) bool { return podRef(pods[i]) < podRef(pods[j]) })
	seen := make(map[string]bool, len(pods))
	claimed := map[string]string{} // netns path -> pod ref
	var out []desired.Workload
	for _, p := range pods {
		if p.Spec.NodeName != s.cfg.Node {
			continue // the field selector already left these out; a mistake there must not protect another node's pods
		}
		ref := podRef(p)
		seen[ref] = true
		status, w := s.workloadOf(p, claimed)
		if w != nil {
			claimed[w.NetNS] = ref
			out = append(out, *w)
		}
		s.report(ref, status)
	}
	for ref := range s.status {
		if !seen[ref] {
			s.report(ref, "")
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NetNS < out[j].NetNS })
	return out
}

// workloadOf returns a pod's protection status and, when protected, its
// workload.
func (s *state) workloadOf(p *corev1.Pod, claimed map[string]string) (string, *desired.Workload) {
	switch {
	case p.Spec.HostNetwork:
		return "not protected: hostNetwork pods share the node's network namespace", nil
	case p.Status.Phase != corev1.PodRunning:
		return fmt.Sprintf("not protected yet: phase %q", p.Status.Phase), nil
	case p.Status.PodIP == "":
		return "not protected yet: no pod IP", nil
	}
	ip, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil {
		return fmt.Sprintf("not protected: pod IP %q does not parse", p.Status.PodIP), nil
	}
	path, err := s.snapshot.Lookup(ip)
	if err != nil {
		// A namespace that could not be read this time is not gone: a pod
		// protected there stays protected rather than flap.
		if prev := s.delivered(podRef(p)); prev != nil && s.snapshot.Unreadable(prev.NetNS) {
			path = prev.NetNS
		} else {
			return fmt.Sprintf("not protected: network namespace: %v", err), nil
		}
	}
	if other, dup := claimed[path]; dup {
		return fmt.Sprintf("not protected: network namespace %s also holds pod %s", path, other), nil
	}
	ns, err := s.l.namespaces.Get(p.Namespace)
	if err != nil {
		ns = nil // not seen yet: the identity carries the namespace name only, as IdentityOf documents
	}
	return "protected in " + path, &desired.Workload{
		Ref:      podRef(p),
		NetNS:    path,
		Identity: k8s.IdentityOf(s.cfg.Cluster, ns, p),
	}
}

// delivered returns the workload last delivered for the pod ref, or nil.
func (s *state) delivered(ref string) *desired.Workload {
	for i := range s.workloads {
		if s.workloads[i].Ref == ref {
			return &s.workloads[i]
		}
	}
	return nil
}

// report logs a pod's status when it changed; "" means the pod is gone.
func (s *state) report(ref, status string) {
	if s.status[ref] == status {
		return
	}
	switch {
	case status == "":
		delete(s.status, ref)
		s.log.Info("pod gone from this node", "pod", ref)
		return
	case strings.HasPrefix(status, "protected"):
		s.log.Info("pod status", "pod", ref, "status", status)
	default:
		s.log.Warn("pod status", "pod", ref, "status", status)
	}
	s.status[ref] = status
}

func podRef(p *corev1.Pod) string { return p.Namespace + "/" + p.Name }
