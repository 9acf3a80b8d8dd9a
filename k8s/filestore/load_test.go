package filestore

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFiles writes name -> content into a fresh directory.
func writeFiles(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// np renders a NetworkPolicy document; spec is YAML indented by two spaces.
func np(ns, name, spec string) string {
	return fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: \"%s\", namespace: \"%s\"}\nspec:\n%s\n", name, ns, spec)
}

// worldYAML: namespace x, pods x/a (app=web, http:80) and x/c (app=client).
const worldYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: client}}
spec: {containers: [{name: c}]}
`

// TestLoadDir: the files LoadDir picks (YAML, YML and JSON directly in the
// directory, no dot files, no subdirectories), and errors naming the file.
func TestLoadDir(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"a.yaml":       worldYAML,
		"b.json":       `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p2","namespace":"x"},"spec":{"podSelector":{}}}`,
		"c.yml":        np("x", "p1", "  podSelector: {}"),
		"d.txt":        "not read",
		".hidden.yaml": "not: [read",
	})
	if err := os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	objs, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Namespaces) != 1 || len(objs.Pods) != 2 || len(objs.Policies) != 2 {
		t.Fatalf("got %d namespaces, %d pods, %d policies; want 1, 2, 2", len(objs.Namespaces), len(objs.Pods), len(objs.Policies))
	}
	if _, err := LoadDir(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing directory loaded")
	}
	bad := writeFiles(t, map[string]string{"policies.yaml": np("x", "p", "  podSelecter: {}")})
	_, err = LoadDir(bad)
	if want := filepath.Join(bad, "policies.yaml") + `: NetworkPolicy x/p: unknown field "spec.podSelecter"`; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v; want %q", err, want)
	}
}

func TestLoadPaths(t *testing.T) {
	dir := writeFiles(t, map[string]string{"world.yaml": worldYAML})
	other := writeFiles(t, map[string]string{"p.yaml": np("x", "p", "  podSelector: {}")})
	objs, err := LoadPaths(dir, filepath.Join(other, "p.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Pods) != 2 || len(objs.Policies) != 1 {
		t.Fatalf("got %d pods, %d policies", len(objs.Pods), len(objs.Policies))
	}
	if _, err := LoadPaths(dir, dir); err == nil || !strings.Contains(err.Error(), "duplicate") {
		t.Fatalf("same directory twice: %v", err)
	}
	if _, err := LoadPaths(filepath.Join(dir, "nope")); err == nil {
		t.Fatal("missing path loaded")
	}
}
