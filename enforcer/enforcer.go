package enforcer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

// Defaults for Config fields left zero.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxPacket bounds a handshake packet with its token: the IPv6
	// minimum MTU, which every path carries, so a token never makes a SYN
	// that some link between the workloads would drop.
	DefaultMaxPacket = 1280
	// DefaultMaxHandshakes bounds the half-open handshakes remembered per
	// workload; beyond it new handshakes are refused (fail closed).
	DefaultMaxHandshakes = 65536
	// DefaultMaxNodeHandshakes bounds them over the whole node: about
	// 1.5 KB each with the peer's identity, 200 MB at most. A node that
	// opens 5,000 connections a second remembers 50,000 handshakes
	// (HandshakeTimeout), well below.
	DefaultMaxNodeHandshakes = 1 << 17
)

// Config configures an Enforcer.
type Config struct {
	// Node names this node in flow records.
	Node string
	// Tokens signs local identities and verifies peers'.
	Tokens *tokens.Engine
	// Policy decides each connection.
	Policy policy.Decider
	// Placement says which node runs each pod: a peer token of the local
	// trust domain is refused unless its signer runs the peer's pod.
	Placement Placement
	// Services are the cluster's Service addresses (nil: none): a SYN to
	// one carries the token, and a SYN a client sent to one may arrive at
	// the local pod the Service's endpoints include (kube-proxy's
	// translation), see services.go.
	Services Services
	// Addresses maps peer addresses to pods for UDP and SCTP, which carry
	// no identity (nil: such peers are addresses only).
	Addresses Addresses
	// Flows receives one record per decision; nil discards them. Records
	// are written by a goroutine of the enforcer's, never on the packet
	// path; Close writes those still queued.
	Flows *flowlog.Writer
	// OnDecision, if set, is called once with every decision record the
	// enforcer makes (the same records Flows receives, whether or not
	// Flows is set), for metrics. It runs on the packet path, inside a
	// handshake packet's handling, possibly from several queue goroutines
	// at once: it must be quick, safe for concurrent use and never block.
	// It must not modify the record: the flow writer encodes the same one
	// later.
	OnDecision func(*flowlog.Record)
	// OnStage, if set, is called after every queued packet is decided,
	// with its handshake stage ("syn", "synack", "ack"; "new" for the
	// first packet of a non-TCP flow), whether it left the workload, and
	// how long the enforcer took to decide it (parse, tokens, policy,
	// rewrite; not the time it waited in the kernel's queue). It runs on
	// the packet path like OnDecision and must be as quick.
	OnStage func(stage string, outgoing bool, took time.Duration)
	// Log receives operational messages; nil discards them.
	Log *slog.Logger
	// HandshakeTimeout is how long a handshake that has not completed is
	// remembered (default 10s, longer than the first SYN retransmissions).
	HandshakeTimeout time.Duration
	// Layout says which queues to read and which mark bits to set: the
	// same value the supervisor's rules were installed with. The zero
	// value is marks.Layout's defaults.
	Layout marks.Layout
	// MaxPacket bounds the size of a handshake packet carrying a token
	// (default DefaultMaxPacket). A connection whose token would not fit is
	// refused with a flow record rather than sent and lost on the path.
	MaxPacket int
	// MaxHandshakes bounds the handshakes in progress per workload
	// (default DefaultMaxHandshakes).
	MaxHandshakes int
	// MaxNodeHandshakes bounds the handshakes in progress over all the
	// node's workloads (default DefaultMaxNodeHandshakes), so a flood
	// spread over many workloads cannot hold MaxHandshakes in each.
	MaxNodeHandshakes int
	// VerifyBudget bounds the signature verifications that SYNs with
	// unseen tokens may cost, per node and per source address.
	VerifyBudget VerifyBudget
	// IdentityNetworks are the address ranges where peers run an enforcer
	// (pod CIDRs; the lab's pod range). A SYN to a destination in them
	// carries the workload's token; a SYN to any other destination leaves
	// plain, so identities and labels never reach external hosts, and is
	// decided by the workload's egress policy on the destination address
	// (ipBlock and peer-less rules). nil means every destination, the
	// behaviour before this setting existed; `bireme enforce` requires it.
	IdentityNetworks []netip.Prefix
}

