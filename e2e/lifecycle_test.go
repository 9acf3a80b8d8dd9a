package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestEnforcerRestartAndStop proves the promises about the enforcer process
// itself: an authorized connection survives `kill -9` of both enforcers and
// their restart; while an enforcer is down new connections to its workloads
// fail (fail closed); SIGTERM exits 0 and fails closed too: the rules stay,
// connections attempted in the gap are refused during it and after the
// restart, an allowed connect waiting in the gap completes after it, and
// the live connection keeps flowing; only `bireme uninstall` leaves no
// rule, chain or queue in any workload namespace.
func TestEnforcerRestartAndStop(t *testing.T) {
	c := newCluster(t, modelSpec(false))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	live, err := c.dial("web", "cache", 8080, 3*time.Second)
	if err != nil {
		t.Fatalf("web -> cache: %v", err)
	}
	defer live.Close()
	check := func(when string) {
		t.Helper()
		if err := echoCheck(live, 1<<20); err != nil {
			t.Fatalf("live connection %s: %v", when, err)
		}
	}
	check("before any restart")

	c.killEnforcer(t, "n2")
	check("with the server's enforcer killed")
	t.Run("killed enforcer fails closed", func(t *testing.T) {
		c.expectDenied(t, "web", "cache", 8080)      // into n2
		c.expectDenied(t, "cache", "intruder", 8080) // within n2, allowed by policy
		c.expectAllowed(t, "web", "db", 5432)        // n1 alone still works
	})

	c.killEnforcer(t, "n1")
	check("with both enforcers killed")

	for _, n := range []string{"n1", "n2"} {
		// Returns once the enforcer protects all of its pods again.
		if err := c.lab.StartEnforcer(ctx, n); err != nil {
			t.Fatalf("restart enforcer %s: %v", n, err)
		}
	}
	check("after both enforcers restarted")
	t.Run("restarted enforcers decide again", func(t *testing.T) {
		c.expectAllowed(t, "web", "cache", 8080)
		c.expectDenied(t, "intruder", "cache", 8080)
	})
	t.Run("restart did not duplicate rules", func(t *testing.T) {
		for _, p := range c.lab.Status().Pods {
			if !p.Protected {
				continue
			}
			seen := map[string]bool{}
			for _, l := range strings.Split(c.rules(p.Pod), "\n") {
				if seen[l] {
					t.Errorf("%s: rule twice after restart: %s", p.Pod, l)
				}
				seen[l] = true
			}
		}
	})

	t.Run("SIGTERM fails closed and the restart adopts nothing", func(t *testing.T) {
		n2Pods := map[string]string{} // protected pod of n2 -> its rules
		for _, p := range c.lab.Status().Pods {
			if p.Protected && p.Node == "n2" {
				n2Pods[p.Pod] = c.rules(p.Pod)
			}
		}
		// An error also when the enforcer exited with a non-zero status.
		if err := c.lab.StopEnforcer(ctx, "n2"); err != nil {
			t.Fatalf("stop enforcer n2: %v (want exit status 0)", err)
		}
		for pod, before := range n2Pods {
			if got := c.rules(pod); got != before {
				t.Errorf("%s: rules changed by SIGTERM:\nbefore:\n%s\nafter:\n%s", pod, before, got)
			}
		}
		check("with the server's enforcer stopped")
		// The gap: nobody reads n2's queues.
		c.expectDenied(t, "mallory", "cache", 8080)  // no enforcer, no identity
		c.expectDenied(t, "intruder", "cache", 8080) // policy denies it
		// An allowed client connecting in the gap waits: its SYN is
		// dropped and retransmitted until the restarted enforcer answers.
		waiting := make(chan error, 1)
		go func() {
			conn, err := c.dial("web", "cache", 8080, 30*time.Second)
			if err == nil {
				err = echoCheck(conn, 1<<16)
				conn.Close()
			}
			waiting <- err
		}()
		if err := c.lab.StartEnforcer(ctx, "n2"); err != nil {
			t.Fatalf("restart enforcer n2: %v", err)
		}
		if err := <-waiting; err != nil {
			t.Errorf("web -> cache, connecting across the restart: %v", err)
		}
		check("after the server's enforcer restarted")
		// Nothing attempted in the gap was adopted, and the attacks are
		// still refused.
		c.expectDenied(t, "mallory", "cache", 8080)
		c.expectDenied(t, "intruder", "cache", 8080)
		c.expectAllowed(t, "web", "cache", 8080)
	})

	t.Run("explicit uninstall leaves nothing behind", func(t *testing.T) {
		for _, n := range []string{"n1", "n2"} {
			if err := c.lab.StopEnforcer(ctx, n); err != nil {
				t.Errorf("stop enforcer %s: %v (want exit status 0)", n, err)
			}
			out, err := exec.CommandContext(ctx, biremeBin, "uninstall", "--node", n, "--store", c.lab.Status().Store).CombinedOutput()
			if err != nil {
				t.Fatalf("bireme uninstall --node %s: %v\n%s", n, err, out)
			}
		}
		for _, p := range c.lab.Status().Pods {
			if got := c.rules(p.Pod); got != noRules {
				t.Errorf("%s: rules left after uninstall:\n%s", p.Pod, got)
			}
			if q := c.queues(p.Pod); q != "" {
				t.Errorf("%s: NFQUEUE still bound after stop: %s", p.Pod, q)
			}
		}
	})
	// Removing protection must not cut the connection either.
	check("after the uninstall")
}

