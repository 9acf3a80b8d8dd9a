// Package flowlog writes and reads flow records: one JSON line per
// decision the enforcer makes, naming both identities, the verdict and why.
package flowlog

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/bireme/bireme/identity"
)

// Verdicts.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Handshakes: Record.Handshake.
const (
	TwoMessage   = "two-message"
	ThreeMessage = "three-message"
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
	// ByAddress: Peer was not proven but looked up by the peer's address
	// (the pod the API server says holds it), for the protocols that
	// carry no identity (UDP, SCTP). A pod able to send from another
	// pod's address passes for it there.
	ByAddress bool `json:"byAddress,omitempty"`
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
	// Handshake is the Bireme handshake the TCP decision was made in:
	// TwoMessage (a known peer node: the server decided at the SYN, the
	// client at the SYN-ACK, and no ACK was queued) or ThreeMessage.
	// Empty when no handshake verified (a token rejection, a peer without
	// an enforcer) and for other protocols.
	Handshake string `json:"handshake,omitempty"`
	// Fallback is why a two-message SYN went the three-message way
	// (tokens.FallbackReason: "unknown-key", "stale-timestamp", "restart",
	// "nat", ...; on the client, which is not told why,
	// "declined-by-server"). Empty otherwise.
	Fallback string `json:"fallback,omitempty"`
	// Tier is the policy tier that decided, when one did: "admin",
	// "networkpolicy" or "baseline" (the ClusterNetworkPolicy tiers around
	// the NetworkPolicies); empty when no policy did or the writer of the
	// record does not know tiers. Metrics label decisions with it.
	Tier string `json:"tier,omitempty"`

	// Seq numbers the records of a chain from 1: one writer's records, in
	// the order written, across file rotations and restarts (chain.go).
	Seq uint64 `json:"seq,omitempty"`
	// Prev is the hex SHA-256 of the previous record's line (its exact
	// bytes, without the newline); empty for the first record of a chain.
	Prev string `json:"prev,omitempty"`
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

// MaxLine bounds one record's line: records name two identities with
// their labels, a few kilobytes at most.
const MaxLine = 4 << 20

// Read decodes every record in r. A line that does not decode is an error
// naming its line number.
func Read(r io.Reader) ([]Record, error) {
	var out []Record
	err := ScanLines(r, func(line int, b []byte) error {
		rec, err := ParseLine(b)
		if err != nil {
			return fmt.Errorf("flow record line %d: %w", line, err)
		}
		out = append(out, rec)
		return nil
	})
	return out, err
}

// ScanLines calls fn with every non-empty line of r (without its newline)
// and its 1-based line number; the slice is valid only during the call.
func ScanLines(r io.Reader, fn func(line int, b []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), MaxLine)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		if err := fn(line, sc.Bytes()); err != nil {
			return err
		}
	}
	return sc.Err()
}

// ParseLine decodes one record line. It requires a JSON object with a
// verdict, the one field every record has.
func ParseLine(b []byte) (Record, error) {
	var rec Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return Record{}, err
	}
	if rec.Verdict == "" {
		return Record{}, fmt.Errorf("not a flow record: no verdict")
	}
	return rec, nil
}
