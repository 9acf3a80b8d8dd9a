package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bireme/bireme/flowlog"
)

// Metrics are the node's Prometheus metrics. They live in the registry the
// caller passes in, never in the global default one, so that two agents in
// one process (tests) do not collide.
type Metrics struct {
	reg          prometheus.Registerer
	decisions    *prometheus.CounterVec
	stageSeconds *prometheus.HistogramVec
	// stageObservers are stageSeconds' series, resolved once: [stage][outgoing].
	stageObservers  [len(stages)][2]prometheus.Observer
	tokenFailures   *prometheus.CounterVec
	workloads       prometheus.Gauge
	reconcileErrors prometheus.Counter
}

// Reason labels of bireme_decisions_total. A flow record's Reason is a
// sentence naming policies and pods; a metric label must have few values, so
// it is reduced to one of these (or to the token rejection reason).
const (
	reasonPolicyRule  = "policy-rule"    // a policy rule allowed
	reasonNotSelected = "not-selected"   // no policy selects the workload
	reasonNoRule      = "no-rule-allows" // selected, and no rule allows
)

// stages are the handshake stages of bireme_handshake_stage_seconds, as
// the enforcer names them (enforcer.Config.OnStage).
var stages = [...]string{"syn", "synack", "ack", "new"}

// Tier labels of bireme_decisions_total when a record names none.
const (
	tierNetworkPolicy = "networkpolicy" // a NetworkPolicy decided or selected, and the record has no tier
	tierNone          = "none"          // no policy decided: unselected workload, or a token failure
)

// EnforcerStats are read from the enforcer at every scrape; a nil field
// leaves its metric out. [NodeDatapath.Stats] gives them.
type EnforcerStats struct {
	HandshakesInFlight func() float64 // bireme_handshakes_in_flight
	FlowRecordsDropped func() float64 // bireme_flow_records_dropped_total
	// BulkDrops, by kind: bireme_bulk_drops_total{kind}.
	BulkDrops map[string]func() float64
	// QueueDrops, by reason (queue-full, socket-full): packets the kernel
	// dropped at the enforcer's queues, bireme_queue_drops_total{reason}.
	QueueDrops map[string]func() float64
}

// NewMetrics registers the agent's metrics in reg. The enforcer's own
// gauges are added by [Metrics.RegisterEnforcer] once the enforcer exists
// (it is built with [Metrics.Observe] as its decision callback, so the
// metrics come first).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		reg: reg,
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bireme_decisions_total",
			Help: "Handshake decisions, by verdict (allow, deny), direction (ingress, egress), reason (policy-rule, not-selected, no-rule-allows, or the token rejection reason) and tier (the flow record's policy tier; networkpolicy when a policy decided and the record names no tier; none when no policy decided).",
		}, []string{"verdict", "direction", "reason", "tier"}),
		stageSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "bireme_handshake_stage_seconds",
			Help: "Time the enforcer took to decide one queued packet (parse, token signing or verification, policy, rewrite; not the wait in the kernel queue), by handshake stage (syn, synack, ack; new: the first packet of a non-TCP flow) and direction (ingress: arriving at the workload, egress: leaving it).",
			// 4 µs to 16 ms: a cached decision takes microseconds, a
			// signature verification tens to hundreds.
			Buckets: prometheus.ExponentialBuckets(4e-6, 2, 13),
		}, []string{"stage", "direction"}),
		tokenFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bireme_token_failures_total",
			Help: "Peer tokens or proofs rejected, by reason (malformed, expired, unknown-ca, bad-signature, replayed-nonce, bad-proof, ...).",
		}, []string{"reason"}),
		workloads: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bireme_workloads_protected",
			Help: "Workloads whose namespace has Bireme rules and an enforcer queue.",
		}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bireme_reconcile_errors_total",
			Help: "Failures to protect, update or release a workload (retried at the next poll).",
		}),
	}
	if err := m.register(m.decisions, m.stageSeconds, m.tokenFailures, m.workloads, m.reconcileErrors); err != nil {
		return nil, err
	}
	for i, stage := range stages {
		m.stageObservers[i][0] = m.stageSeconds.WithLabelValues(stage, "ingress")
		m.stageObservers[i][1] = m.stageSeconds.WithLabelValues(stage, "egress")
	}
	return m, nil
}

