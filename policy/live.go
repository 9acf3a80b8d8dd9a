package policy

import (
	"sync/atomic"

	"github.com/bireme/bireme/identity"
)

// Live is the policy in force: an Engine that can be replaced atomically
// while enforcer queues keep deciding. A swap applies to every decision
// that starts after it (new connections); nothing already decided is
// revisited. The zero Live, like a Live holding nil, denies everything.
type Live struct {
	engine atomic.Pointer[Engine]
}

var _ Decider = (*Live)(nil)

// NewLive returns a Live holding e (nil: deny everything until a Swap).
func NewLive(e *Engine) *Live {
	l := &Live{}
	l.engine.Store(e)
	return l
}

// Swap puts e in force for all later decisions.
func (l *Live) Swap(e *Engine) { l.engine.Store(e) }

// Engine returns the Engine in force (nil if none).
func (l *Live) Engine() *Engine { return l.engine.Load() }

// Decide implements [Decider] with the Engine in force; with none it fails
// closed.
func (l *Live) Decide(local *identity.Identity, peer Peer, dir Direction, port uint16, protocol string) Decision {
	e := l.engine.Load()
	if e == nil {
		return Decision{Rule: -1, Reason: "denied: no policy loaded"}
	}
	return e.Decide(local, peer, dir, port, protocol)
}
