package agent

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/internal/syncbuf"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

// Node certificates a source publishes reach the tokens engine: a SYN to a
// pod of that node is a two-message one from the first connection; a
// certificate the engine refuses is logged once, not at every state.
func TestNodeCertsReachTheEngine(t *testing.T) {
	ca, err := tokens.NewCA("c1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := tokens.NewCA("c1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *tokens.CA, node string) *tokens.NodeCredentials {
		c, err := ca.IssueNode(node, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	trust, err := tokens.NewTrustBundle(ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := tokens.NewEngine(tokens.Config{Credentials: issue(ca, "n1"), Trust: trust, TwoMessage: true})
	if err != nil {
		t.Fatal(err)
	}
	src := &chanSource{states: make(chan desired.State)}
	var logBuf syncbuf.Buffer
	a, err := New(Config{Source: src, Datapath: &recordingDatapath{state: map[string]desired.Workload{}},
		Policy: policy.NewLive(nil), Placement: NewLivePlacement(), Tokens: eng, Poll: 20 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(&logBuf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	pod := netip.MustParseAddr("198.18.2.2")
	conn := tokens.Endpoints{Client: netip.MustParseAddrPort("198.18.1.2:40000"), Server: netip.AddrPortFrom(pod, 80), ClientISN: 1}
	local := &identity.Identity{Cluster: "c1", Namespace: "x", Pod: "a"}
	synType := func() byte {
		syn, _, err := eng.NewSYN(local, conn)
		if err != nil {
			t.Fatal(err)
		}
		return syn[0]
	}
	if got := synType(); got != 0x21 {
		t.Fatalf("SYN type 0x%02x before any certificate was published, want a three-message SYN (0x21)", got)
	}
	state := desired.State{NodeCerts: &desired.NodeCerts{Nodes: []tokens.NodeHint{{
		Node: "n2", Certs: []*x509.Certificate{issue(ca, "n2").Cert, issue(other, "n2").Cert}, Addrs: []netip.Addr{pod},
	}}}}
	src.states <- state
	src.states <- state // delivered once more: accept ran for the first
	src.states <- desired.State{}
	if got := synType(); got != 0x24 {
		t.Fatalf("SYN type 0x%02x to a pod of a node whose certificate was published, want a two-message SYN (0x24)\nlog:\n%s", got, logBuf.String())
	}
	log := logBuf.String()
	if n := strings.Count(log, "published node certificate ignored"); n != 1 || !strings.Contains(log, "unknown-ca") {
		t.Errorf("the forged certificate logged %d times, want once with its reason:\n%s", n, log)
	}
	if !strings.Contains(log, "nodes=1 addresses=1") {
		t.Errorf("no summary:\n%s", log)
	}
}
