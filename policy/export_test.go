package policy

import "github.com/bireme/bireme/identity"

// What the external tests (package policy_test, which may import k8s to
// build objects and identities) reach of the package's insides. Compiled
// into tests only.

// DecisionCacheSize is the bound of an Engine's decision cache.
const DecisionCacheSize = decisionCacheSize

// DecideUncached answers a TCP question as a cache miss does: both
// identity digests and the full walk of the selecting policies, with no
// cache read or written.
func (e *Engine) DecideUncached(local *identity.Identity, peer Peer, dir Direction, port uint16) Decision {
	keyOf(local)
	if peer.Identity != nil {
		keyOf(peer.Identity)
	}
	return e.decideFresh(local, e.selectionFor(local), peer, dir, port, protoTCP)
}
