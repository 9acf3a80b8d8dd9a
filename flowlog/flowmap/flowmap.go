// Package flowmap draws who talks to whom from flow records, for `bireme
// flows map`: workloads (grouped by namespace) and unidentified addresses
// as nodes, one edge per client, server and verdict with its count and
// ports, allowed edges solid green and denied ones dashed red. It writes
// Graphviz DOT (for `dot -Tsvg`, `dot -Tpng`, ...) and renders SVG itself
// with a circular layout, so a map needs no Graphviz installed.
package flowmap

import (
	"fmt"
	"html"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/flowlog/query"
)

// Node is a workload ("namespace/pod") or an address with no identity.
type Node struct {
	Name      string
	Namespace string // "" for an address
	Label     string // the pod name, or the address
}

// Edge is every record from one client to one server with one verdict.
type Edge struct {
	From, To string
	Verdict  string
	Count    int
	Ports    []uint16
}

// Graph is the map: nodes by namespace then name, edges by ends then
// verdict.
type Graph struct {
	Nodes []Node
	Edges []Edge
}

// Build makes the map of entries, its nodes the ends as group names them
// (nil: each workload; query.ByNamespace: a node per namespace).
func Build(entries []query.Entry, group query.Grouping) *Graph {
	g := &Graph{}
	seen := map[string]bool{}
	add := func(name string) {
		if seen[name] {
			return
		}
		seen[name] = true
		n := Node{Name: name, Label: name}
		if ns, pod, ok := strings.Cut(name, "/"); ok {
			n.Namespace, n.Label = ns, pod
			if pod == "" {
				n.Label = ns // a whole namespace
			}
		}
		g.Nodes = append(g.Nodes, n)
	}
	for _, pc := range query.Top(entries, 0, group) {
		add(pc.From)
		add(pc.To)
		g.Edges = append(g.Edges, Edge{From: pc.From, To: pc.To, Verdict: pc.Verdict, Count: pc.Count, Ports: pc.Ports})
	}
	sort.Slice(g.Nodes, func(i, j int) bool {
		a, b := g.Nodes[i], g.Nodes[j]
		if (a.Namespace == "") != (b.Namespace == "") {
			return a.Namespace != "" // workloads first, addresses last
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	sort.Slice(g.Edges, func(i, j int) bool {
		a, b := g.Edges[i], g.Edges[j]
		if a.From != b.From {
			return a.From < b.From
		}
		if a.To != b.To {
			return a.To < b.To
		}
		return a.Verdict < b.Verdict
	})
	return g
}

// Colours of the edges.
const (
	allowColour = "#2e7d32"
	denyColour  = "#c62828"
	otherColour = "#616161"
)

func colour(verdict string) string {
	switch verdict {
	case flowlog.Allow:
		return allowColour
	case flowlog.Deny:
		return denyColour
	}
	return otherColour
}

// label is an edge's text: its ports and count, "80,443 ×12".
func (e Edge) label() string {
	ps := make([]string, len(e.Ports))
	for i, p := range e.Ports {
		ps[i] = strconv.Itoa(int(p))
	}
	s := strings.Join(ps, ",")
	if s != "" {
		s += " "
	}
	return s + "×" + strconv.Itoa(e.Count)
}

// dotQuote quotes s as a DOT string.
func dotQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s) + `"`
}

// WriteDOT writes g as a Graphviz digraph: a cluster per namespace,
// addresses as ellipses, allowed edges solid green, denied edges dashed red.
func WriteDOT(w io.Writer, g *Graph) error {
	var b strings.Builder
	b.WriteString("digraph flows {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", fontsize=10];\n")
	for i := 0; i < len(g.Nodes); {
		ns := g.Nodes[i].Namespace
		j := i
		for j < len(g.Nodes) && g.Nodes[j].Namespace == ns {
			j++
		}
		indent := "  "
		if ns != "" {
			fmt.Fprintf(&b, "  subgraph %s {\n    label=%s;\n    style=dashed;\n", dotQuote("cluster_"+ns), dotQuote(ns))
			indent = "    "
		}
		for _, n := range g.Nodes[i:j] {
			shape := ""
			if ns == "" {
				shape = ", shape=ellipse"
			}
			fmt.Fprintf(&b, "%s%s [label=%s%s];\n", indent, dotQuote(n.Name), dotQuote(n.Label), shape)
		}
		if ns != "" {
			b.WriteString("  }\n")
		}
		i = j
	}
	for _, e := range g.Edges {
		style := ""
		if e.Verdict != flowlog.Allow {
			style = ", style=dashed"
		}
		fmt.Fprintf(&b, "  %s -> %s [color=%s, fontcolor=%s, label=%s%s];\n",
			dotQuote(e.From), dotQuote(e.To), dotQuote(colour(e.Verdict)), dotQuote(colour(e.Verdict)), dotQuote(e.Verdict+" "+e.label()), style)
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// SVG layout sizes, in pixels.
const (
	charWidth  = 7.2 // of the 12px font, roughly
	nodeHeight = 26
	margin     = 40
)

type point struct{ x, y float64 }

// WriteSVG renders g as a standalone SVG: the nodes on a circle (a
// namespace's workloads side by side), each edge a straight arrow from
// client to server, allowed solid green, denied dashed red, labelled
// with its verdict, ports and count. Opposite or parallel edges between
// two nodes are drawn apart so that none hides another.
func WriteSVG(w io.Writer, g *Graph) error {
	n := len(g.Nodes)
	maxLabel := 0
	for _, nd := range g.Nodes {
		maxLabel = max(maxLabel, len(nd.Label)+len(nd.Namespace)+1)
	}
	half := float64(maxLabel)*charWidth/2 + 10
	radius := math.Max(120, float64(n)*(nodeHeight+30)/(2*math.Pi))
	size := 2*(radius+half) + 2*margin
	centre := point{size / 2, size/2 + 20}
	pos := map[string]point{}
	width := map[string]float64{}
	for i, nd := range g.Nodes {
		a := 2*math.Pi*float64(i)/float64(max(n, 1)) - math.Pi/2
		if n == 1 {
			pos[nd.Name] = centre
		} else {
			pos[nd.Name] = point{centre.x + radius*math.Cos(a), centre.y + radius*math.Sin(a)}
		}
		width[nd.Name] = float64(len(nodeText(nd)))*charWidth + 16
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="Helvetica, Arial, sans-serif" font-size="12">`+"\n",
		size, size+20, size, size+20)
	b.WriteString(`<defs>`)
	for _, c := range []string{allowColour, denyColour, otherColour} {
		fmt.Fprintf(&b, `<marker id="arrow%s" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="%s"/></marker>`, c[1:], c)
	}
	b.WriteString("</defs>\n")
	b.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
	fmt.Fprintf(&b, `<text x="10" y="18"><tspan fill="%s">━ allowed</tspan>  <tspan fill="%s">╍ denied</tspan>  (ports ×records)</text>`+"\n", allowColour, denyColour)
	// Parallel edges between one pair of nodes get offsets of their own.
	type pair struct{ a, b string }
	lanes := map[pair]int{}
	for _, e := range g.Edges {
		p := pair{min(e.From, e.To), max(e.From, e.To)}
		lane := lanes[p]
		lanes[p]++
		from, to := pos[e.From], pos[e.To]
		c := colour(e.Verdict)
		dash := ""
		if e.Verdict != flowlog.Allow {
			dash = ` stroke-dasharray="6,4"`
		}
		label := html.EscapeString(e.Verdict + " " + e.label())
		if e.From == e.To {
			// A workload talking to itself: a loop above its box.
			fmt.Fprintf(&b, `<path d="M%.1f,%.1f c-30,-50 30,-50 10,0" fill="none" stroke="%s" stroke-width="1.5"%s marker-end="url(#arrow%s)"/>`+"\n",
				from.x-5, from.y-nodeHeight/2, c, dash, c[1:])
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="%s" text-anchor="middle" font-size="10">%s</text>`+"\n", from.x, from.y-nodeHeight/2-42-float64(lane)*12, c, label)
			continue
		}
		// Shift the edge sideways by its lane so parallel edges separate.
		dx, dy := to.x-from.x, to.y-from.y
		l := math.Hypot(dx, dy)
		nx, ny := -dy/l, dx/l
		if e.From > e.To {
			nx, ny = -nx, -ny // the same side for both directions of a pair
		}
		off := (float64(lane) - 0.5) * 8
		from = point{from.x + nx*off, from.y + ny*off}
		to = point{to.x + nx*off, to.y + ny*off}
		start := boxEdge(from, to, width[e.From])
		end := boxEdge(to, from, width[e.To])
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5"%s marker-end="url(#arrow%s)"><title>%s → %s: %s</title></line>`+"\n",
			start.x, start.y, end.x, end.y, c, dash, c[1:], html.EscapeString(e.From), html.EscapeString(e.To), label)
		mid := point{(start.x+end.x)/2 + nx*8*sign(off), (start.y+end.y)/2 + ny*8*sign(off)}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="%s" text-anchor="middle" font-size="10">%s</text>`+"\n", mid.x, mid.y+3, c, label)
	}
	for _, nd := range g.Nodes {
		p, wd := pos[nd.Name], width[nd.Name]
		rx := "6"
		fill := "#e3f2fd"
		if nd.Namespace == "" {
			rx, fill = fmt.Sprintf("%.0f", nodeHeight/2.0), "#f5f5f5"
		}
		fmt.Fprintf(&b, `<g><title>%s</title><rect x="%.1f" y="%.1f" width="%.1f" height="%d" rx="%s" fill="%s" stroke="#37474f"/><text x="%.1f" y="%.1f" text-anchor="middle">%s</text></g>`+"\n",
			html.EscapeString(nd.Name), p.x-wd/2, p.y-nodeHeight/2, wd, nodeHeight, rx, fill, p.x, p.y+4, html.EscapeString(nodeText(nd)))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// nodeText is what a node's box says: "namespace/pod" or the address.
func nodeText(n Node) string { return n.Name }

func sign(f float64) float64 {
	if f < 0 {
		return -1
	}
	return 1
}

// boxEdge is where the segment from the centre c of a box of width w
// (and nodeHeight) towards p leaves the box.
func boxEdge(c, p point, w float64) point {
	dx, dy := p.x-c.x, p.y-c.y
	if dx == 0 && dy == 0 {
		return c
	}
	tx, ty := math.Inf(1), math.Inf(1)
	if dx != 0 {
		tx = (w / 2) / math.Abs(dx)
	}
	if dy != 0 {
		ty = (nodeHeight / 2.0) / math.Abs(dy)
	}
	t := math.Min(math.Min(tx, ty), 1)
	return point{c.x + dx*t, c.y + dy*t}
}
