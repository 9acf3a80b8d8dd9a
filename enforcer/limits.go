package enforcer

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/policy"
)

// This file bounds what a flood of SYNs can cost a node: the CPU of the
// signature verifications that unseen tokens need (VerifyBudget), and the
// flow records of the refusals such a flood causes (bulkDrops).

// Defaults of VerifyBudget's fields. One verification of an unseen token
// is one ECDSA verification (two when its node certificate is new too),
// about 0.07 ms each on a 2-vCPU machine: the node-wide rate caps a flood
// at roughly 7-14 % of one CPU. Honest peers need far less: a workload's
// token is verified once per peer node per half token lifetime (2.5 min),
// so even 1,000 peer workloads cost about 7 verifications per second. The
// bursts cover every peer workload of a large node reconnecting at once
// (a restart, a rollout); the per-source burst covers a whole node's pods
// behind one NAT address (Kubernetes allows 110 pods per node by default).
const (
	DefaultVerifyNodeRate    = 1000 // per second
	DefaultVerifyNodeBurst   = 2000
	DefaultVerifySourceRate  = 100 // per second and source address
	DefaultVerifySourceBurst = 250
)

// maxBudgetSources bounds the per-source buckets remembered. Beyond it (a
// flood from spoofed addresses), a new source is charged to the node-wide
// bucket only, which still bounds the whole.
const maxBudgetSources = 65536

// VerifyBudget bounds the signature verifications that incoming SYNs with
// unseen tokens may cost, as token buckets: one for the node and one per
// source address. SYNs whose token is already verified, or remembered as
// invalid, cost a map lookup and are not charged. A SYN over budget is
// dropped (its sender retransmits). Zero fields take the defaults above.
type VerifyBudget struct {
	NodeRate    float64 // verifications per second, whole node
	NodeBurst   int
	SourceRate  float64 // verifications per second, per source address
	SourceBurst int
}

func (b VerifyBudget) withDefaults() VerifyBudget {
	if b.NodeRate <= 0 {
		b.NodeRate = DefaultVerifyNodeRate
	}
	if b.NodeBurst <= 0 {
		b.NodeBurst = DefaultVerifyNodeBurst
	}
	if b.SourceRate <= 0 {
		b.SourceRate = DefaultVerifySourceRate
	}
	if b.SourceBurst <= 0 {
		b.SourceBurst = DefaultVerifySourceBurst
	}
	return b
}

// tokenBucket holds up to burst tokens and gains rate per second.
type tokenBucket struct {
	level float64
	last  time.Time
}

// take removes one token if there is one.
func (b *tokenBucket) take(now time.Time, rate float64, burst int) bool {
	b.refill(now, rate, burst)
	if b.level < 1 {
		return false
	}
	b.level--
	return true
}

func (b *tokenBucket) refill(now time.Time, rate float64, burst int) {
	if b.last.IsZero() {
		b.level = float64(burst)
	} else if d := now.Sub(b.last); d > 0 {
		b.level = min(float64(burst), b.level+d.Seconds()*rate)
	}
	b.last = now
}

// verifyBudget is the node's VerifyBudget in use. Only SYNs with unseen
// tokens reach it, so one lock is no contention for honest traffic.
type verifyBudget struct {
	cfg     VerifyBudget
	mu      sync.Mutex
	node    tokenBucket
	sources map[netip.Addr]*tokenBucket
}

func newVerifyBudget(cfg VerifyBudget) *verifyBudget {
	return &verifyBudget{cfg: cfg.withDefaults(), sources: map[netip.Addr]*tokenBucket{}}
}

// take charges one verification to src and to the node. It returns
// bulkDropNone if both had room, else the bucket that had none. The
// source is charged first, so one flooding source runs out of its own
// budget and leaves the node's to the others.
func (b *verifyBudget) take(src netip.Addr, now time.Time) bulkDrop {
	b.mu.Lock()
	defer b.mu.Unlock()
	sb := b.sources[src]
	if sb == nil && len(b.sources) >= maxBudgetSources {
		b.forgetFullLocked(now)
	}
	if sb == nil && len(b.sources) < maxBudgetSources {
		sb = &tokenBucket{}
		b.sources[src] = sb
	}
	if sb != nil && !sb.take(now, b.cfg.SourceRate, b.cfg.SourceBurst) {
		return bulkDropSourceBudget
	}
	if !b.node.take(now, b.cfg.NodeRate, b.cfg.NodeBurst) {
		return bulkDropNodeBudget
	}
	return bulkDropNone
}

// forgetFullLocked forgets the sources whose bucket has refilled: a new
// bucket for them would be the same.
func (b *verifyBudget) forgetFullLocked(now time.Time) {
	for src, sb := range b.sources {
		sb.refill(now, b.cfg.SourceRate, b.cfg.SourceBurst)
		if sb.level >= float64(b.cfg.SourceBurst) {
			delete(b.sources, src)
		}
	}
}

// bulkDrop names a refusal an attacker can cause in bulk, whose flow
// records are therefore rate-limited and which is counted instead.
type bulkDrop int

const (
	bulkDropNone bulkDrop = iota - 1
	bulkDropBadChecksum
	bulkDropSourceBudget
	bulkDropNodeBudget
	// bulkDropKnownBadToken: a token refused without a signature
	// verification (remembered as forged, a certificate remembered as
	// bad, malformed bytes): free to send in bulk.
	bulkDropKnownBadToken
	numBulkDrops
)

// The flow records of each kind of bulk drop are a token bucket: a few at
// once (parallel probes of a misconfigured peer each get theirs), then
// bulkRecordRate a second; each record says how many went unrecorded.
const (
	bulkRecordRate  = 10
	bulkRecordBurst = 20
)

