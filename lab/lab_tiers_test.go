package lab_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/lab"
	"github.com/bireme/bireme/netns/netnstest"
)

// flowRecords reads every enforcer's flow records of the lab.
func flowRecords(t *testing.T, l *lab.Lab) []flowlog.Record {
	t.Helper()
	var files []string
	for _, n := range l.Status().Nodes {
		files = append(files, n.Flows)
	}
	recs, err := lab.ReadFlowFiles(files...)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestLabTiers: ClusterNetworkPolicy tiers on real enforcers
// (testdata/tiers.yaml): an Admin Deny that x's allow-all NetworkPolicy
// cannot override, an Admin Pass that hands z/a to that NetworkPolicy, a
// Baseline default-deny of y that y's NetworkPolicy opens for y/a, an
// Admin Deny in audit mode that lets x -> z through and records wouldDeny,
// the decisions counted by tier, and then a NetworkPolicy in audit mode.
func TestLabTiers(t *testing.T) {
	netnstest.RequireNamespaces(t)
	l, _ := upLab(t, lab.Options{}, "testdata/three.yaml", "testdata/tiers.yaml")
	want := func(from, to string) bool {
		switch nsOf(to) {
		case "x": // admin-deny-z, except z/a passed to x/allow-all
			return nsOf(from) != "z" || from == "z/a"
		case "y": // baseline-deny-y; y/open-a admits x into y/a
			return to == "y/a" && nsOf(from) == "x"
		}
		return true // z: audit only
	}
	got := probe(t, l)
	expectMatrix(t, "tiers", got, l.Pods(), want)
	for probe, reason := range map[string]string{
		"z/b>x/a:80": `denied by ClusterNetworkPolicy admin-deny-z (Admin tier, priority 10) ingress rule 0 "no-z"`,
		"x/a>y/b:80": "denied by ClusterNetworkPolicy baseline-deny-y (Baseline tier, priority 100) ingress rule 0",
		"z/a>y/a:80": "denied: selected by y/open-a and no rule allows",
	} {
		if r := got[probe]; !strings.Contains(r.Reason, reason) {
			t.Errorf("%s refused for %q, want %q", probe, r.Reason, reason)
		}
	}
	// The audited denial: allowed, and recorded as what it would deny.
	var would, passed, tiers int
	for _, r := range flowRecords(t, l) {
		if r.Direction != "ingress" || r.Local == nil || r.Peer == nil {
			continue
		}
		if r.Tier != "" {
			tiers++
		}
		if r.Local.Namespace == "z" && r.Peer.Namespace == "x" {
			if r.Verdict != flowlog.Allow || r.WouldDeny == nil || r.WouldDeny.Policy != "audit-deny-x" ||
				r.WouldDeny.Rule != 0 || r.WouldDeny.RuleName != "no-x-yet" {
				t.Errorf("x -> z record %+v (wouldDeny %+v), want allowed, wouldDeny by audit-deny-x rule 0", r, r.WouldDeny)
			}
			would++
		} else if r.WouldDeny != nil {
			t.Errorf("record %s -> %s has wouldDeny %+v", r.Peer.Ref(), r.Local.Ref(), r.WouldDeny)
		}
		if r.Local.Namespace == "x" && r.Peer.Ref() == "z/a" {
			if r.Verdict != flowlog.Allow || r.Tier != "networkpolicy" || !strings.Contains(r.Reason, "passed by ClusterNetworkPolicy admin-pass-z-a") {
				t.Errorf("z/a -> x record: %s %s %q", r.Verdict, r.Tier, r.Reason)
			}
			passed++
		}
	}
	if would == 0 || passed == 0 || tiers == 0 {
		t.Errorf("records: %d x -> z with wouldDeny, %d z/a -> x passed, %d with a tier; want some of each", would, passed, tiers)
	}
	// The decisions counted by tier: node1 runs x/a (Admin denials from z)
	// and y/b (Baseline denials).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tier := range []string{"admin", "baseline"} {
		labels := map[string]string{"verdict": "deny", "tier": tier, "direction": "ingress"}
		if v, err := l.Metric(ctx, "node1", "bireme_decisions_total", labels); err != nil || v < 1 {
			t.Errorf("node1 bireme_decisions_total%v = %v, %v; want at least 1", labels, v, err)
		}
	}

	// A NetworkPolicy in audit mode: nothing changes for traffic, and the
	// records of what it would refuse say so (rule -1: it would isolate
	// z/c and no rule admits the peer).
	apply(t, l, "testdata/audit-np.yaml") // returns with the enforcers reloaded
	applied := time.Now()
	expectMatrix(t, "tiers and an audited NetworkPolicy", probe(t, l), l.Pods(), want)
	var npWould, npFine int
	for _, r := range flowRecords(t, l) {
		if r.Time.Before(applied) || r.Direction != "ingress" || r.Local == nil || r.Local.Ref() != "z/c" || r.Peer == nil {
			continue
		}
		switch nsOf(r.Peer.Ref()) {
		case "y":
			if r.Verdict != flowlog.Allow || r.WouldDeny == nil || r.WouldDeny.Policy != "z/audit-c" || r.WouldDeny.Rule != -1 ||
				!strings.Contains(r.Reason, "(audit mode: would be denied: selected by z/audit-c and no rule allows)") {
				t.Errorf("%s -> z/c record: %s %q wouldDeny %+v; want allowed, wouldDeny by z/audit-c rule -1", r.Peer.Ref(), r.Verdict, r.Reason, r.WouldDeny)
			}
			npWould++
		case "z":
			if r.Verdict != flowlog.Allow || r.WouldDeny != nil {
				t.Errorf("%s -> z/c record: %s wouldDeny %+v; want allowed, nothing it would deny", r.Peer.Ref(), r.Verdict, r.WouldDeny)
			}
			npFine++
		}
	}
	if npWould == 0 || npFine == 0 {
		t.Errorf("records into z/c after the audited NetworkPolicy: %d from y with wouldDeny, %d from z without; want some of each", npWould, npFine)
	}
}

