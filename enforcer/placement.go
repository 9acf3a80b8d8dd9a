package enforcer

import (
	"fmt"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/tokens"
)

// Placement says which node runs each pod, as this node's desired state
// has it (the agent passes a live view, swapped when the state changes).
type Placement interface {
	// NodeOf returns the node the pod runs on, and false for a pod the
	// state does not know. It is called on the packet path, possibly from
	// several queue goroutines at once.
	NodeOf(namespace, pod string) (node string, known bool)
}

// ReasonWrongNode is the flow records' tokenError when a valid token of the
// local trust domain was signed by a node other than the one the local
// state runs the pod on, or names a pod the state does not know.
const ReasonWrongNode tokens.Reason = "wrong-node"

// checkPlacement refuses a peer identity that its signing node does not
// run: a node speaks only for its own workloads, so a compromised node key
// cannot claim the identity of a pod on another node. Only identities of
// the local trust domain are checked; whom another trust domain runs where
// is that domain's business (federation, later). A pod the local state
// does not know is refused too (fail closed): the state lists the pods of
// every node, so an unknown pod is one that does not exist, has left, or
// that this node has not heard of yet, and the client's SYN retransmission
// retries it once the state catches up.
func (e *Enforcer) checkPlacement(peer *identity.Identity, signer string) error {
	if peer.Cluster != e.cfg.Tokens.TrustDomain() {
		return nil
	}
	node, known := e.cfg.Placement.NodeOf(peer.Namespace, peer.Pod)
	switch {
	case !known:
		return &tokens.RejectError{Reason: ReasonWrongNode,
			Err: fmt.Errorf("token signed by node %s for pod %s, which is unknown to this node's store", signer, peer.Ref())}
	case node != signer:
		return &tokens.RejectError{Reason: ReasonWrongNode,
			Err: fmt.Errorf("token signed by node %s but pod %s runs on node %s", signer, peer.Ref(), node)}
	}
	return nil
}
