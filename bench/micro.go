package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/bireme/bireme/bench/report"
)

// microPackages hold the micro-benchmarks the document collects.
var microPackages = []string{"./tokens/", "./policy/", "./enforcer/"}

// runMicro runs the packages' Go benchmarks (bounded to 10 minutes) and
// returns their lines; problems (a package missing or failing) are reported
// in the second value, next to whatever did run.
func runMicro(ctx context.Context) ([]report.Micro, string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	var problems []string
	var all []report.Micro
	root, err := moduleRoot(ctx)
	if err != nil {
		return nil, err.Error()
	}
	for _, pkg := range microPackages {
		if _, err := os.Stat(filepath.Join(root, pkg)); err != nil {
			problems = append(problems, fmt.Sprintf("%s does not exist", pkg))
			continue
		}
		fmt.Fprintf(os.Stderr, "bench: micro-benchmarks of %s\n", pkg)
		cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", ".", "-benchmem", pkg)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		ms := report.ParseGoBench(string(out))
		all = append(all, ms...)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s: %v: %s", pkg, err, lastLines(string(out), 5)))
		case len(ms) == 0:
			problems = append(problems, fmt.Sprintf("%s has no Benchmark functions", pkg))
		}
	}
	return all, strings.Join(problems, "; ")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}
