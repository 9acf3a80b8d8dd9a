package lab

import (
	"context"
	"net/netip"
	"sort"
	"time"

	"github.com/bireme/bireme/lab/topology"
	"github.com/bireme/bireme/netns"
	corev1 "k8s.io/api/core/v1"
)

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
	out = append(out, l.memberTargets()...)
	sort.Slice(out, func(i, j int) bool { return out[i].Ref < out[j].Ref })
	return out
}

// Pod returns the pod ref ("namespace/name") as a Target: its namespace,
// address and declared ports.
func (l *Lab) Pod(ref string) (Target, bool) {
	for _, t := range l.targets() {
		if t.Ref == ref {
			return t, true
		}
	}
	return Target{}, false
}

// Router returns the namespace of the router that joins the nodes.
func (l *Lab) Router() *netns.NS { return l.topo.Router() }

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
		files = append(files, l.flowFile(n.Name))
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
	// Protected is false for a pod with UnprotectedAnnotation.
	Protected bool `json:"protected"`
}

// NodeStatus describes one node of a running lab.
type NodeStatus struct {
	Name  string     `json:"name"`
	NetNS string     `json:"netns"`
	Addr  netip.Addr `json:"addr"` // router-facing address (the NAT source)
	// RouterLink is the router's interface towards the node: capture
	// there to see the node's traffic on the wire.
	RouterLink string `json:"routerLink"`
	// EnforcerPID is the node's `bireme enforce` process, 0 if none runs.
	EnforcerPID int `json:"enforcerPid"`
	// The enforcer's files and metrics address; empty without enforcers.
	Flows   string `json:"flows,omitempty"`   // flow records, one JSON line each
	FlowKey string `json:"flowKey,omitempty"` // key of the flow file's head (bireme flows verify --key)
	Log     string `json:"log,omitempty"`     // its standard output and error
	Metrics string `json:"metrics,omitempty"` // host:port of http://ADDR/metrics
}

// Status is `lab status --output json`.
type Status struct {
	StateDir string       `json:"stateDir"`
	Store    string       `json:"store"` // the enforcers' file store
	Prefix   string       `json:"prefix"`
	NAT      bool         `json:"nat"`
	Enforced bool         `json:"enforced"`
	Router   string       `json:"router"`
	Nodes    []NodeStatus `json:"nodes"`
	Pods     []PodStatus  `json:"pods"`
}

// Status describes the running lab.
func (l *Lab) Status() Status {
	s := Status{StateDir: l.cfg.StateDir, Store: l.cfg.path("store"), Prefix: l.st.Options.Prefix, NAT: l.st.Options.NAT,
		Enforced: !l.st.Options.NoEnforce, Router: l.topo.Router().Name}
	for _, n := range l.topo.Nodes() {
		ns := NodeStatus{Name: n.Name, NetNS: n.NS.Name, Addr: n.Addr, RouterLink: topology.RouterLink(n)}
		if !l.st.Options.NoEnforce {
			ns.EnforcerPID = l.enforcerPID(n.Name)
			ns.Flows, ns.Log, ns.Metrics = l.flowFile(n.Name), l.enforcerLog(n.Name), l.st.MetricsAddrs[n.Name]
			ns.FlowKey = l.FlowKey(n.Name)
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
		s.Pods = append(s.Pods, PodStatus{Pod: podRef(p), NetNS: h.NS.Name, Addr: h.Addr, Node: h.Node, Labels: labels, Ports: tcpPorts(p),
			Protected: p.Annotations[NetNSAnnotation] != ""})
	}
	for _, m := range l.st.Options.Members {
		for _, p := range l.members[m.Cluster].Pods {
			h := l.topo.Host(memberHost(m.Cluster, p))
			if h == nil {
				continue
			}
			s.Pods = append(s.Pods, PodStatus{Pod: m.Cluster + "/" + podRef(p), NetNS: h.NS.Name, Addr: h.Addr, Node: h.Node, Labels: p.Labels, Ports: tcpPorts(p),
				Protected: p.Annotations[NetNSAnnotation] != ""})
		}
	}
	return s
}
