package tokens

import (
	"crypto/x509"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// hintWorld is a client node (node-a) and a server node (node-b) with the
// two-message handshake on, past their start-up window, that never
// completed a handshake with each other. The client also trusts a foreign
// trust domain's CA.
type hintWorld struct {
	f       *fixture
	clk     *clock
	foreign *CA
	ce, se  *Engine
}

func newHintWorld(t *testing.T, mod func(*Config)) *hintWorld {
	t.Helper()
	f := newFixture(t, "cluster.local")
	foreign, err := NewCA("other.example", 0)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := NewTrustBundle(f.ca.Cert, foreign.Cert)
	if err != nil {
		t.Fatal(err)
	}
	clk := newClock()
	w := &hintWorld{f: f, clk: clk, foreign: foreign,
		ce: twoMsgEngine(t, f.a, trust, clk, mod), se: twoMsgEngine(t, f.b, f.bundle, clk, nil)}
	clk.Advance(2 * DefaultTwoMessageWindow)
	return w
}

// serverAt is the server address of testConn, where node-b's pod is.
var serverAt = testConn.Server.Addr()

// A published node certificate lets the first SYN to a pod of that node be
// a SYN2, which completes in two messages, only if it verifies as a node
// certificate of the local trust domain naming that node; every other is
// ignored, and the first SYN is a three-message one.
func TestNodeHints(t *testing.T) {
	for _, tc := range []struct {
		name  string
		certs func(t *testing.T, w *hintWorld) []*x509.Certificate
		used  bool
		why   string // in the reason the certificate was ignored
	}{
		{name: "valid", used: true, certs: func(t *testing.T, w *hintWorld) []*x509.Certificate {
			return []*x509.Certificate{w.f.b.Cert}
		}},
		{name: "another CA", why: "unknown-ca", certs: func(t *testing.T, w *hintWorld) []*x509.Certificate {
			other, err := NewCA("cluster.local", 0)
			if err != nil {
				t.Fatal(err)
			}
			return []*x509.Certificate{mustIssue(t, other, "node-b").Cert}
		}},
		{name: "trusted CA of another trust domain", why: "wrong-trust-domain", certs: func(t *testing.T, w *hintWorld) []*x509.Certificate {
			return []*x509.Certificate{mustIssue(t, w.foreign, "node-b").Cert}
		}},
		{name: "expired", why: "expired", certs: func(t *testing.T, w *hintWorld) []*x509.Certificate {
			return []*x509.Certificate{issueNodeWith(t, w.f.ca, "spiffe://cluster.local/node/node-b", func(c *x509.Certificate) {
				c.NotBefore, c.NotAfter = time.Now().Add(-3*time.Hour), time.Now().Add(-2*time.Hour)
			}).Cert}
		}},
		{name: "without keyAgreement", why: "wrong-cert-usage", certs: func(t *testing.T, w *hintWorld) []*x509.Certificate {
			return []*x509.Certificate{issueNodeWith(t, w.f.ca, "spiffe://cluster.local/node/node-b", func(c *x509.Certificate) {
				c.KeyUsage = x509.KeyUsageDigitalSignature
			}).Cert}
		}},
		{name: "of another node", why: `names node "node-a"`, certs: func(t *testing.T, w *hintWorld) []*x509.Certificate {
			return []*x509.Certificate{w.f.a.Cert}
		}},
		{name: "the newest valid one of several", used: true, certs: func(t *testing.T, w *hintWorld) []*x509.Certificate {
			older := issueNodeWith(t, w.f.ca, "spiffe://cluster.local/node/node-b", nil) // from an hour ago, another key
			return []*x509.Certificate{older.Cert, w.f.b.Cert, nil}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newHintWorld(t, nil)
			rep := w.ce.SetNodeHints([]NodeHint{{Node: "node-b", Certs: tc.certs(t, w), Addrs: []netip.Addr{serverAt}}})
			if tc.used {
				if rep.Nodes != 1 || rep.Addresses != 1 {
					t.Fatalf("report %+v, want 1 node and 1 address", rep)
				}
				twoMessage(t, w.ce, w.se, testConn) // the very first connection
				return
			}
			if rep.Nodes != 0 || rep.Addresses != 0 || len(rep.Ignored) != 1 || !strings.Contains(rep.Ignored[0].Error(), tc.why) {
				t.Fatalf("report %+v, want the certificate ignored saying %q", rep, tc.why)
			}
			syn, ch, err := w.ce.NewSYN(twoMsgClient, testConn)
			if err != nil {
				t.Fatal(err)
			}
			if syn[0] != typeSYN {
				t.Fatalf("first SYN type 0x%02x after an ignored certificate, want a three-message SYN", syn[0])
			}
			threeMessage(t, syn, ch, w.se, testConn)
		})
	}
}

// A certificate that verifies but is not the server's current key (the
// node's previous key, or another node's certificate for an address that
// is not its own) costs a fallback, never a failure: the server answers
// in three messages, and the client learns the real key from it.
func TestNodeHintWrongKeyFallsBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		hint func(t *testing.T, w *hintWorld) NodeHint
	}{
		{"stale certificate of the node", func(t *testing.T, w *hintWorld) NodeHint {
			return NodeHint{Node: "node-b", Certs: []*x509.Certificate{mustIssue(t, w.f.ca, "node-b").Cert}, Addrs: []netip.Addr{serverAt}}
		}},
		{"the address placed on another node", func(t *testing.T, w *hintWorld) NodeHint {
			return NodeHint{Node: "node-c", Certs: []*x509.Certificate{mustIssue(t, w.f.ca, "node-c").Cert}, Addrs: []netip.Addr{serverAt}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newHintWorld(t, nil)
			if rep := w.ce.SetNodeHints([]NodeHint{tc.hint(t, w)}); rep.Addresses != 1 {
				t.Fatalf("report %+v", rep)
			}
			syn, ch, err := w.ce.NewSYN(twoMsgClient, testConn)
			if err != nil {
				t.Fatal(err)
			}
			if syn[0] != typeSYN2 {
				t.Fatalf("SYN type 0x%02x, want a SYN2 made from the hint", syn[0])
			}
			if reason, _ := threeMessage(t, syn, ch, w.se, testConn); reason != FallbackUnknownKey {
				t.Fatalf("fallback %q, want %q", reason, FallbackUnknownKey)
			}
			// What the handshake proved wins over the hint from now on.
			twoMessage(t, w.ce, w.se, testConn)
		})
	}
}