// RegisterEnforcer adds the enforcer's gauges, read at every scrape.
func (m *Metrics) RegisterEnforcer(stats EnforcerStats) error {
	var cs []prometheus.Collector
	if stats.HandshakesInFlight != nil {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bireme_handshakes_in_flight",
			Help: "Handshake states the enforcer holds: handshakes in progress, and handshakes completed less than the handshake timeout (10s) ago.",
		}, stats.HandshakesInFlight))
	}
	if stats.FlowRecordsDropped != nil {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "bireme_flow_records_dropped_total",
			Help: "Flow records dropped because the flow output fell behind (the packet path never waits for it); non-zero means the flow log is incomplete.",
		}, stats.FlowRecordsDropped))
	}
	for kind, count := range stats.BulkDrops {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "bireme_bulk_drops_total",
			Help:        "Packets dropped for reasons a flood can cause, whose flow records are rate-limited: bad-checksum, over-source-budget and over-node-budget (SYNs with a new token over the verification budget), known-bad-token (a token refused from memory).",
			ConstLabels: prometheus.Labels{"kind": kind},
		}, count))
	}
	for reason, count := range stats.QueueDrops {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "bireme_queue_drops_total",
			Help:        "Packets the kernel dropped at the enforcer's NFQUEUE queues before the enforcer saw them (fail closed: the sender retransmits), by reason: queue-full (the queue held its maximum), socket-full (the netlink socket's buffer was full).",
			ConstLabels: prometheus.Labels{"reason": reason},
		}, count))
	}
	return m.register(cs...)
}

func (m *Metrics) register(cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := m.reg.Register(c); err != nil {
			return fmt.Errorf("register metric: %w", err)
		}
	}
	return nil
}

// Observe counts one decision. It is the enforcer's decision callback
// (enforcer.Config.OnDecision): it runs on the packet path, from several
// queue goroutines at once, and only increments counters.
func (m *Metrics) Observe(r *flowlog.Record) {
	reason := r.TokenError
	switch {
	case reason != "":
		m.tokenFailures.WithLabelValues(reason).Inc()
	case r.Policy != "":
		reason = reasonPolicyRule
	case r.Verdict == flowlog.Allow:
		reason = reasonNotSelected
	default:
		reason = reasonNoRule
	}
	tier := r.Tier
	if tier == "" {
		tier = tierNone
		if r.Policy != "" || len(r.SelectedBy) > 0 {
			tier = tierNetworkPolicy
		}
	}
	m.decisions.WithLabelValues(r.Verdict, r.Direction, reason, tier).Inc()
}

// ObserveStage records how long the enforcer took to decide one packet of
// a handshake stage. It is the enforcer's stage callback
// (enforcer.Config.OnStage): on the packet path, lock-free.
func (m *Metrics) ObserveStage(stage string, outgoing bool, took time.Duration) {
	dir := 0
	if outgoing {
		dir = 1
	}
	for i, s := range stages {
		if s == stage {
			m.stageObservers[i][dir].Observe(took.Seconds())
			return
		}
	}
}

// ServeMetrics serves reg at /metrics, and the probes /healthz (the process
// answers) and /readyz (health is ready), on addr until ctx ends. It returns
// once the listener is open (so a bad address is reported at start) and the
// returned channel yields the server's final error.
func ServeMetrics(ctx context.Context, addr string, reg prometheus.Gatherer, health Readiness) (<-chan error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", livez)
	mux.HandleFunc("/readyz", readyz(health))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	return done, nil
}
