package lab

import "github.com/bireme/bireme/lab/topology"

// natPeerArgs declares, in a lab with NAT between nodes, that the lab's own
// trust domain is reached through NAT from the nodes' router-facing
// addresses: v2 handshakes bind the client's address, which a server on
// another node sees translated to its node's. Without the declaration
// every connection between nodes fails closed (endpoint-mismatch).
func (l *Lab) natPeerArgs() []string {
	if !l.st.Options.NAT || l.st.Options.NoNATDeclaration {
		return nil
	}
	return []string{"--nat-peers", l.st.Options.Cluster + "=" + topology.NATSources().String()}
}