// What a handshake proved at an address is not replaced by a hint, this
// node's own pods are hinted with its own key, addresses in a declared NAT
// gateway range never are, and hints survive a rotation of the client's
// key (they are made again for the new key).
func TestNodeHintsKeepWhatIsKnown(t *testing.T) {
	gateway := netip.MustParseAddr("198.18.100.7")
	w := newHintWorld(t, func(c *Config) {
		c.NATGateways = NATGateways{"cluster.local": {netip.MustParsePrefix("198.18.100.0/24")}}
	})
	handshake(t, w.ce, w.se, twoMsgClient, twoMsgServer) // the client learns node-b at serverAt
	stale := mustIssue(t, w.f.ca, "node-b")
	own := netip.MustParseAddr("198.18.1.9")
	rep := w.ce.SetNodeHints([]NodeHint{
		{Node: "node-b", Certs: []*x509.Certificate{stale.Cert}, Addrs: []netip.Addr{serverAt, gateway}},
		{Node: "node-a", Addrs: []netip.Addr{own}}, // no certificate needed for its own node
	})
	if rep.Nodes != 2 || rep.Addresses != 2 || rep.NAT != 1 {
		t.Fatalf("report %+v, want 2 nodes, 2 addresses, 1 behind NAT", rep)
	}
	twoMessage(t, w.ce, w.se, testConn) // still node-b's real key, not the stale hint

	toOwn := Endpoints{Client: testConn.Client, Server: netip.AddrPortFrom(own, 80), ClientISN: 9}
	twoMessage(t, w.ce, w.ce, toOwn) // a pod of this node, first connection

	toGateway := Endpoints{Client: testConn.Client, Server: netip.AddrPortFrom(gateway, 80), ClientISN: 9}
	if syn, _, err := w.ce.NewSYN(twoMsgClient, toGateway); err != nil || syn[0] != typeSYN {
		t.Fatalf("SYN to a NAT gateway address: %v, type 0x%02x, want a three-message SYN", err, syn[0])
	}

	if err := w.ce.Rotate(mustIssue(t, w.f.ca, "node-a")); err != nil {
		t.Fatal(err)
	}
	twoMessage(t, w.ce, w.ce, toOwn) // made again under the new key

	// Hints are replaced as a whole: an address no longer hinted is not.
	w.ce.SetNodeHints(nil)
	if syn, _, err := w.ce.NewSYN(twoMsgClient, toOwn); err != nil || syn[0] != typeSYN {
		t.Fatalf("SYN after the hints were withdrawn: %v, type 0x%02x", err, syn[0])
	}
}

// With the two-message handshake off, hints are kept and never used.
func TestNodeHintsTwoMessageOff(t *testing.T) {
	f := newFixture(t, "cluster.local")
	ce := newTestEngine(t, f.a, f.bundle, nil)
	if rep := ce.SetNodeHints([]NodeHint{{Node: "node-b", Certs: []*x509.Certificate{f.b.Cert}, Addrs: []netip.Addr{serverAt}}}); rep.Addresses != 0 {
		t.Fatalf("report %+v", rep)
	}
	if syn, _, err := ce.NewSYN(twoMsgClient, testConn); err != nil || syn[0] != typeSYN {
		t.Fatalf("SYN: %v, type 0x%02x", err, syn[0])
	}
}
