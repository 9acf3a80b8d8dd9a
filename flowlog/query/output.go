package query

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// known are the JSON fields the table and compact outputs show in columns
// of their own (or never show: the chain and the identities' details);
// any other non-empty field is shown as NAME=VALUE, so fields a newer
// writer adds (a policy tier, an audit outcome) appear without a change
// here.
var known = map[string]bool{
	"time": true, "node": true, "direction": true, "stage": true, "protocol": true,
	"localAddr": true, "peerAddr": true, "local": true, "peer": true, "verdict": true,
	"policy": true, "selectedBy": true, "tokenError": true, "reason": true,
	"seq": true, "prev": true,
}

// Extras lists e's other non-empty top-level fields as NAME=VALUE, by name.
func Extras(e *Entry) []string {
	var out []string
	for k, v := range e.Fields {
		if known[k] || v == nil || v == "" || v == false {
			continue
		}
		out = append(out, k+"="+FieldString(v))
	}
	sort.Strings(out)
	return out
}

// Printer writes entries in one of the outputs: "table", "compact" or
// "json" (the record lines as written).
type Printer struct {
	w      io.Writer
	format string
	tw     *tabwriter.Writer
	header bool
}

// Formats are the outputs a Printer knows.
var Formats = []string{"table", "compact", "json"}

// NewPrinter returns a Printer of format on w.
func NewPrinter(w io.Writer, format string) (*Printer, error) {
	p := &Printer{w: w, format: format}
	switch format {
	case "table":
		p.tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	case "compact", "json":
	default:
		return nil, fmt.Errorf("output %q: want %s", format, strings.Join(Formats, ", "))
	}
	return p, nil
}

// Print writes one entry. A table is aligned over what was printed before
// the next Flush.
func (p *Printer) Print(e *Entry) error {
	r := &e.Record
	switch p.format {
	case "json":
		_, err := fmt.Fprintf(p.w, "%s\n", e.Line)
		return err
	case "compact":
		_, err := fmt.Fprintln(p.w, Compact(e))
		return err
	}
	if !p.header {
		p.header = true
		fmt.Fprintln(p.tw, "TIME\tNODE\tDIR\tSTAGE\tFROM\tTO\tPORT\tPROTO\tVERDICT\tPOLICY\tREASON\tOTHER")
	}
	server := Server(r)
	reason := r.Reason
	if r.TokenError != "" {
		reason = "token " + r.TokenError + ": " + reason
	}
	_, err := fmt.Fprintf(p.tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
		r.Time.UTC().Format("2006-01-02T15:04:05.000Z"), dash(r.Node), dash(r.Direction), dash(r.Stage),
		Client(r).Name(), server.Name(), port(server.Addr.Port()), dash(r.Protocol), r.Verdict,
		dash(r.Policy), dash(oneLine(reason)), dash(strings.Join(Extras(e), " ")))
	return err
}

// Flush writes out a table printed so far (a no-op for the other formats).
func (p *Printer) Flush() error {
	if p.tw == nil {
		return nil
	}
	return p.tw.Flush()
}

// Compact renders e on one line, as `hubble observe` does:
// time node: client -> server:port/proto stage VERDICT (policy) reason [other].
func Compact(e *Entry) string {
	r := &e.Record
	server := Server(r)
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %s -> %s", r.Time.UTC().Format(time.StampMilli), r.Node, Client(r).Name(), server.Name())
	if p := server.Addr.Port(); p != 0 {
		b.WriteString(":" + strconv.Itoa(int(p)))
	}
	fmt.Fprintf(&b, "/%s %s %s", r.Protocol, r.Stage, strings.ToUpper(r.Verdict))
	if r.Policy != "" {
		b.WriteString(" by " + r.Policy)
	}
	if r.TokenError != "" {
		b.WriteString(" token " + r.TokenError)
	}
	if r.Reason != "" {
		b.WriteString(": " + oneLine(r.Reason))
	}
	if x := Extras(e); len(x) > 0 {
		b.WriteString(" [" + strings.Join(x, " ") + "]")
	}
	return b.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func port(p uint16) string {
	if p == 0 {
		return "-"
	}
	return strconv.Itoa(int(p))
}

// oneLine keeps a table row on one line whatever a reason holds.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}

// PairCount is one line of `flows top`: the records from one client to
// one server with one verdict.
type PairCount struct {
	From, To string
	Verdict  string
	Count    int
	Ports    []uint16 // the server ports seen, ascending
}

// Grouping names the ends that Top counts together.
type Grouping func(Side) string

// ByWorkload counts each workload ("namespace/pod") and each address on
// its own.
func ByWorkload(s Side) string { return s.Name() }

// ByNamespace counts the workloads of a namespace together ("namespace/"),
// and each address on its own.
func ByNamespace(s Side) string {
	if s.ID != nil {
		return s.ID.Namespace + "/"
	}
	return s.Name()
}

// ParseGrouping reads --group: "workload" or "namespace".
func ParseGrouping(s string) (Grouping, error) {
	switch s {
	case "workload", "pod", "":
		return ByWorkload, nil
	case "namespace":
		return ByNamespace, nil
	}
	return nil, fmt.Errorf("group %q: want workload or namespace", s)
}

// Top counts entries by client, server and verdict, the ends named by
// group (nil: ByWorkload), the largest counts first (ties by name). limit
// > 0 keeps the first limit.
func Top(entries []Entry, limit int, group Grouping) []PairCount {
	if group == nil {
		group = ByWorkload
	}
	type key struct{ from, to, verdict string }
	counts := map[key]*PairCount{}
	ports := map[key]map[uint16]bool{}
	for i := range entries {
		r := &entries[i].Record
		server := Server(r)
		k := key{group(Client(r)), group(server), r.Verdict}
		pc := counts[k]
		if pc == nil {
			pc = &PairCount{From: k.from, To: k.to, Verdict: k.verdict}
			counts[k] = pc
			ports[k] = map[uint16]bool{}
		}
		pc.Count++
		if p := server.Addr.Port(); p != 0 && !ports[k][p] {
			ports[k][p] = true
			pc.Ports = append(pc.Ports, p)
		}
	}
	out := make([]PairCount, 0, len(counts))
	for _, pc := range counts {
		sort.Slice(pc.Ports, func(i, j int) bool { return pc.Ports[i] < pc.Ports[j] })
		out = append(out, *pc)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		if a.From != b.From {
			return a.From < b.From
		}
		if a.To != b.To {
			return a.To < b.To
		}
		return a.Verdict < b.Verdict
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// WriteTop writes counts as a table.
func WriteTop(w io.Writer, counts []PairCount) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COUNT\tFROM\tTO\tVERDICT\tPORTS")
	for _, c := range counts {
		ps := make([]string, len(c.Ports))
		for i, p := range c.Ports {
			ps[i] = strconv.Itoa(int(p))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", c.Count, c.From, c.To, c.Verdict, dash(strings.Join(ps, ",")))
	}
	return tw.Flush()
}