// bulkDrops counts bulk refusals and limits their records.
type bulkDrops struct {
	count      [numBulkDrops]atomic.Uint64
	unrecorded [numBulkDrops]atomic.Uint64

	mu      sync.Mutex
	rate    float64 // records per second and kind
	burst   int
	records [numBulkDrops]tokenBucket
}

func newBulkDrops() *bulkDrops {
	return &bulkDrops{rate: bulkRecordRate, burst: bulkRecordBurst}
}

// BulkDrops counts the refusals a flood can cause, whose flow records are
// limited to one per second per kind (each saying how many it stands
// for): the counts are complete, the flow log is not.
type BulkDrops struct {
	// BadChecksum: incoming packets with a wrong TCP checksum.
	BadChecksum uint64
	// OverSourceBudget, OverNodeBudget: SYNs with an unseen token
	// dropped because their source address, or the node, had used its
	// VerifyBudget.
	OverSourceBudget uint64
	OverNodeBudget   uint64
	// KnownBadToken: SYNs refused without a verification, their token or
	// certificate being remembered as invalid (or malformed).
	KnownBadToken uint64
}

// BulkDrops returns the counts of refusals whose records are rate-limited.
func (e *Enforcer) BulkDrops() BulkDrops {
	return BulkDrops{
		BadChecksum:      e.bulk.count[bulkDropBadChecksum].Load(),
		OverSourceBudget: e.bulk.count[bulkDropSourceBudget].Load(),
		OverNodeBudget:   e.bulk.count[bulkDropNodeBudget].Load(),
		KnownBadToken:    e.bulk.count[bulkDropKnownBadToken].Load(),
	}
}

// note counts one drop of kind and says whether it gets a flow record,
// with how many drops of that kind went unrecorded since the last one.
func (d *bulkDrops) note(kind bulkDrop, now time.Time) (record bool, unrecorded uint64) {
	d.count[kind].Add(1)
	d.mu.Lock()
	record = d.records[kind].take(now, d.rate, d.burst)
	d.mu.Unlock()
	if !record {
		d.unrecorded[kind].Add(1)
		return false, 0
	}
	return true, d.unrecorded[kind].Swap(0)
}

// recordBulk counts a bulk drop of p and, if the records of its kind are
// within their rate, writes the record that build returns. build runs only
// then: such drops come by the million, most unrecorded, and their
// reasons cost formatting.
func (q *queue) recordBulk(p *packet, kind bulkDrop, build func() outcome) {
	record, unrecorded := q.e.bulk.note(kind, time.Now())
	if !record {
		return
	}
	o := build()
	if unrecorded > 0 {
		o.reason += fmt.Sprintf(" (and %d more drops of this kind not recorded since the last record)", unrecorded)
	}
	q.record(p, o)
}

// recordTokenRejection records the refusal of a client token: always when
// its verification was paid for (the budget bounds how often), as a bulk
// drop when it cost nothing, since such SYNs can come by the million.
func (q *queue) recordTokenRejection(p *packet, verified bool, build func() outcome) {
	if verified {
		q.record(p, build())
		return
	}
	q.recordBulk(p, bulkDropKnownBadToken, build)
}

// affordsVerification says whether the SYN p, whose token for the local
// workload needs a signature verification, may have it: yes if the
// budget has room; otherwise p must be dropped, and is counted.
func (q *queue) affordsVerification(p *packet, local *identity.Identity) bool {
	over := q.e.budget.take(p.src, time.Now())
	if over == bulkDropNone {
		return true
	}
	q.recordBulk(p, over, func() outcome {
		scope := fmt.Sprintf("source %s (%g/s)", p.src, q.e.budget.cfg.SourceRate)
		if over == bulkDropNodeBudget {
			scope = fmt.Sprintf("node (%g/s)", q.e.budget.cfg.NodeRate)
		}
		return outcome{dir: policy.Ingress, stage: stageSYN, local: local,
			reason: "denied: over the token verification budget of the " + scope + "; client token not checked"}
	})
	return false
}

// checksumOK says whether the incoming packet p has a right TCP checksum;
// if not, it is counted and recorded (rate-limited) and must be dropped.
//
// Incoming packets are checked before anything in them is believed or
// rewritten: the kernel verifies TCP checksums only after the LOCAL_IN
// hook that queued the packet, and a rewrite (strip) computes a fresh,
// right checksum, so a packet corrupted on the way, or forged with a wrong
// checksum, would otherwise be laundered into one the kernel accepts.
// The bytes we get have a complete checksum: the sender's, or, for a
// packet from another namespace of this machine that left its checksum to
// the device (CHECKSUM_PARTIAL, kept across a veth), the one the kernel
// completes before copying it to us, since the queue does not ask for
// NFQA_CFG_F_GSO (nfnetlink_queue then calls skb_checksum_help). Were
// that flag ever set, partial checksums would arrive as they are and this
// check would have to honour NFQA_SKB_CSUMNOTREADY.
//
// Outgoing packets are not checked: they come from the workload's own
// stack on this node, with nothing in between to corrupt them, and a
// local stack legitimately leaves the checksum to the device.
func (q *queue) checksumOK(p *packet) bool {
	if p.tcpChecksumOK() {
		return true
	}
	stage := stageACK
	if p.flags&flagSYN != 0 {
		stage = stageSYN
		if p.flags&flagACK != 0 {
			stage = stageSYNACK
		}
	}
	dir := policy.Ingress
	if stage == stageSYNACK {
		dir = policy.Egress // the client's decision on the server's answer
	}
	q.recordBulk(p, bulkDropBadChecksum, func() outcome {
		return outcome{dir: dir, stage: stage, local: q.wl.id.Load(),
			reason: "denied: bad TCP checksum; packet not used"}
	})
	return false
}
