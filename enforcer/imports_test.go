package enforcer

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDoesNotImportSupervisor keeps the datapath self-contained: the
// enforcer and the supervisor share only marks.Layout, which the agent
// hands to both; the enforcer never reaches into the rule programming.
// (The tests may use the supervisor to install real rules.)
func TestDoesNotImportSupervisor(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "github.com/bireme/bireme/supervisor" {
			t.Fatal("enforcer imports supervisor (directly or through another package); share marks.Layout instead")
		}
	}
	if !strings.Contains(string(out), "github.com/bireme/bireme/marks") {
		t.Fatalf("go list -deps does not list marks, so it cannot show the enforcer's imports either:\n%s", out)
	}
}
