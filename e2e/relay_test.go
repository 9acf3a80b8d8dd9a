package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/tokens"
)

// relayCounts is relay.py's summary of what it passed on.
type relayCounts struct {
	SYNRelayed       int `json:"syn_relayed"`
	SYNACKFromServer int `json:"synack_from_server"`
	SYNACKRelayed    int `json:"synack_relayed"`
	ToServer         int `json:"to_server"`
	ToClient         int `json:"to_client"`
	SYNType          int `json:"syn_type"` // the type byte of api's last SYN payload
}

// TestRelay is the relay of issue 11, exactly: prod/api dials prod/evil
// (allowed: evil has no ingress policy), and evil, root in its own
// namespace, relays the whole handshake with raw sockets between api and
// prod/db, which admits only api. Under protocol version 1 every message
// verified and db's application accepted evil's connection as api's. In
// version 2 the proofs bind both connections' endpoints: db refuses the
// relayed SYN (endpoint-mismatch), and a relay that rewrites the SYN's
// claimed endpoints gets a SYN-ACK that api refuses (its proof binds evil's
// connection, not the one api dialed), so no proof ever reaches db.
func TestRelay(t *testing.T) {
	py := scapyPython(t)
	c := newCluster(t, clusterSpec{Files: []string{"testdata/cluster/relay.yaml"}})
	evil, db := c.pod("evil"), c.pod("db")
	dbSrv := c.server(t, "db", 5432)

	// The honest pair works, and evil on its own is refused.
	c.expectAllowed(t, "api", "db", 5432)
	c.expectDenied(t, "evil", "db", 5432)

	// api dials evil once while evil is still protected: api's node now
	// knows evil's node key, so api's SYNs to evil are two-message SYNs
	// (docs/protocol.md) until api's enforcer restarts.
	evilKey := serverKey(evil.Ref, 8080)
	c.servers[evilKey] = startServer(t, evil, 8080)
	c.expectAllowed(t, "api", "evil", 8080)
	c.servers[evilKey].ln.Close() // relay.py answers on evil:8080 from here on
	delete(c.servers, evilKey)

	// evil takes its namespace back from its enforcer and keeps its kernel
	// from resetting the connections it relays (it knows neither).
	takeOver := func(t *testing.T) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, args := range [][]string{
			{"-t", "mangle", "-F"}, {"-t", "filter", "-F"},
			{"-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "DROP"},
		} {
			if err := evil.NS.Exec(ctx, "iptables", args...); err != nil {
				t.Fatalf("iptables %v in evil: %v", args, err)
			}
		}
	}
	takeOver(t)

	// relay runs relay.py in evil while api dials evil, and returns what
	// it relayed; it fails the test if api's connection carries anything.
	relay := func(t *testing.T, extra ...string) relayCounts {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		args := append([]string{filepath.Join("testdata", "relay.py"),
			"--self", evil.Addr.String(), "--port", "8080",
			"--server", db.Addr.String(), "--server-port", "5432", "--duration", "5"}, extra...)
		cmd := evil.NS.Command(ctx, py, args...)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		lines := bufio.NewScanner(stdout)
		if !lines.Scan() || lines.Text() != "ready" {
			t.Fatalf("relay.py did not start: %q %s", lines.Text(), stderr.String())
		}

		conn, err := c.dial("api", "evil", 8080, 3*time.Second)
		if err == nil {
			// api believes it talks to evil; whatever answers is db.
			_ = conn.SetDeadline(time.Now().Add(time.Second))
			_, _ = conn.Write([]byte("hello"))
			buf := make([]byte, 5)
			if _, err := io.ReadFull(conn, buf); err == nil {
				t.Errorf("api's connection to evil was answered through the relay: %q", buf)
			}
			conn.Close()
		}
		if !lines.Scan() {
			t.Fatalf("relay.py gave no summary: %s", stderr.String())
		}
		var counts relayCounts
		if err := json.Unmarshal(lines.Bytes(), &counts); err != nil {
			t.Fatalf("relay.py summary %q: %v", lines.Text(), err)
		}
		t.Logf("relayed: %+v", counts)
		if counts.SYNRelayed == 0 {
			t.Fatal("relay.py saw no SYN from api: the relay was not attempted")
		}
		return counts
	}

	// noConnection checks that db has no established connection from evil.
	noConnection := func(t *testing.T) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := db.NS.Output(ctx, "ss", "-Htn", "state", "established")
		if err != nil {
			t.Fatalf("ss in db: %v", err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, evil.Addr.String()+":") {
				t.Errorf("db has a connection from evil: %s", l)
			}
		}
	}

	// The relay cases, run on the path api's SYN takes: synType is its
	// type byte (0x21 three-message, 0x24 two-message).
	relayCases := func(t *testing.T, synType int) {
		checkType := func(t *testing.T, counts relayCounts) {
			t.Helper()
			if counts.SYNType != synType {
				t.Fatalf("api's SYN has type 0x%02x, this run is for 0x%02x", counts.SYNType, synType)
			}
		}
		t.Run("all three packets relayed as they are", func(t *testing.T) {
			since := c.mark(t, "node-a")
			before := dbSrv.accepts.Load()
			counts := relay(t)
			checkType(t, counts)
			noAccept(t, "relayed handshake", dbSrv, before)
			noConnection(t)
			c.expectTokenRejected(t, "node-a", since, "prod/db", evil.Addr.String(), tokens.ReasonEndpointMismatch)
			if counts.SYNACKFromServer != 0 {
				t.Errorf("db answered the relayed SYN %d times", counts.SYNACKFromServer)
			}
		})

		t.Run("SYN's endpoints rewritten to the relay's connection", func(t *testing.T) {
			since := c.mark(t, "node-b")
			before := dbSrv.accepts.Load()
			counts := relay(t, "--rewrite-endpoints")
			checkType(t, counts)
			noAccept(t, "relayed handshake, rewritten endpoints", dbSrv, before)
			noConnection(t)
			if counts.SYNACKRelayed == 0 {
				t.Fatal("db did not answer the rewritten SYN: this case tests api's check of the SYN-ACK")
			}
			// api's enforcer refuses db's SYN-ACK relayed by evil: its proof
			// binds evil's connection to db, not api's to evil.
			c.expectTokenRejected(t, "node-b", since, "prod/api", evil.Addr.String(), tokens.ReasonBadProof)
		})

	}
	t.Run("two-message", func(t *testing.T) { relayCases(t, 0x24) })

	// api's enforcer restarts and forgets evil's node: three messages.
	// Its restart re-protects evil, which takes its namespace back again.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c.killEnforcer(t, "node-b")
	if err := c.lab.StartEnforcer(ctx, "node-b"); err != nil {
		t.Fatalf("restart enforcer node-b: %v", err)
	}
	takeOver(t)
	t.Run("three-message", func(t *testing.T) { relayCases(t, 0x21) })

	t.Run("metrics", func(t *testing.T) {
		if v, err := c.metric("node-a", "bireme_token_failures_total", map[string]string{"reason": "endpoint-mismatch"}); err != nil || v < 1 {
			t.Errorf("node-a bireme_token_failures_total{reason=endpoint-mismatch} = %v (%v), want at least 1", v, err)
		}
	})
}
