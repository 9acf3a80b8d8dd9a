// Package query selects, prints and counts flow records for `bireme
// flows`: a filter over the records' fields (verdict, client and server
// by name, namespace, labels or address, server port, policy, reason, time,
// and any other top-level field by name, so fields a newer writer adds can
// be selected without changing this package), table, compact and JSON
// output, and the counts of `flows top`. It reads no files: the command
// hands it lines.
package query

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
)

// Entry is one record as read: decoded, with its line and the top-level
// fields flowlog.Record does not declare (fields a newer writer adds).
type Entry struct {
	Record flowlog.Record
	Line   []byte         // the record's JSON line, as written
	Fields map[string]any // every top-level field of the line, by JSON name
}

// Decode reads one record line. The line is copied.
func Decode(line []byte) (Entry, error) {
	rec, err := flowlog.ParseLine(line)
	if err != nil {
		return Entry{}, err
	}
	var fields map[string]any
	if err := json.Unmarshal(line, &fields); err != nil {
		return Entry{}, err
	}
	return Entry{Record: rec, Line: append([]byte(nil), line...), Fields: fields}, nil
}

// Side is one end of a connection as a flow record sees it.
type Side struct {
	ID   *identity.Identity // nil when the end proved no identity
	Addr netip.AddrPort     // port 0 for portless protocols
}

// Name is the end's "namespace/pod", or its address when it has no
// identity.
func (s Side) Name() string {
	if s.ID != nil {
		return s.ID.Ref()
	}
	if s.Addr.IsValid() {
		return s.Addr.Addr().String()
	}
	return "?"
}

// Client and Server are the ends of the record's connection: the client
// opened it. For an ingress record the peer is the client; for egress the
// local workload is.
func Client(r *flowlog.Record) Side {
	if r.Direction == "egress" {
		return Side{r.Local, parseAddr(r.LocalAddr)}
	}
	return Side{r.Peer, parseAddr(r.PeerAddr)}
}

// Server is the end that accepted (or was asked to accept) the connection.
func Server(r *flowlog.Record) Side {
	if r.Direction == "egress" {
		return Side{r.Peer, parseAddr(r.PeerAddr)}
	}
	return Side{r.Local, parseAddr(r.LocalAddr)}
}

// parseAddr reads "ip:port" or a bare "ip".
func parseAddr(s string) netip.AddrPort {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 0)
	}
	return netip.AddrPort{}
}

// Endpoint matches one end of a connection. The zero Endpoint matches
// any end.
type Endpoint struct {
	Namespace string // "" any
	Pod       string // "" any pod of Namespace
	Prefix    netip.Prefix
	Labels    labels.Selector // on the pod's labels; nil any
}

// ParseEndpoint reads --from/--to: "namespace/pod", "namespace/" or
// "namespace/*" (any pod of the namespace), or an address or CIDR (which
// matches the end's address, identified or not).
func ParseEndpoint(s string) (Endpoint, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return Endpoint{Prefix: p.Masked()}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return Endpoint{Prefix: netip.PrefixFrom(a, a.BitLen())}, nil
	}
	ns, pod, ok := strings.Cut(s, "/")
	if !ok || ns == "" || strings.Contains(pod, "/") {
		return Endpoint{}, fmt.Errorf("endpoint %q: want namespace/pod, namespace/ or an address or CIDR", s)
	}
	if pod == "*" {
		pod = ""
	}
	return Endpoint{Namespace: ns, Pod: pod}, nil
}

// ParseLabels reads --from-label/--to-label: a Kubernetes label selector
// ("app=web,tier!=db", "env in (a,b)", "!legacy").
func ParseLabels(s string) (Endpoint, error) {
	sel, err := labels.Parse(s)
	if err != nil {
		return Endpoint{}, fmt.Errorf("label selector %q: %w", s, err)
	}
	return Endpoint{Labels: sel}, nil
}

// Matches reports whether the end s is e.
func (e Endpoint) Matches(s Side) bool {
	if e.Prefix.IsValid() && !(s.Addr.IsValid() && e.Prefix.Contains(s.Addr.Addr())) {
		return false
	}
	if e.Namespace != "" && (s.ID == nil || s.ID.Namespace != e.Namespace || (e.Pod != "" && s.ID.Pod != e.Pod)) {
		return false
	}
	if e.Labels != nil && (s.ID == nil || !e.Labels.Matches(labels.Set(s.ID.Labels))) {
		return false
	}
	return true
}

