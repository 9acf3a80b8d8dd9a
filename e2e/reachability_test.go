package e2e

import (
	"net/netip"
	"testing"
)

// The model shared by the tests, testdata/cluster/model.yaml:
//
//	node n1: x/web (app=web), x/db (app=db, port 5432 "pg" and 8080)
//	node n2: x/cache (app=cache, 8080), y/intruder (app=web, 8080),
//	         ext/mallory (unprotected: a machine outside Bireme)
//
//	x/db-ingress:    app=db accepts app=web of namespace x on 5432 only
//	x/cache-ingress: app=cache accepts app=web of namespaces labelled team=x
//	x/web-egress:    app=web may only connect to app in (db, cache)
//
// y/intruder has web's labels but the wrong namespace: only its signed
// namespace labels tell it apart.

// TestReachability proves the decisions of the model, on one node and
// across nodes, with real connections: allowed pairs move 10 MB each way
// byte-exact, denied ones fail within a bound and are never accepted by the
// server application, and both enforcers' flow records say who, what and why.
func TestReachability(t *testing.T) {
	c := newCluster(t, modelSpec(false))
	checkModel(t, c)
}

// TestReachabilityNAT is TestReachability with every node masquerading
// traffic towards other nodes: the servers see node addresses, not the
// clients', and the decisions do not change, because addresses carry no
// trust.
func TestReachabilityNAT(t *testing.T) {
	c := newCluster(t, modelSpec(true))
	checkModel(t, c)
	// The NAT is real: a server on n2 sees web's connections coming from n1.
	r, ok := c.waitFlow(t, "n2", flowMatch{Direction: "ingress", Local: "x/cache", Peer: "x/web", Verdict: "allow"})
	if n1 := c.node("n1").Addr; ok && !hasHost(r.PeerAddr, n1.String()) {
		t.Errorf("with NAT, cache saw web at %s; want n1's address %s", r.PeerAddr, n1)
	}
}

func checkModel(t *testing.T, c *cluster) {
	t.Run("same node allowed", func(t *testing.T) {
		c.expectAllowed(t, "web", "db", 5432)
		c.expectFlow(t, "n1", flowMatch{Direction: "ingress", Local: "x/db", Peer: "x/web", Verdict: "allow", LocalPort: 5432}, "x/db-ingress", "x/db-ingress")
		c.expectFlow(t, "n1", flowMatch{Direction: "egress", Local: "x/web", Peer: "x/db", Verdict: "allow"}, "x/web-egress", "x/web-egress")
	})
	t.Run("same node denied by port", func(t *testing.T) {
		c.expectDenied(t, "web", "db", 8080)
		c.expectFlow(t, "n1", flowMatch{Direction: "ingress", Local: "x/db", Peer: "x/web", Verdict: "deny", LocalPort: 8080}, "", "x/db-ingress")
	})
	t.Run("same node denied by namespace", func(t *testing.T) {
		c.expectDenied(t, "intruder", "cache", 8080)
		c.expectFlow(t, "n2", flowMatch{Direction: "ingress", Local: "x/cache", Peer: "y/intruder", Verdict: "deny"}, "", "x/cache-ingress")
	})
	t.Run("across nodes allowed", func(t *testing.T) {
		c.expectAllowed(t, "web", "cache", 8080)
		c.expectFlow(t, "n2", flowMatch{Direction: "ingress", Local: "x/cache", Peer: "x/web", Verdict: "allow"}, "x/cache-ingress", "x/cache-ingress")
		c.expectFlow(t, "n1", flowMatch{Direction: "egress", Local: "x/web", Peer: "x/cache", Verdict: "allow"}, "x/web-egress", "x/web-egress")
	})
	t.Run("across nodes denied at ingress", func(t *testing.T) {
		c.expectDenied(t, "intruder", "db", 5432)
		c.expectFlow(t, "n1", flowMatch{Direction: "ingress", Local: "x/db", Peer: "y/intruder", Verdict: "deny"}, "", "x/db-ingress")
	})
	t.Run("across nodes denied at egress", func(t *testing.T) {
		// intruder's own ingress is open (no policy selects it): only web's
		// egress policy, enforced by n1 on the SYN-ACK, stops this.
		c.expectDenied(t, "web", "intruder", 8080)
		c.expectFlow(t, "n1", flowMatch{Direction: "egress", Local: "x/web", Peer: "y/intruder", Verdict: "deny"}, "", "x/web-egress")
	})
	t.Run("unselected server open to identified clients", func(t *testing.T) {
		c.expectAllowed(t, "cache", "intruder", 8080)
		c.expectFlow(t, "n2", flowMatch{Direction: "ingress", Local: "y/intruder", Peer: "x/cache", Verdict: "allow"}, "", "no policy selects")
	})
	t.Run("client without enforcer denied by policy", func(t *testing.T) {
		// mallory presents no identity; only ipBlock rules could let it in.
		c.expectDenied(t, "mallory", "cache", 8080)
		c.expectFlow(t, "n2", flowMatch{Direction: "ingress", Local: "x/cache", Peer: "", Verdict: "deny"}, "", "x/cache-ingress")
	})
}

func hasHost(addrPort, host string) bool {
	ap, err := netip.ParseAddrPort(addrPort)
	return err == nil && ap.Addr().String() == host
}
