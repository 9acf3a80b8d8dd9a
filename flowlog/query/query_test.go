package query

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// entries are three decisions: web -> db allowed (ingress at db), an
// unidentified 198.18.9.9 -> db denied, and web -> api denied (egress at
// web) with a field this package does not know.
func entries(t *testing.T) []Entry {
	web := &identity.Identity{Cluster: "c", Namespace: "shop", Pod: "web", Labels: map[string]string{"app": "web"}}
	db := &identity.Identity{Cluster: "c", Namespace: "data", Pod: "db", Labels: map[string]string{"app": "db"}}
	api := &identity.Identity{Cluster: "c", Namespace: "shop", Pod: "api", Labels: map[string]string{"app": "api"}}
	recs := []*flowlog.Record{
		{Time: t0, Node: "n1", Direction: "ingress", Stage: "syn", Protocol: "TCP", LocalAddr: "198.18.0.2:5432", PeerAddr: "198.18.0.3:41000",
			Local: db, Peer: web, Verdict: flowlog.Allow, Policy: "data/allow-web", Reason: "allowed by data/allow-web", Handshake: flowlog.TwoMessage},
		{Time: t0.Add(time.Minute), Node: "n1", Direction: "ingress", Stage: "syn", Protocol: "TCP", LocalAddr: "198.18.0.2:5432", PeerAddr: "198.18.9.9:41001",
			Local: db, Verdict: flowlog.Deny, SelectedBy: []string{"data/allow-web"}, Reason: "no identity; no rule allows"},
		{Time: t0.Add(2 * time.Minute), Node: "n2", Direction: "egress", Stage: "synack", Protocol: "TCP", LocalAddr: "198.18.0.3:41002", PeerAddr: "198.18.0.4:8080",
			Local: web, Peer: api, Verdict: flowlog.Deny, TokenError: "expired", Reason: "token\nexpired"},
	}
	var buf bytes.Buffer
	w := flowlog.NewWriter(&buf)
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	lines[2] = strings.Replace(lines[2], `{`, `{"tier":"admin","wouldDeny":{"policy":"x/y"},`, 1)
	var out []Entry
	for _, l := range lines {
		e, err := Decode([]byte(l))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

func TestFilter(t *testing.T) {
	es := entries(t)
	ep := func(s string) Endpoint {
		e, err := ParseEndpoint(s)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	lb := func(s string) Endpoint {
		e, err := ParseLabels(s)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	cases := []struct {
		name string
		f    Filter
		want string // indexes of the entries that pass
	}{
		{"all", Filter{}, "012"},
		{"deny", Filter{Verdicts: []string{"deny"}}, "12"},
		{"from web (client of ingress and of egress)", Filter{From: []Endpoint{ep("shop/web")}}, "02"},
		{"from shop namespace", Filter{From: []Endpoint{ep("shop/")}}, "02"},
		{"from address", Filter{From: []Endpoint{ep("198.18.9.0/24")}}, "1"},
		{"to db", Filter{To: []Endpoint{ep("data/db")}}, "01"},
		{"to label", Filter{ToLabels: []Endpoint{lb("app in (api)")}}, "2"},
		{"from label no identity", Filter{FromLabels: []Endpoint{lb("app")}}, "02"},
		{"from label and namespace", Filter{FromLabels: []Endpoint{lb("app=web")}, From: []Endpoint{ep("data/")}}, ""},
		{"port", Filter{Ports: []uint16{8080}}, "2"},
		{"policy selected", Filter{Policies: []string{"data/allow-web"}}, "01"},
		{"reason", Filter{Reasons: []string{"EXPIRED"}}, "2"},
		{"since", Filter{Since: t0.Add(time.Minute)}, "12"},
		{"until", Filter{Until: t0.Add(time.Minute)}, "0"},
		{"node", Filter{Nodes: []string{"n2"}}, "2"},
		{"field unknown to Record", Filter{Fields: []FieldMatch{{"tier", "admin"}}}, "2"},
		{"field known", Filter{Fields: []FieldMatch{{"stage", "syn"}}}, "01"},
		{"handshake", Filter{Handshakes: []string{"Two-Message"}}, "0"},
		{"handshake none", Filter{Handshakes: []string{flowlog.ThreeMessage}}, ""},
		{"and", Filter{Verdicts: []string{"deny"}, To: []Endpoint{ep("data/db")}}, "1"},
	}
	for _, tc := range cases {
		var got string
		for i := range es {
			if tc.f.Match(&es[i]) {
				got += string(rune('0' + i))
			}
		}
		if got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
	for _, bad := range []string{"web", "a/b/c", "/x"} {
		if _, err := ParseEndpoint(bad); err == nil {
			t.Errorf("endpoint %q accepted", bad)
		}
	}
	if _, err := ParseLabels("a=(b"); err == nil {
		t.Error("bad selector accepted")
	}
	for in, want := range map[string]string{"2": flowlog.TwoMessage, "three-message": flowlog.ThreeMessage, "x": ""} {
		if got, err := ParseHandshake(in); got != want || (err != nil) != (want == "") {
			t.Errorf("ParseHandshake(%q): %q, %v", in, got, err)
		}
	}
	if got, err := ParseTime("10m", t0); err != nil || !got.Equal(t0.Add(-10*time.Minute)) {
		t.Errorf("ParseTime 10m: %v %v", got, err)
	}
}

func TestOutputs(t *testing.T) {
	es := entries(t)
	for _, format := range Formats {
		var buf bytes.Buffer
		p, err := NewPrinter(&buf, format)
		if err != nil {
			t.Fatal(err)
		}
		for i := range es {
			p.Print(&es[i])
		}
		p.Flush()
		out := buf.String()
		if n := strings.Count(out, "\n"); n != 3+map[bool]int{true: 1}[format == "table"] {
			t.Errorf("%s: %d lines:\n%s", format, n, out)
		}
		// Every output shows the field this package does not know.
		if !strings.Contains(out, "tier") || !strings.Contains(out, "admin") {
			t.Errorf("%s: no tier:\n%s", format, out)
		}
		if format != "json" && (!strings.Contains(out, "198.18.9.9") || !strings.Contains(out, "wouldDeny={\"policy\":\"x/y\"}")) {
			t.Errorf("%s:\n%s", format, out)
		}
	}
	if c := Compact(&es[2]); c != `Jan  2 03:06:05.000 n2: shop/web -> shop/api:8080/TCP synack DENY token expired: token expired [tier=admin wouldDeny={"policy":"x/y"}]` {
		t.Errorf("compact: %s", c)
	}
	if _, err := NewPrinter(&bytes.Buffer{}, "yaml"); err == nil {
		t.Error("yaml accepted")
	}
}

func TestTop(t *testing.T) {
	es := entries(t)
	es = append(es, es[0], es[0])
	top := Top(es, 0, nil)
	if len(top) != 3 || top[0].Count != 3 || top[0].From != "shop/web" || top[0].To != "data/db" || top[0].Ports[0] != 5432 {
		t.Fatalf("top: %+v", top)
	}
	if top[1].From != "198.18.9.9" || top[1].Verdict != "deny" {
		t.Fatalf("top[1]: %+v", top[1])
	}
	if len(Top(es, 1, nil)) != 1 {
		t.Fatal("limit")
	}
	byNS := Top(es, 0, ByNamespace)
	if len(byNS) != 3 || byNS[0].From != "shop/" || byNS[0].To != "data/" || byNS[2].To != "shop/" {
		t.Fatalf("by namespace: %+v", byNS)
	}
	var buf bytes.Buffer
	WriteTop(&buf, top)
	if !strings.Contains(buf.String(), "3      shop/web") {
		t.Fatalf("table:\n%s", buf.String())
	}
}
