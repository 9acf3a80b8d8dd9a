package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/flowlog/flowmap"
	"github.com/bireme/bireme/flowlog/query"
)

// flowFilterFlags are the filter flags every `bireme flows` command shares.
type flowFilterFlags struct {
	verdicts, from, to, fromLabels, toLabels []string
	ports                                    []uint
	policies, reasons, nodes, directions     []string
	protocols, fields, handshakes            []string
	since, until                             string
}

func (o *flowFilterFlags) add(f *pflag.FlagSet) {
	f.StringSliceVar(&o.verdicts, "verdict", nil, "allow or deny (repeatable)")
	f.StringArrayVar(&o.from, "from", nil, "client: namespace/pod, namespace/ (any pod of it), or an address or CIDR (repeatable: any)")
	f.StringArrayVar(&o.to, "to", nil, "server: namespace/pod, namespace/, or an address or CIDR (repeatable: any)")
	f.StringArrayVar(&o.fromLabels, "from-label", nil, "client's pod labels match this selector, e.g. app=web,tier!=db (repeatable: any)")
	f.StringArrayVar(&o.toLabels, "to-label", nil, "server's pod labels match this selector (repeatable: any)")
	f.UintSliceVar(&o.ports, "port", nil, "server port (repeatable)")
	f.StringSliceVar(&o.policies, "policy", nil, "namespace/name of the policy that decided or selected (repeatable)")
	f.StringArrayVar(&o.reasons, "reason", nil, "text in the reason or token error, any case (repeatable: any)")
	f.StringSliceVar(&o.nodes, "node", nil, "enforcer node (repeatable)")
	f.StringSliceVar(&o.directions, "direction", nil, "ingress or egress, as the deciding enforcer saw it")
	f.StringSliceVar(&o.protocols, "protocol", nil, "TCP, UDP, SCTP, ICMP, ...")
	f.StringSliceVar(&o.handshakes, "handshake", nil, "two-message or three-message: the Bireme handshake the TCP decision was made in (fallback reasons: --field fallback=REASON)")
	f.StringArrayVar(&o.fields, "field", nil, "any top-level record field NAME=VALUE, e.g. tier=admin or stage=syn (repeatable: all must match)")
	f.StringVar(&o.since, "since", "", "records at or after: RFC 3339 time, or a duration before now (10m)")
	f.StringVar(&o.until, "until", "", "records before: RFC 3339 time, or a duration before now")
}

// filter builds the filter the flags describe.
func (o *flowFilterFlags) filter(now time.Time) (*query.Filter, error) {
	f := &query.Filter{Verdicts: o.verdicts, Policies: o.policies, Reasons: o.reasons, Nodes: o.nodes,
		Directions: o.directions, Protocols: o.protocols}
	for _, list := range []struct {
		in    []string
		out   *[]query.Endpoint
		parse func(string) (query.Endpoint, error)
	}{
		{o.from, &f.From, query.ParseEndpoint}, {o.to, &f.To, query.ParseEndpoint},
		{o.fromLabels, &f.FromLabels, query.ParseLabels}, {o.toLabels, &f.ToLabels, query.ParseLabels},
	} {
		for _, s := range list.in {
			e, err := list.parse(s)
			if err != nil {
				return nil, err
			}
			*list.out = append(*list.out, e)
		}
	}
	for _, p := range o.ports {
		if p == 0 || p > 65535 {
			return nil, fmt.Errorf("--port %d: want 1-65535", p)
		}
		f.Ports = append(f.Ports, uint16(p))
	}
	for _, s := range o.handshakes {
		h, err := query.ParseHandshake(s)
		if err != nil {
			return nil, fmt.Errorf("--handshake: %w", err)
		}
		f.Handshakes = append(f.Handshakes, h)
	}
	for _, s := range o.fields {
		fm, err := query.ParseField(s)
		if err != nil {
			return nil, err
		}
		f.Fields = append(f.Fields, fm)
	}
	var err error
	if o.since != "" {
		if f.Since, err = query.ParseTime(o.since, now); err != nil {
			return nil, fmt.Errorf("--since: %w", err)
		}
	}
	if o.until != "" {
		if f.Until, err = query.ParseTime(o.until, now); err != nil {
			return nil, fmt.Errorf("--until: %w", err)
		}
	}
	return f, nil
}

// readFlowEntries reads every record of files that passes f, ordered by
// time (records of several nodes interleave). A line that is not a record
// is reported on warn and skipped.
func readFlowEntries(files []string, f *query.Filter, warn io.Writer) ([]query.Entry, error) {
	var out []query.Entry
	for _, name := range files {
		file, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		err = flowlog.ScanLines(file, func(line int, b []byte) error {
			e, err := query.Decode(b)
			if err != nil {
				fmt.Fprintf(warn, "bireme: %s:%d: not a flow record, skipped: %v\n", name, line, err)
				return nil
			}
			if f.Match(&e) {
				out = append(out, e)
			}
			return nil
		})
		file.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Record.Time.Before(out[j].Record.Time) })
	return out, nil
}

