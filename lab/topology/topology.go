// Package topology builds a small network of hosts on one machine out of
// Linux network namespaces: hosts sit on nodes, nodes are joined through a
// router, and traffic between nodes may optionally be masqueraded (NAT).
//
// The layout, for a topology with prefix P:
//
//	P-router                  router namespace; interface nI (198.19.I.1/24) per node I
//	  |
//	P-node-NAME               one namespace per node I (1..254): interface "uplink" (198.19.I.2/24)
//	  |                       towards the router and bridge "br0" (198.18.I.1/24) for its hosts
//	P-HOST                    one namespace per host: "eth0" 198.18.I.H/24, default via 198.18.I.1
//
// Every address comes from 198.18.0.0/15 (RFC 2544 benchmarking space):
// hosts of node I live in 198.18.I.0/24 and the node-router links in
// 198.19.I.0/24. With NAT, each node masquerades traffic that its hosts send
// towards other nodes to its router-facing address 198.19.I.2, so a server
// on another node sees the node's address and not the client's.
//
// Veth pairs are created directly inside their namespaces, so interface names
// never appear in the caller's namespace and cannot collide with anything
// there. Everything a topology makes lives in namespaces named with its
// prefix: deleting them (Destroy, or DestroyPrefix after a crash) removes it
// all, including the iptables rules inside.
//
// Example:
//
//	topo, err := topology.Build(ctx, topology.Spec{
//		Prefix: "demo", NAT: true,
//		Nodes: []topology.NodeSpec{{Name: "n1", Hosts: []string{"a", "b"}}, {Name: "n2", Hosts: []string{"c"}}},
//	})
//	if err != nil { ... }
//	defer topo.Destroy(context.Background())
//	c, err := topo.Host("a").NS.Dial("tcp", netip.AddrPortFrom(topo.Host("c").Addr, 80).String(), time.Second)
package topology

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/bireme/bireme/netns"
)

// MaxNodes is the number of nodes a topology can hold (one /24 each).
const MaxNodes = 254

// HostsPrefix holds every host's address (node I's hosts are in
// 198.18.I.0/24): the pod range, where the lab's peers may run an
// enforcer (bireme enforce --identity-networks).
var HostsPrefix = netip.MustParsePrefix("198.18.0.0/16")

// MaxHostsPerNode is the number of hosts one node can hold (.2 to .254).
const MaxHostsPerNode = 253

// Spec describes a topology to build.
type Spec struct {
	// Prefix starts the name of every namespace the topology creates. Keep
	// it short and unique on the machine (netnstest.Prefix() in tests); it
	// must not contain '/' or whitespace.
	Prefix string
	// NAT masquerades traffic that leaves a node towards other nodes to the
	// node's router-facing address.
	NAT bool
	// Nodes in order; node i (from 0) gets the subnet 198.18.(i+1).0/24.
	Nodes []NodeSpec
}

// NodeSpec names a node and the hosts built on it.
type NodeSpec struct {
	Name  string
	Hosts []string
}

// Node is one node of a running topology.
type Node struct {
	Name string
	// Index (1..254) numbers the node's subnets.
	Index int
	// NS is the node's namespace (it routes for its hosts).
	NS *netns.NS
	// Addr is the node's router-facing address; with NAT, servers on other
	// nodes see this address as the source of this node's hosts.
	Addr netip.Addr
	// Subnet holds the addresses of the node's hosts.
	Subnet netip.Prefix
}

// Host is one host (a workload's network namespace) of a running topology.
type Host struct {
	Name string
	// Node is the name of the node the host sits on.
	Node string
	// NS is the host's namespace, named Prefix + "-" + Name.
	NS *netns.NS
	// Addr is the host's address on interface eth0.
	Addr netip.Addr
}

// Topology is a running set of namespaces. Its methods are safe for
// concurrent use.
type Topology struct {
	prefix string
	nat    bool
	router *netns.NS

	mu    sync.Mutex
	nodes map[string]*Node
	hosts map[string]*Host
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func checkName(kind, name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("%s name %q: want 1-63 characters from [A-Za-z0-9._-], starting with a letter or digit", kind, name)
	}
	return nil
}

func checkPrefix(prefix string) error {
	if prefix == "" || strings.ContainsAny(prefix, "/ \t\n") || len(prefix) > 32 {
		return fmt.Errorf("topology prefix %q: want 1-32 characters without '/' or spaces", prefix)
	}
	return nil
}

// RouterName is the name of the router namespace of a topology with prefix.
func RouterName(prefix string) string { return prefix + "-router" }

// NodeNSName is the name of the namespace of node in a topology with prefix.
func NodeNSName(prefix, node string) string { return prefix + "-node-" + node }

