package lab

import (
	"bytes"
	"strings"
	"testing"

	"net/netip"

	"github.com/bireme/bireme/flowlog"
)

func TestWriteTable(t *testing.T) {
	pods := []string{"x/a", "x/b", "y/c"}
	results := []Result{
		{From: "x/a", To: "x/b", Port: 80, Protocol: "TCP", Connected: true},
		{From: "x/a", To: "y/c", Port: 80, Protocol: "TCP", Connected: false},
		{From: "x/b", To: "y/c", Port: 80, Protocol: "TCP", Connected: true},
		{From: "y/c", To: "x/b", Port: 80, Protocol: "TCP", Connected: false},
		{From: "x/a", To: "y/c", Port: 81, Protocol: "TCP", Connected: true},
		{From: "x/b", To: "y/c", Port: 81, Protocol: "TCP", Connected: true},
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, pods, results); err != nil {
		t.Fatal(err)
	}
	want := `TCP/80  x/b  y/c
x/a     .    X
x/b     -    .
y/c     X    -

TCP/81  y/c
x/a     .
x/b     .
y/c     -

rows: client, columns: server; . connected, X refused, - self
`
	if got := buf.String(); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
}

func TestExplainFromFlows(t *testing.T) {
	server := netip.MustParseAddrPort("198.18.2.2:80")
	mk := func(cport uint16, connected bool) Result {
		return Result{From: "x/a", To: "y/c", Port: 80, Protocol: "TCP", Connected: connected, Reason: "timeout",
			local: netip.AddrPortFrom(netip.MustParseAddr("198.18.1.2"), cport), remote: server}
	}
	results := []Result{mk(40000, false), mk(40001, false), mk(40002, true), {From: "x/b", To: "y/c", Reason: "timeout"}}
	records := []flowlog.Record{
		// The server's node saw the client through NAT (198.19.1.2).
		{Node: "n2", Direction: "ingress", LocalAddr: "198.18.2.2:80", PeerAddr: "198.19.1.2:40000", Verdict: flowlog.Deny, Reason: "denied: selected by y/deny-all and no rule allows"},
		{Node: "n1", Direction: "egress", LocalAddr: "198.18.1.2:40002", PeerAddr: "198.18.2.2:80", Verdict: flowlog.Allow, Reason: "allowed: no policy selects x/a for egress"},
		{Node: "n2", Direction: "ingress", LocalAddr: "198.18.2.2:80", PeerAddr: "198.18.1.2:40002", Verdict: flowlog.Allow, Reason: "allowed by y/web ingress rule 0"},
		{Node: "n2", Direction: "ingress", LocalAddr: "198.18.2.2:81", PeerAddr: "198.18.1.2:40001", Verdict: flowlog.Deny, Reason: "other port", TokenError: "bad-proof"},
	}
	ExplainFromFlows(results, records)
	for i, want := range []string{
		"n2 ingress: denied: selected by y/deny-all and no rule allows",
		"timeout",
		"n2 ingress: allowed by y/web ingress rule 0",
		"timeout",
	} {
		if !strings.EqualFold(results[i].Reason, want) {
			t.Errorf("result %d reason %q, want %q", i, results[i].Reason, want)
		}
	}
}
