package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bireme/bireme/internal/syncbuf"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
	"github.com/bireme/bireme/tokens"
)

// scapyPython is the interpreter that has scapy (python3-scapy from apt
// installs it for the system python, not for a python on $PATH such as
// pyenv's).
func scapyPython(t *testing.T) string {
	t.Helper()
	netnstest.RequireNamespaces(t)
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import scapy.all").Run() == nil {
			return py
		}
	}
	t.Skip("skipping: python3-scapy not installed (bash scripts/install-deps.sh)")
	return ""
}

// scapy runs testdata/SCRIPT inside ns and returns its JSON summary line.
func scapy(t *testing.T, py string, ns *netns.NS, script string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := ns.Output(ctx, py, append([]string{filepath.Join("testdata", script)}, args...)...)
	if err != nil {
		dump, _ := exec.CommandContext(ctx, "tcpdump", "-nr", args[0]).CombinedOutput()
		t.Fatalf("%s %v: %v\n%s\ncapture:\n%s", script, args, err, out, tail(string(dump), 3000))
	}
	return strings.TrimSpace(string(out))
}

// capture records TCP packets matching filter on iface inside ns with
// tcpdump until the returned stop function is called; stop returns the
// pcap file.
func capture(t *testing.T, ns *netns.NS, iface, filter string) (stop func() string) {
	t.Helper()
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("skipping: tcpdump not installed (bash scripts/install-deps.sh)")
	}
	file := filepath.Join(t.TempDir(), "capture.pcap")
	cmd := ns.Command(context.Background(), "tcpdump", "-i", iface, "--immediate-mode", "-U", "-n", "-s", "0", "-w", file, filter)
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(stderr.String(), "listening on") {
		if time.Now().After(deadline) {
			t.Fatalf("tcpdump did not start: %s", stderr.String())
		}
		select {
		case <-done:
			t.Fatalf("tcpdump exited: %s", stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return func() string {
		time.Sleep(100 * time.Millisecond) // let the last packets land
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("tcpdump did not stop")
		}
		t.Logf("tcpdump: %s", stderr.String())
		return file
	}
}

// exchange makes one connection from → to:port carrying a few bytes, and
// closes it; the caller captures its packets.
func (c *cluster) exchange(t *testing.T, from, to string, port uint16) {
	t.Helper()
	conn, err := c.dial(from, to, port, 3*time.Second)
	if err != nil {
		t.Fatalf("%s -> %s:%d: %v", from, to, port, err)
	}
	if err := echoCheck(conn, 1000); err != nil {
		t.Fatalf("%s -> %s:%d: %v", from, to, port, err)
	}
	conn.Close()
	time.Sleep(200 * time.Millisecond) // FIN exchange done: the replay hits a closed tuple
}

// noAccept checks the server application accepted nothing more than before.
func noAccept(t *testing.T, what string, s *server, before int64) {
	t.Helper()
	time.Sleep(700 * time.Millisecond) // time for a handshake to complete, if one could
	if got := s.accepts.Load() - before; got != 0 {
		t.Errorf("%s: the server application accepted %d connections", what, got)
	}
}

// mark returns how many records node has written so far, for
// expectTokenRejected's since.
func (c *cluster) mark(t *testing.T, node string) int { return len(c.records(t, node)) }

// expectTokenRejected waits for a deny record on node for local, written
// after the first since records, whose token error is one of reasons.
func (c *cluster) expectTokenRejected(t *testing.T, node string, since int, local, peerAddrHost string, reasons ...tokens.Reason) {
	t.Helper()
	_, ok := c.waitRecordSince(t, node, since, func(r flowlog.Record) bool {
		if r.Verdict != flowlog.Deny || r.Local.Ref() != local || (peerAddrHost != "" && !hasHost(r.PeerAddr, peerAddrHost)) {
			return false
		}
		for _, want := range reasons {
			if r.TokenError == string(want) {
				return true
			}
		}
		return false
	})
	if !ok {
		t.Errorf("node %s: no new deny record for %s from %s with token error in %v; records:\n  %s", node, local, peerAddrHost, reasons, c.dumpFlows(t, node))
	}
}

// TestAttacks sends what an attacker on the network can send — replayed,
// spoofed, edited and foreign-signed handshakes — and checks that none of it
// ever produces a connection the server application accepts, and that the
// enforcer records why it refused.
func TestAttacks(t *testing.T) {
	py := scapyPython(t)
	spec := modelSpec(false)
	// x/rogue claims web's labels from node n3, whose enforcer has keys
	// from a CA the cluster does not trust (same trust domain, other key).
	spec.Files = append(spec.Files, "testdata/cluster/rogue.yaml")
	spec.UntrustedNodes = []string{"n3"}
	c := newCluster(t, spec)
	web, cache, db, intruder, mallory, rogue := c.pod("web"), c.pod("cache"), c.pod("db"), c.pod("intruder"), c.pod("mallory"), c.pod("rogue")
	cacheSrv, dbSrv := c.server(t, "cache", 8080), c.server(t, "db", 5432)

	// An allowed connection web -> cache, captured on the wire in the router.
	stop := capture(t, c.lab.Router(), c.node("n2").RouterLink, fmt.Sprintf("tcp and host %s and port 8080", cache.Addr))
	c.exchange(t, "web", "cache", 8080)
	wire := stop()

	t.Run("captured SYN replayed from another namespace", func(t *testing.T) {
		since := c.mark(t, "n2")
		before := cacheSrv.accepts.Load()
		out := scapy(t, py, mallory.NS, "replay.py", wire, "--dst", cache.Addr.String(), "--dport", "8080")
		t.Log(out)
		noAccept(t, "replayed SYN", cacheSrv, before)
		c.expectTokenRejected(t, "n2", since, "x/cache", web.Addr.String(), tokens.ReasonReplayed)
	})
	t.Run("captured SYN replayed with a fresh source port", func(t *testing.T) {
		since := c.mark(t, "n2")
		before := cacheSrv.accepts.Load()
		t.Log(scapy(t, py, mallory.NS, "replay.py", wire, "--dst", cache.Addr.String(), "--dport", "8080", "--new-sport"))
		noAccept(t, "replayed SYN, new port", cacheSrv, before)
		c.expectTokenRejected(t, "n2", since, "x/cache", web.Addr.String(), tokens.ReasonReplayed)
	})
	t.Run("captured handshake replayed", func(t *testing.T) {
		since := c.mark(t, "n2")
		before := cacheSrv.accepts.Load()
		t.Log(scapy(t, py, mallory.NS, "replay.py", wire, "--dst", cache.Addr.String(), "--dport", "8080", "--what", "handshake"))
		noAccept(t, "replayed handshake", cacheSrv, before)
		c.expectTokenRejected(t, "n2", since, "x/cache", web.Addr.String(), tokens.ReasonReplayed)
	})

	// web now knows cache's node: its next SYN to cache is a two-message
	// SYN (docs/protocol.md), which cache authorizes at the SYN. A replay
	// of it within the timestamp window is refused by the strike register.
	stop = capture(t, c.lab.Router(), c.node("n2").RouterLink, fmt.Sprintf("tcp and host %s and port 8080", cache.Addr))
	c.exchange(t, "web", "cache", 8080)
	wire2 := stop()
	t.Run("two-message SYN replayed", func(t *testing.T) {
		since := c.mark(t, "n2")
		before := cacheSrv.accepts.Load()
		out := scapy(t, py, mallory.NS, "replay.py", wire2, "--dst", cache.Addr.String(), "--dport", "8080", "--what", "handshake")
		t.Log(out)
		if !strings.Contains(out, `"type": 36`) { // 0x24
			t.Fatalf("the captured SYN is not a two-message SYN: %s", out)
		}
		noAccept(t, "replayed two-message SYN", cacheSrv, before)
		c.expectTokenRejected(t, "n2", since, "x/cache", web.Addr.String(), tokens.ReasonReplayed)
	})
	t.Run("two-message SYN replayed with a fresh source port", func(t *testing.T) {
		// The MAC covers the rewritten endpoints: cache falls back to
		// three messages, where the nonce is known.
		since := c.mark(t, "n2")
		before := cacheSrv.accepts.Load()
		t.Log(scapy(t, py, mallory.NS, "replay.py", wire2, "--dst", cache.Addr.String(), "--dport", "8080", "--new-sport", "--what", "handshake"))
		noAccept(t, "replayed two-message SYN, new port", cacheSrv, before)
		c.expectTokenRejected(t, "n2", since, "x/cache", web.Addr.String(), tokens.ReasonReplayed)
	})
	t.Run("SYN without token from an allowed peer's address", func(t *testing.T) {
		before := cacheSrv.accepts.Load()
		t.Log(scapy(t, py, mallory.NS, "spoof_syn.py", "--src", web.Addr.String(), "--dst", cache.Addr.String(), "--dport", "8080"))
		noAccept(t, "spoofed SYN", cacheSrv, before)
		_, ok := c.waitRecord(t, "n2", func(r flowlog.Record) bool {
			return r.Verdict == flowlog.Deny && r.Local.Ref() == "x/cache" && r.Peer == nil && hasHost(r.PeerAddr, web.Addr.String())
		})
		if !ok {
			t.Errorf("n2 recorded no denial of the tokenless SYN from %s; records:\n  %s", web.Addr, c.dumpFlows(t, "n2"))
		}
	})

	// Tokens that honest clients sent to mallory (an unprotected machine):
	// intruder's (allowed to connect to mallory) and web's (web's egress
	// policy refuses mallory, but only after its SYN left with a token).
	stop = capture(t, mallory.NS, "eth0", "tcp and port 8080")
	c.exchange(t, "intruder", "mallory", 8080)
	if conn, err := c.dial("web", "mallory", 8080, time.Second); err == nil {
		conn.Close()
		t.Error("web -> mallory connected; web's egress policy refuses it")
	}
	received := stop()

	t.Run("token with edited labels", func(t *testing.T) {
		// intruder is y/intruder; db admits app=web of namespace x only.
		// Rewrite the signed claims to say namespace x and replay them.
		since := c.mark(t, "n1")
		before := dbSrv.accepts.Load()
		t.Log(scapy(t, py, mallory.NS, "replay.py", received,
			"--dst", mallory.Addr.String(), "--dport", "8080", "--src", intruder.Addr.String(), "--to", db.Addr.String(), "--to-port", "5432",
			"--replace", `"ns":"y"="ns":"x"`,
			"--replace", `"kubernetes.io/metadata.name":"y"="kubernetes.io/metadata.name":"x"`,
			"--replace", `"team":"y"="team":"x"`))
		noAccept(t, "edited token", dbSrv, before)
		c.expectTokenRejected(t, "n1", since, "x/db", intruder.Addr.String(), tokens.ReasonBadSignature)
	})
	// The relay of a token by the machine it was sent to, with the whole
	// handshake relayed both ways, is TestRelay.

	t.Run("token signed by a CA the cluster does not trust", func(t *testing.T) {
		since2, since1 := c.mark(t, "n2"), c.mark(t, "n1")
		c.expectDenied(t, "rogue", "cache", 8080)
		c.expectTokenRejected(t, "n2", since2, "x/cache", rogue.Addr.String(), tokens.ReasonUnknownCA)
		c.expectDenied(t, "rogue", "db", 5432)
		c.expectTokenRejected(t, "n1", since1, "x/db", rogue.Addr.String(), tokens.ReasonUnknownCA)
	})

	// After all of this the honest pair still works.
	c.expectAllowed(t, "web", "cache", 8080)

	t.Run("metrics count what was refused and why", func(t *testing.T) {
		type labels = map[string]string
		for _, m := range []struct {
			node, name string
			labels     labels
			atLeast    float64
		}{
			{"n2", "bireme_token_failures_total", labels{"reason": "replayed-nonce"}, 3},
			{"n2", "bireme_token_failures_total", labels{"reason": "unknown-ca"}, 1},
			{"n1", "bireme_token_failures_total", labels{"reason": "bad-signature"}, 1},
			{"n2", "bireme_decisions_total", labels{"verdict": "deny", "direction": "ingress", "reason": "unknown-ca"}, 1},
			{"n2", "bireme_decisions_total", labels{"verdict": "allow", "direction": "ingress", "reason": "policy-rule"}, 2},
			{"n1", "bireme_decisions_total", labels{"verdict": "allow", "direction": "egress", "reason": "policy-rule"}, 2},
		} {
			v, err := c.metric(m.node, m.name, m.labels)
			if err != nil || v < m.atLeast {
				t.Errorf("%s %s%v = %v (%v), want at least %v", m.node, m.name, m.labels, v, err, m.atLeast)
			}
		}
		for _, n := range []string{"n1", "n2"} {
			if v, err := c.metric(n, "bireme_handshakes_in_flight", nil); err != nil || v < 0 {
				t.Errorf("%s bireme_handshakes_in_flight = %v (%v)", n, v, err)
			}
			// Every assertion on flow records above relies on none lost.
			if v, err := c.metric(n, "bireme_flow_records_dropped_total", nil); err != nil || v != 0 {
				t.Errorf("%s bireme_flow_records_dropped_total = %v (%v), want 0", n, v, err)
			}
		}
	})

	// After cache's enforcer restarts its strike register is empty: the
	// captured two-message SYN, sent before the restart, is not authorized
	// at the SYN (its timestamp predates the restart), and the
	// three-message handshake it falls back to needs web's node key.
	// Last: the restart resets n2's metrics.
	t.Run("two-message SYN replayed after the server's enforcer restarted", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c.killEnforcer(t, "n2")
		if err := c.lab.StartEnforcer(ctx, "n2"); err != nil {
			t.Fatalf("restart enforcer n2: %v", err)
		}
		before := cacheSrv.accepts.Load()
		t.Log(scapy(t, py, mallory.NS, "replay.py", wire2, "--dst", cache.Addr.String(), "--dport", "8080", "--what", "handshake"))
		noAccept(t, "two-message SYN replayed after the restart", cacheSrv, before)
		c.expectAllowed(t, "web", "cache", 8080)
	})
}