// Workload is one protected workload: its identity and its network
// namespace (a path such as /run/netns/NAME or /proc/PID/ns/net).
type Workload struct {
	Identity *identity.Identity
	NetNS    string
}

// Enforcer serves the queues of every protected workload on a node. Its
// methods are safe for concurrent use.
type Enforcer struct {
	cfg  Config
	log  *slog.Logger
	mask uint32 // cfg.Layout.Mask(), fixed by New: read for every marked packet

	mu        sync.Mutex
	workloads map[string]*workload // by netns path
	closed    bool

	flows *flowQueue

	// retiredQueueDrops are the kernel queue drops of detached
	// workloads (guarded by mu; queuestats.go).
	retiredQueueDrops QueueDrops

	handshakes *nodeHandshakes // over all workloads' connTables
	budget     *verifyBudget
	bulk       *bulkDrops
	foreign    *foreignConns // revoke.go

	stop    context.CancelFunc
	janitor sync.WaitGroup
}

// workload is the enforcer's state for one attached namespace.
type workload struct {
	netns  string
	marker *connMarker // nil in tests without a namespace
	id     atomic.Pointer[identity.Identity]
	conns  *connTable
	queues []*queue
	cancel context.CancelFunc
}

// New returns an Enforcer. It starts the goroutines that forget expired
// handshakes and write flow records; Close stops them.
func New(cfg Config) (*Enforcer, error) {
	if cfg.Tokens == nil {
		return nil, errors.New("enforcer: Config.Tokens is required")
	}
	if cfg.Policy == nil {
		return nil, errors.New("enforcer: Config.Policy is required")
	}
	if cfg.Placement == nil {
		return nil, errors.New("enforcer: Config.Placement is required")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.MaxPacket <= 0 {
		cfg.MaxPacket = DefaultMaxPacket
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = DefaultMaxHandshakes
	}
	if cfg.MaxNodeHandshakes <= 0 {
		cfg.MaxNodeHandshakes = DefaultMaxNodeHandshakes
	}
	cfg.VerifyBudget = cfg.VerifyBudget.withDefaults()
	cfg.Layout = cfg.Layout.WithDefaults()
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Enforcer{cfg: cfg, log: log, mask: cfg.Layout.Mask(), workloads: map[string]*workload{}, stop: cancel,
		handshakes: &nodeHandshakes{limit: cfg.MaxNodeHandshakes}, budget: newVerifyBudget(cfg.VerifyBudget), bulk: newBulkDrops(),
		foreign: newForeignConns(DefaultMaxForeignConns)}
	e.janitor.Add(1)
	go e.expireLoop(ctx)
	e.flows = newFlowQueue(ctx, cfg.Flows, log)
	return e, nil
}

// Attach opens the workload's queue(s) inside its namespace and starts
// serving them. Open the queues before the supervisor installs the rules
// that feed them, so no handshake waits on a queue nobody reads. Attaching
// a namespace that is already attached updates its identity.
//
// ctx bounds the attaching only: Attach gives up between its steps
// (conntrack socket, each queue) once ctx is done, and closes what it had
// opened. The queues live until Detach or Close, however long ctx lives.
func (e *Enforcer) Attach(ctx context.Context, w Workload) error {
	if w.Identity == nil || w.NetNS == "" {
		return errors.New("attach: workload needs an identity and a netns path")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errors.New("attach: enforcer closed")
	}
	if old, ok := e.workloads[w.NetNS]; ok {
		old.id.Store(w.Identity.Clone())
		return nil
	}
	wl, err := e.open(ctx, w)
	if err != nil {
		return fmt.Errorf("attach %s: %w", w.NetNS, err)
	}
	e.workloads[w.NetNS] = wl
	e.log.Info("attached", "netns", w.NetNS, "workload", w.Identity.String(), "queues", len(wl.queues))
	return nil
}

// open makes wl's conntrack marker and queues, checking ctx before each.
// On error it closes what it opened.
func (e *Enforcer) open(ctx context.Context, w Workload) (wl *workload, err error) {
	// The queues' context is the workload's own: Detach and Close end it.
	qctx, cancel := context.WithCancel(context.Background())
	wl = &workload{netns: w.NetNS, conns: newConnTable(e.cfg.MaxHandshakes, e.handshakes), cancel: cancel}
	wl.id.Store(w.Identity.Clone())
	// Not wl itself: a `return nil, err` below sets the named result to
	// nil before this runs (a namespace gone between the store and the
	// attach crashed the enforcer here).
	opened := wl
	defer func() {
		if err != nil {
			_ = opened.close()
		}
	}()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if wl.marker, err = newConnMarker(w.NetNS, e.mask); err != nil {
		return nil, err
	}
	for i := range e.cfg.Layout.Queues {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		num := e.cfg.Layout.QueueBase + i
		q, err := e.openQueue(qctx, wl, num)
		if err != nil {
			return nil, fmt.Errorf("queue %d: %w", num, err)
		}
		wl.queues = append(wl.queues, q)
	}
	return wl, nil
}

// Update replaces the identity of an attached workload (its labels
// changed). New handshakes carry the new identity; it is a no-op for a
// namespace that is not attached.
func (e *Enforcer) Update(w Workload) {
	if w.Identity == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if wl, ok := e.workloads[w.NetNS]; ok {
		wl.id.Store(w.Identity.Clone())
	}
}

// Detach stops serving the namespace's queues. With the supervisor's
// rules still in place its handshakes are then dropped (fail closed);
// authorized connections keep flowing on their conntrack mark.
func (e *Enforcer) Detach(netnsPath string) error {
	e.mu.Lock()
	wl, ok := e.workloads[netnsPath]
	delete(e.workloads, netnsPath)
	e.mu.Unlock()
	if !ok {
		return nil
	}
	e.retireQueueDrops(netnsPath) // the counters go with the queues
	e.foreign.forgetNetns(netnsPath)
	return wl.close()
}

func (wl *workload) close() error {
	wl.cancel()
	var errs []error
	for _, q := range wl.queues {
		if err := q.close(); err != nil {
			errs = append(errs, err)
		}
	}
	// The queues are closed: nothing adds handshakes any more, and the
	// node's count gives back what this workload held.
	wl.conns.forgetAll()
	if wl.marker != nil {
		if err := wl.marker.close(); err != nil {
			errs = append(errs, fmt.Errorf("close conntrack socket of %s: %w", wl.netns, err))
		}
	}
	return errors.Join(errs...)
}

// Close detaches every workload and stops the enforcer.
func (e *Enforcer) Close() error {
	e.mu.Lock()
	e.closed = true
	wls := e.workloads
	e.workloads = map[string]*workload{}
	e.mu.Unlock()
	var errs []error
	for _, wl := range wls {
		if err := wl.close(); err != nil {
			errs = append(errs, err)
		}
	}
	// The queues are closed: no more records come; the writer writes
	// what is queued and stops.
	e.stop()
	e.janitor.Wait()
	e.flows.wait()
	return errors.Join(errs...)
}

// expireLoop forgets handshakes that did not complete in time.
func (e *Enforcer) expireLoop(ctx context.Context) {
	defer e.janitor.Done()
	t := time.NewTicker(e.cfg.HandshakeTimeout / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			e.mu.Lock()
			wls := make([]*workload, 0, len(e.workloads))
			for _, wl := range e.workloads {
				wls = append(wls, wl)
			}
			e.mu.Unlock()
			for _, wl := range wls {
				e.expire(wl, now)
			}
		}
	}
}

// expire forgets wl's handshakes that did not complete by now and writes
// a deny record for each half-open one it served.
func (e *Enforcer) expire(wl *workload, now time.Time) {
	unfinished, held := wl.conns.expire(now)
	for _, p := range held {
		p.release(false)
	}
	if !e.wantsRecords() {
		return
	}
	for _, h := range unfinished {
		e.report(&flowlog.Record{
			Time:      now.UTC(),
			Node:      e.cfg.Node,
			Direction: policy.Ingress.String(),
			Stage:     stageACK,
			Protocol:  "TCP",
			LocalAddr: h.key.local.String(),
			PeerAddr:  h.key.remote.String(),
			Local:     wl.id.Load(),
			Peer:      h.peer,
			Verdict:   flowlog.Deny,
			Reason:    fmt.Sprintf("handshake not completed: no valid client proof within %s; the connection was never authorized", e.cfg.HandshakeTimeout),
		})
	}
}
