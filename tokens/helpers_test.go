package tokens

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/bireme/bireme/identity"
)

// testConn is the connection the tests' handshakes run on, seen alike by
// both sides (no NAT), and testServerISN its SYN-ACK's sequence number.
var testConn = Endpoints{
	Client:    netip.MustParseAddrPort("198.18.1.2:40000"),
	Server:    netip.MustParseAddrPort("198.18.2.2:8080"),
	ClientISN: 0x1000_0001,
}

const testServerISN = 0x2000_0002

// clock is a settable clock for engines under test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fixture is one trust domain with a CA and two nodes, a and b.
type fixture struct {
	ca     *CA
	a, b   *NodeCredentials
	bundle *TrustBundle
}

func newFixture(t testing.TB, domain string) *fixture {
	t.Helper()
	ca, err := NewCA(domain, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.IssueNode("node-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.IssueNode("node-b", 0)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := NewTrustBundle(ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{ca: ca, a: a, b: b, bundle: bundle}
}

func newTestEngine(t testing.TB, creds *NodeCredentials, trust *TrustBundle, clk *clock) *Engine {
	t.Helper()
	cfg := Config{Credentials: creds, Trust: trust}
	if clk != nil {
		cfg.Now = clk.Now
	}
	e, err := NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// workload returns an identity with n labels of 30 bytes each (key+value).
func workload(ns, pod string, n int) *identity.Identity {
	id := &identity.Identity{
		Namespace:       ns,
		Pod:             pod,
		ServiceAccount:  "default",
		Labels:          map[string]string{},
		NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": ns},
		Ports:           []identity.Port{{Name: "http", Protocol: "TCP", Port: 8080}},
	}
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("example.com/label-%02d", i) // 22 bytes
		id.Labels[k] = fmt.Sprintf("value-%02d", i)   // 8 bytes
	}
	return id
}

// newPair returns a fixture of cluster.local and two engines on it: the
// client node's (node-a) and the server node's (node-b), on the real clock.
func newPair(t testing.TB) (f *fixture, ce, se *Engine) {
	t.Helper()
	f = newFixture(t, "cluster.local")
	return f, newTestEngine(t, f.a, f.bundle, nil), newTestEngine(t, f.b, f.bundle, nil)
}

// halfHandshake is a handshake up to the server's answer: the messages sent
// so far and both sides' state.
type halfHandshake struct {
	syn, synack []byte
	ch          *ClientHandshake
	sh          *ServerHandshake
}

// startHandshake runs NewSYN, ConsumeSYN and NewSYNACK from client engine ce
// to server engine se and fails the test on any error.
func startHandshake(t testing.TB, ce, se *Engine, client, server *identity.Identity) halfHandshake {
	t.Helper()
	var h halfHandshake
	var err error
	if h.syn, h.ch, err = ce.NewSYN(client, testConn); err != nil {
		t.Fatal("NewSYN:", err)
	}
	if h.sh, err = se.ConsumeSYN(h.syn, testConn); err != nil {
		t.Fatal("ConsumeSYN:", err)
	}
	if h.synack, err = h.sh.NewSYNACK(server, testServerISN); err != nil {
		t.Fatal("NewSYNACK:", err)
	}
	return h
}

// handshake runs a full handshake from client engine ce to server engine se
// and fails the test on any error.
func handshake(t testing.TB, ce, se *Engine, client, server *identity.Identity) (clientSaw, serverSaw *identity.Identity) {
	t.Helper()
	h := startHandshake(t, ce, se, client, server)
	ch, sh := h.ch, h.sh
	peer, err := ch.ConsumeSYNACK(h.synack, testServerISN)
	if err != nil {
		t.Fatal("ConsumeSYNACK:", err)
	}
	ack, err := ch.NewACK()
	if err != nil {
		t.Fatal("NewACK:", err)
	}
	if err := sh.ConsumeACK(ack); err != nil {
		t.Fatal("ConsumeACK:", err)
	}
	return peer, sh.Peer()
}