// Filter selects records. Each non-empty field must match; a list matches
// when any of its values does.
type Filter struct {
	Verdicts []string   // allow, deny
	From, To []Endpoint // the client, the server, by name or address
	// FromLabels, ToLabels: the client's, the server's pod labels.
	FromLabels, ToLabels []Endpoint
	Ports                []uint16  // the server's port
	Policies             []string  // "namespace/name": the deciding policy or one that selected
	Reasons              []string  // substrings of the reason or the token error, any case
	Since                time.Time // records at or after
	Until                time.Time // records before
	Nodes                []string
	Directions           []string // ingress, egress
	Protocols            []string // TCP, UDP, ... (any case)
	// Handshakes: the Bireme handshake the decision was made in,
	// flowlog.TwoMessage or flowlog.ThreeMessage (any case).
	Handshakes []string
	// Fields are top-level fields by JSON name, with the value as the
	// record's JSON holds it (strings bare: tier=admin, wouldDeny=true):
	// any field, including those this version does not know.
	Fields []FieldMatch
}

// FieldMatch is one --field NAME=VALUE.
type FieldMatch struct{ Name, Value string }

// ParseField reads NAME=VALUE.
func ParseField(s string) (FieldMatch, error) {
	n, v, ok := strings.Cut(s, "=")
	if !ok || n == "" {
		return FieldMatch{}, fmt.Errorf("field %q: want NAME=VALUE", s)
	}
	return FieldMatch{n, v}, nil
}

// Match reports whether e passes the filter.
func (f *Filter) Match(e *Entry) bool {
	r := &e.Record
	if len(f.Verdicts) > 0 && !anyEqualFold(f.Verdicts, r.Verdict) {
		return false
	}
	if len(f.Nodes) > 0 && !anyEqualFold(f.Nodes, r.Node) {
		return false
	}
	if len(f.Directions) > 0 && !anyEqualFold(f.Directions, r.Direction) {
		return false
	}
	if len(f.Protocols) > 0 && !anyEqualFold(f.Protocols, r.Protocol) {
		return false
	}
	if len(f.Handshakes) > 0 && !anyEqualFold(f.Handshakes, r.Handshake) {
		return false
	}
	if !f.Since.IsZero() && r.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !r.Time.Before(f.Until) {
		return false
	}
	client, server := Client(r), Server(r)
	for _, list := range [...]struct {
		es []Endpoint
		s  Side
	}{{f.From, client}, {f.FromLabels, client}, {f.To, server}, {f.ToLabels, server}} {
		if len(list.es) > 0 && !anyEndpoint(list.es, list.s) {
			return false
		}
	}
	if len(f.Ports) > 0 && !anyPort(f.Ports, server.Addr.Port()) {
		return false
	}
	if len(f.Policies) > 0 && !matchPolicy(f.Policies, r) {
		return false
	}
	if len(f.Reasons) > 0 && !matchReason(f.Reasons, r) {
		return false
	}
	for _, fm := range f.Fields {
		if v, ok := e.Fields[fm.Name]; !ok || FieldString(v) != fm.Value {
			return false
		}
	}
	return true
}

// FieldString renders a decoded JSON value as a filter compares it and
// the outputs show it: strings bare, anything else as JSON.
func FieldString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	default:
		b, _ := json.Marshal(x)
		return string(b)
	}
}

func anyEqualFold(want []string, got string) bool {
	for _, w := range want {
		if strings.EqualFold(w, got) {
			return true
		}
	}
	return false
}

func anyEndpoint(es []Endpoint, s Side) bool {
	for _, e := range es {
		if e.Matches(s) {
			return true
		}
	}
	return false
}

func anyPort(ps []uint16, p uint16) bool {
	for _, w := range ps {
		if w == p {
			return true
		}
	}
	return false
}

func matchPolicy(want []string, r *flowlog.Record) bool {
	for _, w := range want {
		if r.Policy == w {
			return true
		}
		for _, s := range r.SelectedBy {
			if s == w {
				return true
			}
		}
	}
	return false
}

func matchReason(want []string, r *flowlog.Record) bool {
	text := strings.ToLower(r.Reason + "\n" + r.TokenError)
	for _, w := range want {
		if strings.Contains(text, strings.ToLower(w)) {
			return true
		}
	}
	return false
}

// ParseHandshake reads --handshake: "two-message" or "three-message"
// ("2" and "3" for short).
func ParseHandshake(s string) (string, error) {
	switch strings.ToLower(s) {
	case flowlog.TwoMessage, "2":
		return flowlog.TwoMessage, nil
	case flowlog.ThreeMessage, "3":
		return flowlog.ThreeMessage, nil
	}
	return "", fmt.Errorf("handshake %q: want %s or %s", s, flowlog.TwoMessage, flowlog.ThreeMessage)
}

// ParseTime reads --since/--until: an RFC 3339 time, or a duration before
// now ("10m", "2h").
func ParseTime(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("time %q: want RFC 3339 (2006-01-02T15:04:05Z) or a duration before now (10m)", s)
}