// HostNSName is the name of the namespace of host in a topology with prefix.
func HostNSName(prefix, host string) string { return prefix + "-" + host }

func nodeAddr(index int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, byte(index), 2}) }

// NATSources is the range of every node's router-facing address: with NAT,
// the source a server on another node sees for any client, whichever
// nodes exist now or are added later.
func NATSources() netip.Prefix { return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, 0, 0}), 16) }

func routerAddr(index int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, byte(index), 1}) }
func gateway(index int) netip.Addr    { return netip.AddrFrom4([4]byte{198, 18, byte(index), 1}) }
func subnet(index int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(index), 0}), 24)
}

// Build creates the router, every node and every host of spec. If any step
// fails, everything already created is removed before the error returns.
func Build(ctx context.Context, spec Spec) (*Topology, error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	if existing, err := netns.List(spec.Prefix + "-"); err != nil {
		return nil, err
	} else if len(existing) > 0 {
		return nil, fmt.Errorf("topology %s: namespaces with this prefix already exist (%s); remove them with DestroyPrefix", spec.Prefix, strings.Join(existing, ", "))
	}
	t := &Topology{prefix: spec.Prefix, nat: spec.NAT, nodes: map[string]*Node{}, hosts: map[string]*Host{}}
	if err := t.build(ctx, spec); err != nil {
		if derr := DestroyPrefix(context.WithoutCancel(ctx), spec.Prefix); derr != nil {
			err = errors.Join(err, fmt.Errorf("clean up after failed build: %w", derr))
		}
		return nil, err
	}
	return t, nil
}

func checkSpec(spec Spec) error {
	if err := checkPrefix(spec.Prefix); err != nil {
		return err
	}
	if len(spec.Nodes) > MaxNodes {
		return fmt.Errorf("topology %s: %d nodes, at most %d", spec.Prefix, len(spec.Nodes), MaxNodes)
	}
	nodes, hosts := map[string]bool{}, map[string]bool{}
	for _, n := range spec.Nodes {
		if err := checkName("node", n.Name); err != nil {
			return err
		}
		if nodes[n.Name] {
			return fmt.Errorf("node %q listed twice", n.Name)
		}
		nodes[n.Name] = true
		if len(n.Hosts) > MaxHostsPerNode {
			return fmt.Errorf("node %q: %d hosts, at most %d", n.Name, len(n.Hosts), MaxHostsPerNode)
		}
		for _, h := range n.Hosts {
			if err := checkHostName(h); err != nil {
				return err
			}
			if hosts[h] {
				return fmt.Errorf("host %q listed twice", h)
			}
			hosts[h] = true
		}
	}
	return nil
}

// checkHostName also keeps host namespaces from colliding with the router's
// and the nodes' namespaces, which share the prefix.
func checkHostName(h string) error {
	if err := checkName("host", h); err != nil {
		return err
	}
	if h == "router" || strings.HasPrefix(h, "node-") {
		return fmt.Errorf("host name %q is reserved (router, node-*)", h)
	}
	return nil
}

func (t *Topology) build(ctx context.Context, spec Spec) error {
	router, err := netns.Create(ctx, RouterName(t.prefix))
	if err != nil {
		return err
	}
	t.router = router
	if err := enableForwarding(ctx, router); err != nil {
		return err
	}
	// Nodes, then their hosts; each in parallel, since every step is a few
	// short-lived ip(8) processes and a lab may have dozens of hosts.
	if err := parallel(len(spec.Nodes), func(i int) error {
		_, err := t.addNode(ctx, spec.Nodes[i].Name, i+1)
		return err
	}); err != nil {
		return err
	}
	type job struct{ node, host string }
	var jobs []job
	for _, n := range spec.Nodes {
		for _, h := range n.Hosts {
			jobs = append(jobs, job{n.Name, h})
		}
	}
	return parallel(len(jobs), func(i int) error {
		_, err := t.AddHost(ctx, jobs[i].node, jobs[i].host)
		return err
	})
}

// parallel runs fn(0..n-1) with bounded concurrency and returns the first error.
func parallel(n int, fn func(i int) error) error {
	const workers = 8
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		sem   = make(chan struct{}, workers)
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(i); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	return first
}

func enableForwarding(ctx context.Context, ns *netns.NS) error {
	if err := ns.Exec(ctx, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"); err != nil {
		return fmt.Errorf("enable forwarding in %s: %w", ns.Name, err)
	}
	return nil
}

