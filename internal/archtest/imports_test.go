// Package archtest checks that the packages import each other only in the
// directions docs/architecture.md documents. The document is the single
// source: its package table has a column "may import", and this test reads
// that table and compares it with what `go list` reports, so the picture a
// newcomer reads and the code cannot drift apart.
package archtest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/bireme/bireme"

// rule is one row of the documented package table.
type rule struct {
	pkg     string          // "enforcer", "k8s/filestore", ...
	imports map[string]bool // the project packages it may import
}

// readRules parses the table under "## Packages" in docs/architecture.md:
//
//	| package | its job | may import |
//	| `enforcer/` | ... | `marks`, `tokens`, ... |
//
// A "may import" cell of "—" or "-" means: no project package.
func readRules(t *testing.T, path string) map[string]rule {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("read the documented import graph: %v", err)
	}
	defer f.Close()
	rules := map[string]rule{}
	col := -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "|") {
			col = -1 // a table ended
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if col < 0 {
			for i, c := range cells {
				if c == "may import" {
					col = i
				}
			}
			continue
		}
		if col >= len(cells) || strings.HasPrefix(cells[0], "---") {
			continue
		}
		pkg := strings.TrimSuffix(strings.Trim(cells[0], "`"), "/")
		r := rule{pkg: pkg, imports: map[string]bool{}}
		for _, imp := range strings.Split(cells[col], ",") {
			imp = strings.TrimSuffix(strings.Trim(strings.TrimSpace(imp), "`"), "/")
			if imp == "" || imp == "—" || imp == "-" {
				continue
			}
			r.imports[imp] = true
		}
		rules[pkg] = r
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(rules) == 0 {
		t.Fatalf("%s: no package table with a \"may import\" column", path)
	}
	return rules
}

// governing returns the documented row for pkg: its own, or that of its
// nearest documented parent folder (a helper package such as
// "bench/report" follows "bench"'s row).
func governing(rules map[string]rule, pkg string) (rule, bool) {
	for p := pkg; ; {
		if r, ok := rules[p]; ok {
			return r, true
		}
		i := strings.LastIndex(p, "/")
		if i < 0 {
			return rule{}, false
		}
		p = p[:i]
	}
}

// allowed reports whether a package governed by r may import dep: dep is
// listed by name, or under a listed "base/..." (base and its subpackages).
func allowed(r rule, dep string) bool {
	if r.imports[dep] {
		return true
	}
	for imp := range r.imports {
		if base, ok := strings.CutSuffix(imp, "/..."); ok && (dep == base || strings.HasPrefix(dep, base+"/")) {
			return true
		}
	}
	return false
}

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// imports lists every package of the module with the project packages its
// non-test files import.
func imports(t *testing.T, root string) map[string][]string {
	t.Helper()
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		goTool = "go"
	}
	cmd := exec.Command(goTool, "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	graph := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg, ok := strings.CutPrefix(fields[0], module+"/")
		if !ok {
			continue
		}
		var deps []string
		for _, d := range fields[1:] {
			if d, ok := strings.CutPrefix(d, module+"/"); ok {
				deps = append(deps, d)
			}
		}
		graph[pkg] = deps
	}
	return graph
}

func TestImportsFollowDocumentedDirection(t *testing.T) {
	root := repoRoot(t)
	rules := readRules(t, filepath.Join(root, "docs", "architecture.md"))
	graph := imports(t, root)
	pkgs := make([]string, 0, len(graph))
	for p := range graph {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	for _, pkg := range pkgs {
		r, ok := governing(rules, pkg)
		if !ok {
			t.Errorf("package %s is not in docs/architecture.md's package table: add a row with its job and what it may import", pkg)
			continue
		}
		for _, dep := range graph[pkg] {
			if !allowed(r, dep) {
				t.Errorf("%s imports %s, against the documented direction (row %q of docs/architecture.md)", pkg, dep, r.pkg)
			}
		}
	}
	// Every row names a package that exists, so the table cannot keep
	// describing a package that was removed or renamed.
	for name := range rules {
		if _, ok := graph[name]; !ok {
			t.Errorf("docs/architecture.md documents %s/, which is not a package of the module", name)
		}
	}
}

// TestPolicyReadsNoFiles holds policy/ and its subpackages (policy/report)
// to working on typed objects: the file store is k8s/filestore's job, and
// reading flow files the command's.
func TestPolicyReadsNoFiles(t *testing.T) {
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		goTool = "go"
	}
	cmd := exec.Command(goTool, "list", "-f", `{{join .Imports "\n"}}`, "./policy/...")
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, imp := range strings.Fields(string(out)) {
		switch imp {
		case "os", "io/fs", "io/ioutil", "path/filepath", "sigs.k8s.io/yaml":
			t.Errorf("policy imports %s: reading or decoding files belongs in k8s/ and k8s/filestore", imp)
		}
	}
}

// TestRulesCatchAViolation makes sure the checker can fail: a row that
// forbids an import is reported.
func TestRulesCatchAViolation(t *testing.T) {
	r := rule{pkg: "enforcer", imports: map[string]bool{"tokens": true, "netns/...": true}}
	for _, c := range []struct {
		dep  string
		want bool
	}{
		{"tokens", true},
		{"supervisor", false},
		{"netns", true},
		{"netns/netnstest", true},
		{"netnsx", false},
		{"agent", false},
	} {
		if got := allowed(r, c.dep); got != c.want {
			t.Errorf("allowed(enforcer -> %s) = %v, want %v", c.dep, got, c.want)
		}
	}
}
