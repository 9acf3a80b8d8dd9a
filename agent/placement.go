package agent

import (
	"sync/atomic"

	"github.com/bireme/bireme/agent/desired"
)

// LivePlacement is the pod placement in force: the enforcer asks it, for
// every peer token, which node runs the peer's pod
// (enforcer.Config.Placement), and the agent swaps in each placement the
// source delivers, as it does the policy. Until the first one it knows no
// pod, so every peer token of the local trust domain is refused (fail
// closed); the agent protects nothing before the first state either.
type LivePlacement struct {
	current atomic.Pointer[desired.Placement]
}

// NewLivePlacement returns a LivePlacement that knows no pod yet.
func NewLivePlacement() *LivePlacement { return &LivePlacement{} }

// Swap puts p in force.
func (l *LivePlacement) Swap(p desired.Placement) { l.current.Store(&p) }

// NodeOf returns the node the placement in force runs the pod on, and
// false for a pod it does not know. Safe for concurrent use; it runs on the
// packet path.
func (l *LivePlacement) NodeOf(namespace, pod string) (node string, known bool) {
	p := l.current.Load()
	if p == nil {
		return "", false
	}
	return p.NodeOf(namespace, pod)
}
