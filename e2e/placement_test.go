package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/lab/topology"
)

// TestNodeSpeaksOnlyForItsOwnPods: a node's key signs only for the pods its
// node runs. Here n2's real credentials claim x/web, which the cluster's
// store places on n1: a second `bireme enforce --node n2`, with a store of
// its own, protects ext/mallory's namespace (a pod on n2 the lab leaves
// unprotected) as if it were x/web, so mallory's SYNs carry a valid token
// for x/web signed by n2. x/db admits x/web on 5432, yet db's enforcer (n1)
// refuses the connection and its flow record names the signer and the node.
func TestNodeSpeaksOnlyForItsOwnPods(t *testing.T) {
	c := newCluster(t, modelSpec(false))
	st := c.lab.Status()
	mallory := c.pod("mallory")

	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	if err := os.Mkdir(store, 0o755); err != nil {
		t.Fatal(err)
	}
	claim := fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}, annotations: {bireme.io/netns: %s}}
spec: {nodeName: n2, containers: [{name: main, image: none}]}
`, mallory.NS.Name)
	if err := os.WriteFile(filepath.Join(store, "claim.yaml"), []byte(claim), 0o644); err != nil {
		t.Fatal(err)
	}
	// The lab's key layout: keys/ca (the cluster CA), keys/nodes/NODE.
	keys := filepath.Join(st.StateDir, "keys")
	logFile, err := os.Create(filepath.Join(dir, "enforce.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	rogue := exec.Command(biremeBin, "enforce", "--node", "n2", "--store", store, "--cluster", trustDomain,
		"--ca-bundle", filepath.Join(keys, "ca", "ca.crt"),
		"--cert", filepath.Join(keys, "nodes", "n2", "node.crt"), "--key", filepath.Join(keys, "nodes", "n2", "node.key"),
		"--identity-networks", topology.HostsPrefix.String(), // as the lab's own enforcers
		"--flows", filepath.Join(dir, "flows.jsonl"), "--poll", "100ms")
	rogue.Stdout, rogue.Stderr = logFile, logFile
	rogue.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := rogue.Start(); err != nil {
		t.Fatal(err)
	}
	// Registered after the lab's teardown, so it runs first. Its rules in
	// mallory's namespace go with the namespace.
	t.Cleanup(func() {
		_ = rogue.Process.Kill()
		_ = rogue.Wait()
	})
	for deadline := time.Now().Add(15 * time.Second); c.queues("mallory") == "" || !strings.Contains(c.rules("mallory"), "-j BIREME-OUTPUT"); {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logFile.Name())
			t.Fatalf("the second n2 enforcer did not protect mallory's namespace:\n%s", tail(string(log), 3000))
		}
		time.Sleep(100 * time.Millisecond)
	}

	since := c.mark(t, "n1")
	c.expectDenied(t, "mallory", "db", 5432)
	want := "token signed by node n2 but pod x/web runs on node n1"
	if _, ok := c.waitRecordSince(t, "n1", since, func(r flowlog.Record) bool {
		return r.Verdict == flowlog.Deny && r.Local.Ref() == "x/db" && strings.Contains(r.Reason, want)
	}); !ok {
		t.Errorf("no n1 deny record naming %q:\n%s", want, c.dumpFlows(t, "n1"))
	}
	// The honest x/web, signed by n1 that runs it, still connects.
	c.expectAllowed(t, "web", "db", 5432)
}
