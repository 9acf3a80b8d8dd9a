package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/netns/netnstest"
	"github.com/bireme/bireme/supervisor"
)

// uninstallStore has one annotated pod on n1, one on n2 and one on n1
// without the annotation (not Bireme's).
const uninstallStore = `
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, annotations: {bireme.io/netns: ns-a}}
spec: {nodeName: n1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, annotations: {bireme.io/netns: ns-b}}
spec: {nodeName: n2, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x}
spec: {nodeName: n1, containers: [{name: c}]}
`

// TestUninstallNamespaces: uninstall targets the namespaces of the store's
// annotated pods of the node, plus those given with --netns, and refuses
// flags that name no node or half of one.
func TestUninstallNamespaces(t *testing.T) {
	store := t.TempDir()
	if err := os.WriteFile(filepath.Join(store, "store.yaml"), []byte(uninstallStore), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := uninstallOptions{node: "n1", store: store, netns: []string{"extra", "/proc/1/ns/net", "ns-a"}}.namespaces(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/proc/1/ns/net", "/run/netns/extra", "/run/netns/ns-a"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("namespaces = %v, want %v", got, want)
	}
	for name, o := range map[string]uninstallOptions{
		"nothing":       {},
		"node only":     {node: "n1"},
		"store only":    {store: store},
		"bad netns":     {netns: []string{"a/b"}},
		"missing store": {node: "n1", store: filepath.Join(store, "nope")},
	} {
		if _, err := o.namespaces(context.Background()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestUninstallLeavesNothing protects a namespace as an enforcer would and
// uninstalls it by --netns: iptables-save then shows no BIREME chain and no
// queue rule, in either family, and a namespace that is gone is skipped.
func TestUninstallLeavesNothing(t *testing.T) {
	netnstest.RequireNamespaces(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ns := netnstest.NewNS(t, netnstest.Prefix()+"-u")
	sup := supervisor.New(marks.Layout{Queues: 2})
	t.Cleanup(func() { _ = sup.Unprotect(context.Background(), ns.Path()) })
	if err := sup.Protect(ctx, ns.Path()); err != nil {
		t.Fatal(err)
	}
	save := func() string {
		t.Helper()
		var all strings.Builder
		for _, tool := range []string{"iptables-save", "ip6tables-save"} {
			out, err := ns.Output(ctx, tool)
			if err != nil {
				t.Fatal(err)
			}
			all.Write(out)
		}
		return all.String()
	}
	if !strings.Contains(save(), "BIREME-") {
		t.Fatalf("Protect installed no BIREME chain:\n%s", save())
	}
	var out bytes.Buffer
	gone := filepath.Join(t.TempDir(), "no-such-netns")
	if err := runUninstall(ctx, uninstallOptions{netns: []string{ns.Path(), gone}}, &out); err != nil {
		t.Fatal(err)
	}
	if rules := save(); strings.Contains(rules, "BIREME") || strings.Contains(rules, "NFQUEUE") {
		t.Errorf("rules left after uninstall:\n%s", rules)
	}
	if !strings.Contains(out.String(), ns.Path()+": rules removed") || !strings.Contains(out.String(), gone+": gone") {
		t.Errorf("uninstall output:\n%s", out.String())
	}
}