// newFlowsCmd is `bireme flows`: search, follow, count, draw and verify
// the enforcers' flow records (package flowlog/query, flowlog/flowmap,
// flowlog's chain).
func newFlowsCmd() *cobra.Command {
	var (
		filt   flowFilterFlags
		output string
		follow bool
	)
	cmd := &cobra.Command{
		Use:   "flows FILE... [filters] [--output table|compact|json] [--follow]",
		Short: "Show, follow, count, map and verify flow records",
		Long: `flows prints the flow records of one or more enforcers' files (--flows of
enforce and agent; rotated files FILE.1, FILE.2 ... too) that pass the filters,
ordered by time: as a table, one compact line each, or the JSON lines as written.
With --follow it prints the records already there and then each one appended,
following the files across rotation, until interrupted.

Filters combine with AND; a repeated flag matches any of its values. FROM is
the client and TO the server of the connection, whichever enforcer recorded it.
--field matches any top-level field of the records, including ones this
version does not show in columns (those appear in the OTHER column).

Subcommands: top (counts by client, server and verdict), map (Graphviz DOT or
SVG of who talks to whom) and verify (the records' hash chain and keyed head).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			f, err := filt.filter(time.Now())
			if err != nil {
				return err
			}
			if follow && !cmd.Flags().Changed("output") {
				output = "compact"
			}
			p, err := query.NewPrinter(cmd.OutOrStdout(), output)
			if err != nil {
				return err
			}
			if follow {
				return followFlows(cmd.Context(), files, f, p, cmd.ErrOrStderr())
			}
			entries, err := readFlowEntries(files, f, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			for i := range entries {
				if err := p.Print(&entries[i]); err != nil {
					return err
				}
			}
			return p.Flush()
		},
	}
	filt.add(cmd.PersistentFlags())
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, compact or json (default compact with --follow)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing records as they are written, across rotation")
	cmd.AddCommand(newFlowsTopCmd(&filt), newFlowsMapCmd(&filt), newFlowsVerifyCmd())
	return cmd
}

// followFlows prints the records of files that pass f, as they come,
// until ctx ends.
func followFlows(ctx context.Context, files []string, f *query.Filter, p *query.Printer, warn io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs = make([]error, len(files))
	)
	for i, name := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = flowlog.Follow(ctx, name, 200*time.Millisecond, func(b []byte) error {
				e, err := query.Decode(b)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					fmt.Fprintf(warn, "bireme: %s: not a flow record, skipped: %v\n", name, err)
					return nil
				}
				if !f.Match(&e) {
					return nil
				}
				if err := p.Print(&e); err != nil {
					return err
				}
				return p.Flush()
			})
			if errs[i] != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

const groupHelp = "workload: each pod (namespace/pod) and address on its own; namespace: a namespace's pods together (namespace/)"

// newFlowsTopCmd is `bireme flows top`.
func newFlowsTopCmd(filt *flowFilterFlags) *cobra.Command {
	var (
		limit int
		group string
	)
	cmd := &cobra.Command{
		Use:   "top FILE... [filters] [--limit N] [--group workload|namespace]",
		Short: "Count flow records by client, server and verdict, the most first",
		Long: `top counts the records that pass the filters by client (namespace/pod, or the
address of a client with no identity), server and verdict, with the server
ports seen. Counts are decisions: a connection between two protected pods is
usually recorded by both enforcers, and each retransmitted denied SYN is one.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			g, err := query.ParseGrouping(group)
			if err != nil {
				return err
			}
			f, err := filt.filter(time.Now())
			if err != nil {
				return err
			}
			entries, err := readFlowEntries(files, f, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return query.WriteTop(cmd.OutOrStdout(), query.Top(entries, limit, g))
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 20, "lines shown; 0 all")
	cmd.Flags().StringVar(&group, "group", "workload", groupHelp)
	return cmd
}

// newFlowsMapCmd is `bireme flows map`.
func newFlowsMapCmd(filt *flowFilterFlags) *cobra.Command {
	var format, out, group string
	cmd := &cobra.Command{
		Use:   "map FILE... [filters] [--format svg|dot] [--out FILE] [--group workload|namespace]",
		Short: "Draw who talks to whom: allowed edges solid green, denied dashed red",
		Long: `map draws the records that pass the filters as a graph: a node per workload
(grouped by namespace) and per address with no identity, an edge per client,
server and verdict labelled with the server ports and the record count. --format
svg (the default) renders it here, with no other tool; --format dot writes
Graphviz DOT, for 'dot -Tsvg' or 'dot -Tpng' and Graphviz's layouts.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			write, ok := map[string]func(io.Writer, *flowmap.Graph) error{
				"svg": flowmap.WriteSVG, "dot": flowmap.WriteDOT,
			}[format]
			if !ok {
				return fmt.Errorf("--format %q: want svg or dot", format)
			}
			grouping, err := query.ParseGrouping(group)
			if err != nil {
				return err
			}
			f, err := filt.filter(time.Now())
			if err != nil {
				return err
			}
			entries, err := readFlowEntries(files, f, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			g := flowmap.Build(entries, grouping)
			if out == "" || out == "-" {
				return write(cmd.OutOrStdout(), g)
			}
			file, err := os.Create(out)
			if err != nil {
				return err
			}
			if err := write(file, g); err != nil {
				file.Close()
				return fmt.Errorf("write %s: %w", out, err)
			}
			return file.Close()
		},
	}
	cmd.Flags().StringVar(&format, "format", "svg", "svg or dot")
	cmd.Flags().StringVar(&out, "out", "", "file written; empty or - for stdout")
	cmd.Flags().StringVar(&group, "group", "workload", groupHelp)
	return cmd
}

// errNotIntact makes `flows verify` exit non-zero after its report.
var errNotIntact = errors.New("flow records not intact")

// newFlowsVerifyCmd is `bireme flows verify`.
func newFlowsVerifyCmd() *cobra.Command {
	var keyFile, headFile string
	cmd := &cobra.Command{
		Use:   "verify FILE... --key FILE [--head FILE]",
		Short: "Check that one node's flow files are whole: hash chain and keyed head",
		Long: `verify checks that the files (one enforcer's: the live file and any rotated
ones, in any order) form one unbroken hash chain, and that the live file's head
(FILE.head, or --head) verifies under the node's flow key (--flows-key of
enforce and agent) and names the last record. It prints "intact", or the first
record at fault and why: a record changed, removed, inserted or reordered, a
cut tail, a forged head. Without --key the head cannot be checked and the files
are not called intact. Exit status 1 unless intact.

Detected: any change to a record, removal, insertion or reordering of records,
records cut from the end of the live file (the head names a record that is
gone), records cut from the start of the live file, a rotated file cut short
(the next file's first record links to its last), a head forged or changed.
Not detected: see docs/observability.md (among others, a whole old head and
file put back together, whole rotated files removed from the oldest end, and
anything done by someone who holds the node's key).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			var key []byte
			if keyFile != "" {
				k, err := flowlog.LoadKey(keyFile)
				if err != nil {
					return err
				}
				key = k
			}
			// The head first, then the files: a live file's writer appends
			// records before it replaces the head, so files read after
			// the head hold at least the records it names.
			if headFile == "" {
				var heads []string
				for _, name := range files {
					if _, err := os.Stat(flowlog.HeadPath(name)); err == nil {
						heads = append(heads, flowlog.HeadPath(name))
					}
				}
				switch len(heads) {
				case 0:
				case 1:
					headFile = heads[0]
				default:
					return fmt.Errorf("several live files given (%v): verify one node's files at a time, or name the head with --head", heads)
				}
			}
			var head *flowlog.Head
			if headFile != "" {
				h, err := flowlog.ReadHead(headFile)
				if err != nil {
					return err
				}
				if h == nil {
					return fmt.Errorf("--head %s: no such file", headFile)
				}
				head = h
			}
			var cfs []flowlog.ChainFile
			for _, name := range files {
				b, err := os.ReadFile(name)
				if err != nil {
					return err
				}
				cfs = append(cfs, flowlog.ChainFile{Name: name, Data: b})
			}
			v := flowlog.Verify(cfs, head, key)
			w := cmd.OutOrStdout()
			for _, n := range v.Notes {
				fmt.Fprintln(w, "note:", n)
			}
			switch {
			case v.Broken != nil:
				fmt.Fprintln(w, "broken:", v.Broken)
				return errNotIntact
			case !v.Intact():
				fmt.Fprintf(w, "not verified: %d records, chain unbroken, but no keyed head vouches for its end\n", v.Records)
				return errNotIntact
			}
			fmt.Fprintf(w, "intact: %d records (%s to %s) in %d file(s)\n", v.Records,
				strconv.FormatUint(v.FirstSeq, 10), strconv.FormatUint(v.LastSeq, 10), len(v.Files))
			if v.Uncovered > 0 {
				fmt.Fprintf(w, "note: the last %d records were written after the head: not covered by it (a live file, or a writer that stopped without writing its head)\n", v.Uncovered)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "the node's flow key file (--flows-key of enforce/agent)")
	cmd.Flags().StringVar(&headFile, "head", "", "the head file (default FILE.head of the given file that has one)")
	return cmd
}