// TestLabUpstreamIPBlock runs the Kubernetes NetworkPolicy e2e cases on
// ipBlock against pods (test/e2e/network/netpol): "should allow egress
// access to server in CIDR block", "should enforce except clause while
// egress access to server in CIDR block" and "should ensure an IP
// overlapping both IPBlock.CIDR and IPBlock.Except is allowed". The
// server is an identified pod; by default an ipBlock matches its address.
func TestLabUpstreamIPBlock(t *testing.T) {
	netnstest.RequireNamespaces(t)
	l, _ := upLab(t, lab.Options{}, "testdata/three.yaml")
	server, ok := l.Pod("y/c")
	if !ok {
		t.Fatal("no pod y/c")
	}
	host := netip.PrefixFrom(server.Addr, 32).String()
	subnet := netip.PrefixFrom(server.Addr, 24).Masked().String()
	dir := t.TempDir()
	write := func(name, egress string) string {
		f := filepath.Join(dir, name+".yaml")
		doc := fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: "x"}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
%s`, egress)
		if err := os.WriteFile(f, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, step := range []struct {
		name          string
		egress        string
		server, other bool // x/a reaches y/c (the server), y/a (same node as x/a)
	}{
		{"egress access to server in CIDR block",
			"  - to: [{ipBlock: {cidr: " + host + "}}]\n", true, false},
		{"except clause while egress access to server in CIDR block",
			"  - to: [{ipBlock: {cidr: 198.18.0.0/16, except: [" + host + "]}}]\n", false, true},
		{"IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
			"  - to: [{ipBlock: {cidr: " + subnet + ", except: [" + host + "]}}]\n  - to: [{ipBlock: {cidr: " + host + "}}]\n", true, false},
	} {
		apply(t, l, write(strings.ReplaceAll(step.name, " ", "-"), step.egress))
		got := probe(t, l)
		for to, want := range map[string]bool{"y/c": step.server, "y/a": step.other} {
			if r := got["x/a>"+to+":80"]; r.Connected != want {
				t.Errorf("%s: x/a -> %s connected=%v, want %v (%s)", step.name, to, r.Connected, want, r.Reason)
			}
		}
		// Other clients are not selected.
		if r := got["x/b>y/c:80"]; !r.Connected {
			t.Errorf("%s: x/b -> y/c refused (%s)", step.name, r.Reason)
		}
	}
	// The records say the identified server was matched by its address.
	byAddr := 0
	for _, r := range flowRecords(t, l) {
		if r.Direction == "egress" && r.Local != nil && r.Local.Ref() == "x/a" && r.Peer != nil && r.Peer.Ref() == "y/c" &&
			r.Verdict == flowlog.Allow && r.MatchedByAddress {
			if !strings.Contains(r.Reason, "matched by address") {
				t.Errorf("record reason %q lacks \"matched by address\"", r.Reason)
			}
			byAddr++
		}
	}
	if byAddr == 0 {
		t.Error("no allowed x/a -> y/c egress record with matchedByAddress")
	}
}
