// Package flowlog writes and reads flow records: one JSON line per
// decision the enforcer makes, naming both identities, the verdict and why.
package flowlog

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/bireme/bireme/identity"
)

// Verdicts.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Record is one decision about one connection, as seen by one enforcer.
type Record struct {
	Time time.Time `json:"time"`
	// Node is the enforcer that decided.
	Node string `json:"node"`
	// Direction is "ingress" (Local is the server) or "egress" (Local is
	// the client), relative to the protected workload Local.
	Direction string `json:"direction"`
	// Stage is the packet the decision was made on: for TCP the
	// handshake packet, "syn", "synack" or "ack"; for UDP, SCTP, ICMP and
	// other protocols "new", the first packet of the flow.
	Stage     string `json:"stage"`
	Protocol  string `json:"protocol"`
	LocalAddr string `json:"localAddr"` // ip:port as seen by this node (ip alone for ICMP and other portless protocols)
	PeerAddr  string `json:"peerAddr"`  // ip:port as seen by this node (after any NAT)
	// Local is the protected workload; Peer the authenticated peer, nil
	// when the peer presented no identity (then only ipBlock rules apply).
	Local *identity.Identity `json:"local"`
	Peer  *identity.Identity `json:"peer,omitempty"`
	// Verdict is Allow or Deny.
	Verdict string `json:"verdict"`
	// Policy is "namespace/name" of the NetworkPolicy that decided, empty
	// when none did (unselected workload, or a token failure).
	Policy string `json:"policy,omitempty"`
	// SelectedBy lists the policies that selected Local in Direction when
	// policy decided ("namespace/name", sorted). On a policy denial these
	// are the policies that isolated Local and of which no rule allowed:
	// what a report counts the refusal against.
	SelectedBy []string `json:"selectedBy,omitempty"`
	// Tier is the policy tier that decided: "Admin", "NetworkPolicy" or
	// "Baseline" (ClusterNetworkPolicy tiers around the NetworkPolicies);
	// empty when no policy did.
	Tier string `json:"tier,omitempty"`
	// MatchedByAddress: the deciding rule matched the peer by its address
	// (an ipBlock or networks entry), not by its identity.
	MatchedByAddress bool `json:"matchedByAddress,omitempty"`
	// WouldDeny is set on an allowed connection that a policy in audit
	// mode (annotation bireme.io/enforcement: audit) would have denied.
	WouldDeny *WouldDeny `json:"wouldDeny,omitempty"`
	// TokenError is the typed token rejection reason (for example
	// "expired", "bad-proof"), empty when the token verified.
	TokenError string `json:"tokenError,omitempty"`
	// Reason explains the verdict in words.
	Reason string `json:"reason"`
}

// WouldDeny names the audit-mode policy and rule that would have denied a
// connection, and why. Rule is -1 when the policy would deny because it
// isolates the workload and no rule of it allows.
type WouldDeny struct {
	Tier     string `json:"tier,omitempty"`
	Policy   string `json:"policy"`
	Rule     int    `json:"rule"`
	RuleName string `json:"ruleName,omitempty"`
	Reason   string `json:"reason"`
}

// Writer appends records as JSON lines. It is safe for concurrent use.
type Writer struct {
	mu  sync.Mutex
	w   *bufio.Writer
	enc *json.Encoder
}

// NewWriter returns a Writer on w. Records are flushed after every write so
// that a reader tailing the file sees them at once.
func NewWriter(w io.Writer) *Writer {
	bw := bufio.NewWriter(w)
	return &Writer{w: bw, enc: json.NewEncoder(bw)}
}

// Write appends one record.
func (w *Writer) Write(r *Record) error { return w.WriteBatch([]*Record{r}) }

// WriteBatch appends records in order with one flush at the end, for a
// writer that collects records and writes them periodically.
func (w *Writer) WriteBatch(rs []*Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range rs {
		if err := w.enc.Encode(r); err != nil {
			return fmt.Errorf("encode flow record: %w", err)
		}
	}
	return w.w.Flush()
}

// Read decodes every record in r. A line that does not decode is an error
// naming its line number.
func Read(r io.Reader) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return out, fmt.Errorf("flow record line %d: %w", line, err)
		}
		out = append(out, rec)
	}
	return out, sc.Err()
}
