package flowmap

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/flowlog/query"
	"github.com/bireme/bireme/identity"
)

func entry(t *testing.T, local, peer *identity.Identity, dir, peerAddr, verdict string) query.Entry {
	b, err := json.Marshal(&flowlog.Record{Time: time.Unix(1, 0), Node: "n", Direction: dir, Protocol: "TCP",
		LocalAddr: "198.18.0.2:80", PeerAddr: peerAddr, Local: local, Peer: peer, Verdict: verdict})
	if err != nil {
		t.Fatal(err)
	}
	e, err := query.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestMap(t *testing.T) {
	web := &identity.Identity{Namespace: "shop", Pod: "web"}
	db := &identity.Identity{Namespace: "data", Pod: "db<1>"}
	es := []query.Entry{
		entry(t, db, web, "ingress", "198.18.0.3:4000", flowlog.Allow),
		entry(t, db, web, "ingress", "198.18.0.3:4001", flowlog.Allow),
		entry(t, db, web, "ingress", "198.18.0.3:4002", flowlog.Deny),
		entry(t, db, nil, "ingress", "198.18.9.9:4003", flowlog.Deny),
	}
	g := Build(es, nil)
	if len(g.Nodes) != 3 || g.Nodes[2].Name != "198.18.9.9" || g.Nodes[2].Namespace != "" {
		t.Fatalf("nodes %+v", g.Nodes)
	}
	if len(g.Edges) != 3 {
		t.Fatalf("edges %+v", g.Edges)
	}
	var dot bytes.Buffer
	if err := WriteDOT(&dot, g); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`subgraph "cluster_data"`,
		`"shop/web" -> "data/db<1>" [color="#2e7d32", fontcolor="#2e7d32", label="allow 80 ×2"];`,
		`"shop/web" -> "data/db<1>" [color="#c62828", fontcolor="#c62828", label="deny 80 ×1", style=dashed];`,
		`"198.18.9.9" [label="198.18.9.9", shape=ellipse];`,
	} {
		if !strings.Contains(dot.String(), want) {
			t.Errorf("DOT lacks %s:\n%s", want, dot.String())
		}
	}
	if byNS := Build(es, query.ByNamespace); len(byNS.Nodes) != 3 || byNS.Nodes[0].Name != "data/" || byNS.Nodes[0].Label != "data" {
		t.Errorf("by namespace: %+v", byNS.Nodes)
	}
	var svg bytes.Buffer
	if err := WriteSVG(&svg, g); err != nil {
		t.Fatal(err)
	}
	// Well-formed XML, with both kinds of edge and the escaped name.
	dec := xml.NewDecoder(bytes.NewReader(svg.Bytes()))
	lines, dashed := 0, 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not XML: %v\n%s", err, svg.String())
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "line" {
			lines++
			for _, a := range se.Attr {
				if a.Name.Local == "stroke-dasharray" {
					dashed++
				}
			}
		}
	}
	if lines != 3 || dashed != 2 || !strings.Contains(svg.String(), "data/db&lt;1&gt;") {
		t.Fatalf("SVG: %d lines, %d dashed:\n%s", lines, dashed, svg.String())
	}
}