// TestStoreChanges proves the agent follows its inputs while it runs: a pod
// relabelled in the store is signed with its new labels (decisions change);
// an invalid edit keeps the last good set; a workload namespace deleted and
// made again under the same name is protected again; a renewed node
// certificate on disk is used without a restart; a pod removed from the
// store is released (its namespace left as found) and protected again when
// it comes back.
func TestStoreChanges(t *testing.T) {
	spec := modelSpec(false)
	spec.Files = append(spec.Files, "testdata/cluster/batch.yaml")
	c := newCluster(t, spec)

	c.expectDenied(t, "batch", "db", 5432)

	t.Run("relabelled client is signed with its new labels", func(t *testing.T) {
		c.apply(t, "testdata/cluster/batch-as-web.yaml")
		if err := eventuallyConnects(c, "batch", "db", 5432); err != nil {
			t.Fatalf("batch relabelled app=web: %v\nn2 log:\n%s", err, c.enforcerLog("n2"))
		}
		c.expectAllowed(t, "batch", "db", 5432)
		c.expectFlow(t, "n1", flowMatch{Direction: "ingress", Local: "x/db", Peer: "x/batch", Verdict: "allow"}, "x/db-ingress", "x/db-ingress")
		c.apply(t, "testdata/cluster/batch.yaml")
		if err := eventuallyRefused(c, "batch", "db", 5432); err != nil {
			t.Fatal(err)
		}
		c.expectDenied(t, "batch", "db", 5432)
	})

	t.Run("invalid edit keeps the last good set", func(t *testing.T) {
		// Straight into the store: the lab itself refuses invalid input.
		broken := filepath.Join(c.lab.Status().Store, "broken.yaml")
		writeAtomic(t, broken, "apiVersion: v1\nkind: Pod\nmetadata: {name: \"Not_A_Name\"}\n")
		time.Sleep(500 * time.Millisecond) // several polls
		c.expectAllowed(t, "web", "cache", 8080)
		c.expectDenied(t, "intruder", "cache", 8080)
		if c.node("n2").EnforcerPID == 0 {
			t.Fatal("enforcer exited on an invalid store")
		}
		if err := os.Remove(broken); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("namespace made again under the same name is protected again", func(t *testing.T) {
		c.recreateHost(t, "cache", 8080)
		// Protected again once its rules are the complete set every
		// protected namespace of the node has, and its queue is bound.
		deadline := time.Now().Add(10 * time.Second)
		for c.rules("cache") != c.rules("intruder") || c.queues("cache") == "" {
			if time.Now().After(deadline) {
				t.Fatalf("the new cache namespace got no rules or queue:\n%s\nn2 log:\n%s", c.rules("cache"), c.enforcerLog("n2"))
			}
			time.Sleep(100 * time.Millisecond)
		}
		c.expectDenied(t, "intruder", "cache", 8080)
		c.expectAllowed(t, "web", "cache", 8080)
	})

	t.Run("renewed node certificate is picked up without a restart", func(t *testing.T) {
		live, err := c.dial("web", "cache", 8080, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		if err := c.lab.RenewNodeCredentials("n2"); err != nil {
			t.Fatal(err)
		}
		// The log line is this test's evidence, not a readiness signal.
		for deadline := time.Now().Add(5 * time.Second); !strings.Contains(c.enforcerLog("n2"), "node credentials rotated"); {
			if time.Now().After(deadline) {
				t.Fatalf("n2 did not rotate its credentials:\n%s", c.enforcerLog("n2"))
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := echoCheck(live, 1<<20); err != nil {
			t.Errorf("connection made before the rotation: %v", err)
		}
		c.expectAllowed(t, "web", "cache", 8080)      // n2 answers with the new key
		c.expectAllowed(t, "cache", "intruder", 8080) // n2 signs with the new key
		c.expectDenied(t, "intruder", "cache", 8080)
	})

	t.Run("pod removed from the store is released, and protected when back", func(t *testing.T) {
		// The lab keeps cache's namespace but gives the enforcer no netns
		// for it; apply returns once n2 protects one pod fewer.
		c.apply(t, "testdata/cluster/cache-unprotected.yaml")
		if got := c.rules("cache"); got != noRules {
			t.Errorf("cache released, but rules are left:\n%s", got)
		}
		if q := c.queues("cache"); q != "" {
			t.Errorf("cache released, but a queue is still bound: %s", q)
		}
		c.apply(t, "testdata/cluster/model.yaml")
		c.expectDenied(t, "intruder", "cache", 8080)
		c.expectAllowed(t, "web", "cache", 8080)
	})
}

// recreateHost restarts pod's sandbox: a new namespace under the same
// name, as a restarted pod gets, with a fresh echo server on port.
func (c *cluster) recreateHost(t *testing.T, pod string, port uint16) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ref := c.pod(pod).Ref
	// A socket keeps its namespace (and so its veth) alive: close ours.
	// The enforcer's queue socket goes when the agent sees the namespace gone.
	c.server(t, pod, port).ln.Close()
	if err := c.lab.RestartPodSandbox(ctx, ref); err != nil {
		t.Fatal(err)
	}
	// The server lives as long as the cluster, not just this subtest.
	c.servers[serverKey(ref, port)] = startServer(c.t, c.pod(pod), port)
}

// killEnforcer kills node's enforcer with SIGKILL: it cleans nothing up.
func (c *cluster) killEnforcer(t *testing.T, node string) {
	t.Helper()
	if err := c.lab.KillEnforcer(node); err != nil {
		t.Fatal(err)
	}
}

// eventuallyConnects retries from -> to:port for up to 5 s (the store is
// polled) and closes the connection it gets once the server application
// has accepted it (the accept comes after the client's connect returns: the
// final ACK still crosses both enforcers).
func eventuallyConnects(c *cluster, from, to string, port uint16) error {
	s := c.servers[serverKey(c.pod(to).Ref, port)]
	var last error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		before := s.accepts.Load()
		conn, err := c.dial(from, to, port, 500*time.Millisecond)
		if err == nil {
			for s.accepts.Load() == before && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			conn.Close()
			return nil
		}
		last = err
	}
	return fmt.Errorf("%s -> %s:%d never connected: %w", from, to, port, last)
}

// eventuallyRefused retries until a connect from -> to:port fails.
func eventuallyRefused(c *cluster, from, to string, port uint16) error {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		conn, err := c.dial(from, to, port, 500*time.Millisecond)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			return err
		}
		conn.Close()
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s -> %s:%d still connects", from, to, port)
}

// writeAtomic writes path under a temporary name and renames it into
// place, so an enforcer polling the directory never reads half of it.
func writeAtomic(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp~"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