// ipBatch runs ip(8) commands inside ns in one process.
func ipBatch(ctx context.Context, ns *netns.NS, lines ...string) error {
	cmd := exec.CommandContext(ctx, "ip", "-n", ns.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("netns %s: ip -batch (%s): %w: %s", ns.Name, strings.Join(lines, "; "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// AddNode adds a node (with no hosts) to a running topology and returns it.
// It takes the lowest free node index.
func (t *Topology) AddNode(ctx context.Context, name string) (*Node, error) {
	if err := checkName("node", name); err != nil {
		return nil, err
	}
	t.mu.Lock()
	used := map[int]bool{}
	for _, n := range t.nodes {
		used[n.Index] = true
	}
	_, exists := t.nodes[name]
	t.mu.Unlock()
	if exists {
		return nil, fmt.Errorf("node %q already exists", name)
	}
	for i := 1; i <= MaxNodes; i++ {
		if !used[i] {
			return t.addNode(ctx, name, i)
		}
	}
	return nil, fmt.Errorf("add node %q: topology already has %d nodes", name, MaxNodes)
}

func (t *Topology) addNode(ctx context.Context, name string, index int) (*Node, error) {
	t.mu.Lock()
	if _, ok := t.nodes[name]; ok {
		t.mu.Unlock()
		return nil, fmt.Errorf("node %q already exists", name)
	}
	// Reserve the name and index before the slow part.
	n := &Node{Name: name, Index: index, Addr: nodeAddr(index), Subnet: subnet(index)}
	t.nodes[name] = n
	t.mu.Unlock()
	if err := t.makeNode(ctx, n); err != nil {
		t.mu.Lock()
		delete(t.nodes, name)
		t.mu.Unlock()
		if n.NS != nil {
			_ = n.NS.Delete(context.WithoutCancel(ctx))
		}
		return nil, fmt.Errorf("add node %q: %w", name, err)
	}
	return n, nil
}

// RouterLink is the router's interface towards node n.
func RouterLink(n *Node) string { return fmt.Sprintf("n%d", n.Index) }

func (t *Topology) makeNode(ctx context.Context, n *Node) error {
	ns, err := netns.Create(ctx, NodeNSName(t.prefix, n.Name))
	if err != nil {
		return err
	}
	n.NS = ns
	routerIf := RouterLink(n)
	if err := netns.Cmd(ctx, "ip", "link", "add", routerIf, "netns", t.router.Name, "type", "veth", "peer", "name", "uplink", "netns", ns.Name); err != nil {
		return fmt.Errorf("link router-%s: %w", n.Name, err)
	}
	if err := ipBatch(ctx, t.router,
		fmt.Sprintf("addr add %s/24 dev %s", routerAddr(n.Index), routerIf),
		fmt.Sprintf("link set %s up", routerIf),
		fmt.Sprintf("route add %s via %s dev %s", n.Subnet, n.Addr, routerIf),
	); err != nil {
		return err
	}
	if err := ipBatch(ctx, ns,
		fmt.Sprintf("addr add %s/24 dev uplink", n.Addr),
		"link set dev uplink up",
		"link add br0 type bridge",
		fmt.Sprintf("addr add %s/24 dev br0", gateway(n.Index)),
		"link set br0 up",
		fmt.Sprintf("route add default via %s dev uplink", routerAddr(n.Index)),
	); err != nil {
		return err
	}
	if err := enableForwarding(ctx, ns); err != nil {
		return err
	}
	if t.nat {
		// Only traffic leaving towards the router is rewritten: hosts on the
		// same node still see each other's own addresses.
		if err := ns.Exec(ctx, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", n.Subnet.String(), "-o", "uplink", "-j", "MASQUERADE"); err != nil {
			return fmt.Errorf("nat on %s: %w", n.Name, err)
		}
	}
	return nil
}

// AddHost creates host name on node and returns it. The host gets the
// lowest free address in the node's subnet.
func (t *Topology) AddHost(ctx context.Context, node, name string) (*Host, error) {
	if err := checkHostName(name); err != nil {
		return nil, err
	}
	t.mu.Lock()
	n, ok := t.nodes[node]
	if !ok {
		t.mu.Unlock()
		return nil, fmt.Errorf("add host %q: no node %q", name, node)
	}
	if _, ok := t.hosts[name]; ok {
		t.mu.Unlock()
		return nil, fmt.Errorf("add host %q: already exists", name)
	}
	used := map[netip.Addr]bool{}
	for _, h := range t.hosts {
		used[h.Addr] = true
	}
	var addr netip.Addr
	for i := 2; i <= MaxHostsPerNode+1; i++ {
		a := netip.AddrFrom4([4]byte{198, 18, byte(n.Index), byte(i)})
		if !used[a] {
			addr = a
			break
		}
	}
	if !addr.IsValid() {
		t.mu.Unlock()
		return nil, fmt.Errorf("add host %q: node %q is full", name, node)
	}
	h := &Host{Name: name, Node: node, Addr: addr}
	t.hosts[name] = h // reserve name and address
	t.mu.Unlock()

	if err := t.makeHost(ctx, n, h); err != nil {
		t.mu.Lock()
		delete(t.hosts, name)
		t.mu.Unlock()
		if h.NS != nil {
			_ = h.NS.Delete(context.WithoutCancel(ctx))
		}
		return nil, fmt.Errorf("add host %q on %q: %w", name, node, err)
	}
	return h, nil
}

// hostIf is the node-side interface of a host: named by the host's last
// address byte, which is unique on the node.
func hostIf(h *Host) string { return fmt.Sprintf("h%d", h.Addr.As4()[3]) }

func (t *Topology) makeHost(ctx context.Context, n *Node, h *Host) error {
	ns, err := netns.Create(ctx, HostNSName(t.prefix, h.Name))
	if err != nil {
		return err
	}
	h.NS = ns
	nodeIf := hostIf(h)
	if err := netns.Cmd(ctx, "ip", "link", "add", "eth0", "netns", ns.Name, "type", "veth", "peer", "name", nodeIf, "netns", n.NS.Name); err != nil {
		return fmt.Errorf("link: %w", err)
	}
	if err := ipBatch(ctx, n.NS, fmt.Sprintf("link set %s master br0 up", nodeIf)); err != nil {
		return err
	}
	return ipBatch(ctx, ns,
		fmt.Sprintf("addr add %s/24 dev eth0", h.Addr),
		"link set eth0 up",
		fmt.Sprintf("route add default via %s dev eth0", gateway(n.Index)),
	)
}

// RemoveHost deletes host name, its namespace and every process inside it.
func (t *Topology) RemoveHost(ctx context.Context, name string) error {
	t.mu.Lock()
	h, ok := t.hosts[name]
	t.mu.Unlock()
	if !ok {
		return fmt.Errorf("remove host %q: no such host", name)
	}
	if err := h.NS.Delete(ctx); err != nil {
		return fmt.Errorf("remove host %q: %w", name, err)
	}
	// A socket or queue still open in the host's namespace keeps it, and
	// its veth, alive after the name is gone; deleting the node-side end
	// removes the pair now, so the name and address can be reused at once.
	// The node's neighbour entry goes too, or a new host on the same
	// address would be unreachable until the old MAC ages out.
	t.mu.Lock()
	n := t.nodes[h.Node]
	t.mu.Unlock()
	if n != nil {
		_ = n.NS.Exec(ctx, "ip", "link", "del", hostIf(h))
		_ = n.NS.Exec(ctx, "ip", "neigh", "flush", "to", h.Addr.String())
	}
	t.mu.Lock()
	delete(t.hosts, name)
	t.mu.Unlock()
	return nil
}

// Prefix is the prefix of every namespace of the topology.
func (t *Topology) Prefix() string { return t.prefix }

// NAT reports whether traffic between nodes is masqueraded.
func (t *Topology) NAT() bool { return t.nat }

// Router is the namespace that joins the nodes.
func (t *Topology) Router() *netns.NS { return t.router }

// Host returns the host called name, or nil.
func (t *Topology) Host(name string) *Host {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.hosts[name]
}

// Node returns the node called name, or nil.
func (t *Topology) Node(name string) *Node {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.nodes[name]
}

// Hosts returns every host, sorted by name.
func (t *Topology) Hosts() []*Host {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*Host, 0, len(t.hosts))
	for _, h := range t.hosts {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Nodes returns every node, sorted by index.
func (t *Topology) Nodes() []*Node {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*Node, 0, len(t.nodes))
	for _, n := range t.nodes {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// SourceAddr is the address a server on node `to` sees for a connection
// from host `from`: the host's own address, or with NAT between different
// nodes, the client node's router-facing address.
func (t *Topology) SourceAddr(from *Host, toNode string) netip.Addr {
	if !t.nat || from.Node == toNode {
		return from.Addr
	}
	if n := t.Node(from.Node); n != nil {
		return n.Addr
	}
	return from.Addr
}

// Destroy removes every namespace of the topology (and so every link, rule
// and process inside them).
func (t *Topology) Destroy(ctx context.Context) error {
	return DestroyPrefix(ctx, t.prefix)
}

// DestroyPrefix removes every namespace of the topology with prefix, also
// when no *Topology exists any more (after a crash). It does nothing when
// there is none.
func DestroyPrefix(ctx context.Context, prefix string) error {
	if err := checkPrefix(prefix); err != nil {
		return err
	}
	if err := netns.DeleteAll(ctx, prefix+"-"); err != nil {
		return fmt.Errorf("destroy topology %s: %w", prefix, err)
	}
	return nil
}
