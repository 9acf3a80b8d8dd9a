package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/lab/topology"
)

// TestEnforcerRestartAndStop proves the promises about the enforcer process
// itself: an authorized connection survives `kill -9` of both enforcers and
// their restart; while an enforcer is down new connections to its workloads
// fail (fail closed); SIGTERM exits 0 and leaves no rule, chain or queue in
// any workload namespace.
func TestEnforcerRestartAndStop(t *testing.T) {
	c := newCluster(t, modelSpec(false))

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

	c.enf["n2"].kill9()
	check("with the server's enforcer killed")
	t.Run("killed enforcer fails closed", func(t *testing.T) {
		c.expectDenied(t, "web", "cache", 8080)      // into n2
		c.expectDenied(t, "cache", "intruder", 8080) // within n2, allowed by policy
		c.expectAllowed(t, "web", "db", 5432)        // n1 alone still works
	})

	c.enf["n1"].kill9()
	check("with both enforcers killed")

	for _, n := range []string{"n1", "n2"} {
		c.enf[n].start()
	}
	for _, n := range []string{"n1", "n2"} {
		c.enf[n].waitProtected(c.protectedOn(n))
	}
	check("after both enforcers restarted")
	t.Run("restarted enforcers decide again", func(t *testing.T) {
		c.expectAllowed(t, "web", "cache", 8080)
		c.expectDenied(t, "intruder", "cache", 8080)
	})
	t.Run("restart did not duplicate rules", func(t *testing.T) {
		for _, p := range c.spec.Pods {
			if p.Unprotected {
				continue
			}
			r := c.rules(p.Name)
			seen := map[string]bool{}
			for _, l := range strings.Split(r, "\n") {
				if seen[l] {
					t.Errorf("%s: rule twice after restart: %s", p.Name, l)
				}
				seen[l] = true
			}
		}
	})

	t.Run("SIGTERM leaves nothing behind", func(t *testing.T) {
		for _, n := range []string{"n1", "n2"} {
			if err := c.enf[n].stop(); err != nil {
				t.Errorf("enforcer %s: %v (want exit status 0)", n, err)
			}
		}
		for _, p := range c.spec.Pods {
			if got := c.rules(p.Name); got != c.baseline[p.Name] {
				t.Errorf("%s: rules after stop differ from before start:\nbefore:\n%s\nafter:\n%s", p.Name, c.baseline[p.Name], got)
			}
			if q := c.queues(p.Name); q != "" {
				t.Errorf("%s: NFQUEUE still bound after stop: %s", p.Name, q)
			}
		}
	})
	// Removing protection must not cut the connection either.
	check("after the enforcers stopped")
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
	spec.Pods = append(spec.Pods, podSpec{Name: "batch", Namespace: "x", Node: "n2", Labels: map[string]string{"app": "batch"}})
	c := newCluster(t, spec)

	c.expectDenied(t, "batch", "db", 5432)

	t.Run("relabelled client is signed with its new labels", func(t *testing.T) {
		c.setLabels("batch", map[string]string{"app": "web"})
		if err := eventuallyConnects(c, "batch", "db", 5432); err != nil {
			t.Fatalf("batch relabelled app=web: %v\nn2 log:\n%s", err, c.enf["n2"].log())
		}
		c.expectAllowed(t, "batch", "db", 5432)
		c.expectFlow(t, "n1", flowMatch{Direction: "ingress", Local: "x/db", Peer: "x/batch", Verdict: "allow"}, "x/db-ingress", "x/db-ingress")
		c.setLabels("batch", map[string]string{"app": "batch"})
		if err := eventuallyRefused(c, "batch", "db", 5432); err != nil {
			t.Fatal(err)
		}
		c.expectDenied(t, "batch", "db", 5432)
	})

	t.Run("invalid edit keeps the last good set", func(t *testing.T) {
		writeAtomic(t, c.store+"/broken.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: \"Not_A_Name\"}\n")
		time.Sleep(500 * time.Millisecond) // several polls
		c.expectAllowed(t, "web", "cache", 8080)
		c.expectDenied(t, "intruder", "cache", 8080)
		if !c.enf["n2"].running() {
			t.Fatal("enforcer exited on an invalid store")
		}
		if err := os.Remove(c.store + "/broken.yaml"); err != nil {
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
				t.Fatalf("the new cache namespace got no rules or queue:\n%s\nn2 log:\n%s", c.rules("cache"), c.enf["n2"].log())
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
		creds, err := c.ca.IssueNode("n2", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := creds.Save(filepath.Join(c.dir, "n2.crt"), filepath.Join(c.dir, "n2.key")); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); !strings.Contains(c.enf["n2"].log(), "node credentials rotated"); {
			if time.Now().After(deadline) {
				t.Fatalf("n2 did not rotate its credentials:\n%s", c.enf["n2"].log())
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
		saved := c.spec.Pods
		var without []podSpec
		for _, p := range saved {
			if p.Name != "cache" {
				without = append(without, p)
			}
		}
		c.spec.Pods = without
		c.writeStore()
		c.enf["n2"].waitProtected(c.protectedOn("n2"))
		if got := c.rules("cache"); got != c.baseline["cache"] {
			t.Errorf("cache released, but its rules differ from before:\nbefore:\n%s\nnow:\n%s", c.baseline["cache"], got)
		}
		if q := c.queues("cache"); q != "" {
			t.Errorf("cache released, but a queue is still bound: %s", q)
		}
		c.spec.Pods = saved
		c.writeStore()
		c.enf["n2"].waitProtected(c.protectedOn("n2"))
		c.expectDenied(t, "intruder", "cache", 8080)
		c.expectAllowed(t, "web", "cache", 8080)
	})
}

// recreateHost deletes host's namespace and makes a new one under the same
// name on the same node, as a restarted pod sandbox would, with a fresh
// server on port.
func (c *cluster) recreateHost(t *testing.T, host string, port uint16) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	node := c.host(host).Node
	// A socket keeps its namespace (and so its veth) alive: close ours.
	// The enforcer's queue socket goes when the agent sees the namespace gone.
	c.server(t, host, port).ln.Close()
	if err := c.topo.RemoveHost(ctx, host); err != nil {
		t.Fatal(err)
	}
	// The node-side end of the old veth pair disappears asynchronously
	// after the namespace is deleted; until then its name is taken.
	var h *topology.Host
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if h, err = c.topo.AddHost(ctx, node, host); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	// The node may still map the address to the old veth's MAC address;
	// a real sandbox restart announces itself, this one is forgotten.
	if err := c.topo.Node(node).NS.Exec(ctx, "ip", "neigh", "flush", "dev", "br0"); err != nil {
		t.Fatal(err)
	}
	// The server lives as long as the cluster, not just this subtest.
	c.servers[host+":"+strconv.Itoa(int(port))] = startServer(c.t, h, port)
}

func (c *cluster) setLabels(pod string, labels map[string]string) {
	for i := range c.spec.Pods {
		if c.spec.Pods[i].Name == pod {
			c.spec.Pods[i].Labels = labels
		}
	}
	c.writeStore()
}

func (e *enforcerProc) log() string {
	b, _ := os.ReadFile(e.logFile)
	return tail(string(b), 3000)
}

// eventuallyConnects retries from -> to:port for up to 5 s (the store is
// polled) and closes the connection it gets once the server application
// has accepted it (the accept comes after the client's connect returns: the
// final ACK still crosses both enforcers).
func eventuallyConnects(c *cluster, from, to string, port uint16) error {
	s := c.servers[to+":"+strconv.Itoa(int(port))]
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
