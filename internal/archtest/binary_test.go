package archtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/bireme/bireme/internal/testbin"
)

// buildTags are the tags every build of cmd/bireme uses (Makefile: TAGS).
const buildTags = testbin.BuildTags

// TestBinaryLeavesOutHTMLTemplate: html/template (and text/template's
// execution) looks methods up by name, so a binary that links it keeps
// every exported method of every type: gRPC's golang.org/x/net/trace
// brought it in with the CRI client, and the agent grew by about 20 MB of
// RSS at scale (docs/benchmarks.md). Built with the project's tags,
// cmd/bireme must not depend on either.
func TestBinaryLeavesOutHTMLTemplate(t *testing.T) {
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		goTool = "go"
	}
	cmd := exec.Command(goTool, "list", "-deps", "-tags", buildTags, "./cmd/bireme")
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "html/template" || dep == "golang.org/x/net/trace" {
			t.Errorf("cmd/bireme (tags %s) depends on %s: `go list -deps` shows who imports it", buildTags, dep)
		}
	}
}

// TestBuildsUseTheTags: every command in the Makefile and scripts/ that
// builds cmd/bireme passes the project's tags, or the binary users and the
// tests run is the larger one.
func TestBuildsUseTheTags(t *testing.T) {
	root := repoRoot(t)
	files, err := filepath.Glob(filepath.Join(root, "scripts", "*.sh"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join(root, "Makefile"))
	build := regexp.MustCompile(`\bbuild\b.*\./cmd/bireme\b`)
	found := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") || !build.MatchString(line) {
				continue
			}
			found++
			if !strings.Contains(line, "-tags "+buildTags) && !strings.Contains(line, "-tags $(TAGS)") {
				t.Errorf("%s:%d builds cmd/bireme without -tags %s: %s", filepath.Base(f), i+1, buildTags, strings.TrimSpace(line))
			}
		}
	}
	if found == 0 {
		t.Error("no build of cmd/bireme found in the Makefile or scripts/: the pattern is out of date")
	}
}

// TestGoBuildsGoThroughTestbin: Go code that builds cmd/bireme (the
// bench harness, the end-to-end tests) does it with testbin.Build, the one
// place that knows the tags; a `go build` of its own would silently
// measure or test the larger binary.
func TestGoBuildsGoThroughTestbin(t *testing.T) {
	root := repoRoot(t)
	own := filepath.Join(root, "internal", "testbin", "testbin.go")
	goBuild := regexp.MustCompile(`"build".*cmd/bireme`)
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || path == own {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(data), "\n") {
			if goBuild.MatchString(line) && !strings.Contains(line, "regexp.MustCompile") {
				rel, _ := filepath.Rel(root, path)
				t.Errorf("%s:%d builds cmd/bireme itself; call testbin.Build (it passes -tags %s): %s", rel, i+1, buildTags, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
