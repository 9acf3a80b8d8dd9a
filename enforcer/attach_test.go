package enforcer

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/bireme/bireme/identity"
)

// Attaching a namespace that is gone fails with an error (the agent then
// retries when it exists); it used to crash the enforcer with a nil
// dereference while closing what it had opened.
func TestAttachVanishedNamespace(t *testing.T) {
	p := newPair(t, 0)
	err := p.e.Attach(context.Background(), Workload{
		Identity: &identity.Identity{Namespace: "t", Pod: "gone"},
		NetNS:    filepath.Join(t.TempDir(), "no-such-netns"),
	})
	if err == nil {
		t.Fatal("attached a namespace that does not exist")
	}
}
