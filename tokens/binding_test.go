package tokens

import (
	"net/netip"
	"strings"
	"testing"
)

// The relay of issue 11 at the engine level. prod/api (node-b) dials
// prod/evil, which forwards api's SYN to prod/db (node-a) from its own
// address, relays db's SYN-ACK back to api in its own, and forwards api's
// ACK to db. Under v1 every step verified and db admitted evil as api.
func TestRelayRefused(t *testing.T) {
	f := newFixture(t, "cluster.local")
	apiNode := newTestEngine(t, f.b, f.bundle, nil)
	dbNode := newTestEngine(t, f.a, f.bundle, nil)
	api, db := workload("prod", "api", 1), workload("prod", "db", 1)
	apiToEvil := Endpoints{ // what api dialed
		Client:    netip.MustParseAddrPort("198.18.2.2:40000"),
		Server:    netip.MustParseAddrPort("198.18.2.3:8080"),
		ClientISN: 111,
	}
	evilToDB := Endpoints{ // what db sees: evil's own connection
		Client:    netip.MustParseAddrPort("198.18.2.3:50000"),
		Server:    netip.MustParseAddrPort("198.18.1.2:5432"),
		ClientISN: 111, // evil can copy api's ISN; the addresses still differ
	}

	t.Run("SYN forwarded as is", func(t *testing.T) {
		syn, _, err := apiNode.NewSYN(api, apiToEvil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = dbNode.ConsumeSYN(syn, evilToDB)
		wantReason(t, err, ReasonEndpointMismatch)
		if !strings.Contains(err.Error(), "relayed") {
			t.Errorf("error does not say the SYN was relayed: %v", err)
		}
	})

	t.Run("SYN with the endpoints rewritten to evil's connection", func(t *testing.T) {
		// The endpoints are not signed (the token is reused across
		// connections): evil can make them match what db sees. db then
		// answers, but api will not take a proof bound to evil -> db.
		syn, ch, err := apiNode.NewSYN(api, apiToEvil)
		if err != nil {
			t.Fatal(err)
		}
		rewritten := appendSYN(nil, (*[NonceSize]byte)(syn[1:1+NonceSize]), &evilToDB, syn[1+NonceSize+wireEndpointsSize4:])
		sh, err := dbNode.ConsumeSYN(rewritten, evilToDB)
		if err != nil {
			t.Fatal("db refused a SYN whose claim matches what it sees:", err)
		}
		const dbISN, evilISN = 222, 333
		synack, err := sh.NewSYNACK(db, dbISN)
		if err != nil {
			t.Fatal(err)
		}
		// evil relays the payload in its own SYN-ACK to api, with its own
		// ISN or a copy of db's: neither binds api's connection.
		for _, isn := range []uint32{evilISN, dbISN} {
			_, err = ch.ConsumeSYNACK(synack, isn)
			wantReason(t, err, ReasonBadProof)
		}
		if _, err := ch.NewACK(); err == nil {
			t.Fatal("api produced an ACK proof for a relayed SYN-ACK")
		}
	})

	t.Run("claimed source kept, destination rewritten", func(t *testing.T) {
		syn, _, err := apiNode.NewSYN(api, apiToEvil)
		if err != nil {
			t.Fatal(err)
		}
		claim := Endpoints{Client: apiToEvil.Client, Server: evilToDB.Server}
		rewritten := appendSYN(nil, (*[NonceSize]byte)(syn[1:1+NonceSize]), &claim, syn[1+NonceSize+wireEndpointsSize4:])
		_, err = dbNode.ConsumeSYN(rewritten, evilToDB)
		wantReason(t, err, ReasonEndpointMismatch)
	})
}

// Each side's view of the ISNs is bound: a SYN-ACK proof computed for
// another ISN of either side does not verify at the client.
func TestISNsBound(t *testing.T) {
	_, ce, se := newPair(t)
	client, server := workload("ns", "c", 1), workload("ns", "s", 1)

	syn, ch, err := ce.NewSYN(client, testConn)
	if err != nil {
		t.Fatal(err)
	}
	seen := testConn
	seen.ClientISN++ // the server saw another SYN than the client sent
	sh, err := se.ConsumeSYN(syn, seen)
	if err != nil {
		t.Fatal(err)
	}
	synack, err := sh.NewSYNACK(server, testServerISN)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ch.ConsumeSYNACK(synack, testServerISN)
	wantReason(t, err, ReasonBadProof)

	h := startHandshake(t, ce, se, client, server)
	_, err = h.ch.ConsumeSYNACK(h.synack, testServerISN+1)
	wantReason(t, err, ReasonBadProof)
	if _, err := h.ch.ConsumeSYNACK(h.synack, testServerISN); err != nil {
		t.Fatal("the SYN-ACK with the ISN it was made for:", err)
	}
}

// A client of a trust domain declared as reached through NAT may be seen
// from that declaration's gateways with another source; nothing else is
// relaxed.
func TestNATGateways(t *testing.T) {
	f := newFixture(t, "cluster.local")
	other := newFixture(t, "other.example")
	gateways := netip.MustParsePrefix("198.18.100.0/24")
	trust, err := NewTrustBundle(f.ca.Cert, other.ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	server, err := NewEngine(Config{Credentials: f.b, Trust: trust,
		NATGateways: NATGateways{"cluster.local": {gateways}}})
	if err != nil {
		t.Fatal(err)
	}
	sameDomain := newTestEngine(t, f.a, trust, nil)
	otherDomain := newTestEngine(t, other.a, trust, nil)
	undeclared := newTestEngine(t, f.b, f.bundle, nil) // no NAT declared
	viaGateway := testConn
	viaGateway.Client = netip.MustParseAddrPort("198.18.100.1:61000")

	// The declared case completes: the server binds the client's claimed
	// view, which is the client's real one.
	syn, ch, err := sameDomain.NewSYN(workload("ns", "c", 1), testConn)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := server.ConsumeSYN(syn, viaGateway)
	if err != nil {
		t.Fatal("SYN through a declared gateway:", err)
	}
	synack, err := sh.NewSYNACK(workload("ns", "s", 1), testServerISN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.ConsumeSYNACK(synack, testServerISN); err != nil {
		t.Fatal("SYN-ACK through a declared gateway:", err)
	}
	ack, _ := ch.NewACK()
	if err := sh.ConsumeACK(ack); err != nil {
		t.Fatal("ACK through a declared gateway:", err)
	}

	refused := func(name string, client *Engine, serverEngine *Engine, observed Endpoints, wantDetail string) {
		t.Run(name, func(t *testing.T) {
			syn, _, err := client.NewSYN(workload("ns", "c", 1), testConn)
			if err != nil {
				t.Fatal(err)
			}
			_, err = serverEngine.ConsumeSYN(syn, observed)
			wantReason(t, err, ReasonEndpointMismatch)
			if !strings.Contains(err.Error(), wantDetail) {
				t.Errorf("error %q does not say %q", err, wantDetail)
			}
		})
	}
	notGateway := testConn
	notGateway.Client = netip.MustParseAddrPort("198.18.101.1:61000")
	refused("source outside the gateway ranges", sameDomain, server, notGateway, "no NAT gateway declared")
	refused("another trust domain through the gateway", otherDomain, server, viaGateway, "no NAT gateway declared for its trust domain")
	otherServer := viaGateway
	otherServer.Server = netip.MustParseAddrPort("198.18.2.9:8080")
	refused("another destination through the gateway", sameDomain, server, otherServer, "relayed")
	refused("no declaration", sameDomain, undeclared, viaGateway, "no NAT gateway declared")
}

func TestNATGatewaysConfig(t *testing.T) {
	f := newFixture(t, "cluster.local")
	for name, g := range map[string]NATGateways{
		"no trust domain": {"": {netip.MustParsePrefix("198.18.0.0/15")}},
		"no gateways":     {"cluster.local": nil},
		"invalid prefix":  {"cluster.local": {netip.Prefix{}}},
	} {
		if _, err := NewEngine(Config{Credentials: f.a, Trust: f.bundle, NATGateways: g}); err == nil {
			t.Errorf("%s: NewEngine accepted %v", name, g)
		}
	}
}

// Version 1 messages are refused, by name: no downgrade to a handshake that
// binds no endpoints.
func TestVersion1Refused(t *testing.T) {
	_, ce, se := newPair(t)
	h := startHandshake(t, ce, se, workload("ns", "c", 1), workload("ns", "s", 1))
	asV1 := func(b []byte) []byte { return append([]byte{0x10 | b[0]&0x0f}, b[1:]...) }

	_, err := se.ConsumeSYN(asV1(h.syn), testConn)
	wantReason(t, err, ReasonUnsupportedVersion)
	_, err = h.ch.ConsumeSYNACK(asV1(h.synack), testServerISN)
	wantReason(t, err, ReasonUnsupportedVersion)
	if _, err := h.ch.ConsumeSYNACK(h.synack, testServerISN); err != nil {
		t.Fatal(err)
	}
	ack, _ := h.ch.NewACK()
	wantReason(t, h.sh.ConsumeACK(asV1(ack)), ReasonUnsupportedVersion)
	if err := h.sh.ConsumeACK(ack); err != nil {
		t.Fatal("the v2 ACK after a v1 one:", err)
	}
	if _, ok := SYNACKClientNonce(asV1(h.synack)); ok {
		t.Error("SYNACKClientNonce read a v1 SYN-ACK")
	}
}

// A server behind destination NAT its node vouches for (a Service's
// virtual IP translated to the server pod): the SYN dialed to the VIP is
// accepted, the proofs bind the client's view (the VIP), and the handshake
// completes; a destination the translation does not vouch for is still a
// relay.
func TestDestinationTranslation(t *testing.T) {
	_, ce, se := newPair(t)
	client, server := workload("ns", "c", 1), workload("ns", "s", 1)
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	dialed := testConn
	dialed.Server = vip
	dnat := func(d, o netip.AddrPort) bool { return d == vip && o == testConn.Server }

	syn, ch, err := ce.NewSYN(client, dialed)
	if err != nil {
		t.Fatal(err)
	}
	sh, _, err := se.VerifySYNVia(syn, testConn, dnat, func() bool { return true })
	if err != nil {
		t.Fatal("SYN to a vouched-for VIP:", err)
	}
	if err := sh.RecordNonce(); err != nil {
		t.Fatal(err)
	}
	synack, err := sh.NewSYNACK(server, testServerISN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.ConsumeSYNACK(synack, testServerISN); err != nil {
		t.Fatal("client refused the SYN-ACK bound to the VIP it dialed:", err)
	}
	ack, _ := ch.NewACK()
	if err := sh.ConsumeACK(ack); err != nil {
		t.Fatal("ACK:", err)
	}

	for name, claim := range map[string]netip.AddrPort{
		"another VIP":             netip.MustParseAddrPort("198.19.0.11:80"),
		"the VIP on another port": netip.MustParseAddrPort("198.19.0.10:81"),
		"another pod (a relay's)": netip.MustParseAddrPort("198.18.2.3:8080"),
	} {
		t.Run(name, func(t *testing.T) {
			conn := testConn
			conn.Server = claim
			syn, _, err := ce.NewSYN(client, conn)
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = se.VerifySYNVia(syn, testConn, dnat, func() bool { return true })
			wantReason(t, err, ReasonEndpointMismatch)
			if !strings.Contains(err.Error(), "no Service translates") {
				t.Errorf("error does not say no Service translates: %v", err)
			}
		})
	}

	// The translation excuses the destination only: a relay that forwards
	// the SYN from its own address is refused on the source.
	syn, _, err = ce.NewSYN(client, dialed)
	if err != nil {
		t.Fatal(err)
	}
	fromRelay := testConn
	fromRelay.Client = netip.MustParseAddrPort("198.18.2.3:50000")
	_, _, err = se.VerifySYNVia(syn, fromRelay, dnat, func() bool { return true })
	wantReason(t, err, ReasonEndpointMismatch)
}
