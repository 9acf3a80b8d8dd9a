package tokens

import (
	"testing"

	"github.com/bireme/bireme/identity"
)

// A sender that puts reserved labels in its token (a pod that labelled
// itself bireme.io/service-account: web, on a node that signed what it was
// given) does not change what policy sees on the receiving side: the
// pseudo-labels come from the signed "sa" and "ns" claims, and the forged
// entries are dropped from the peer identity both ways.
func TestPeerReservedLabelsComeFromSignedClaims(t *testing.T) {
	_, ce, se := newPair(t)
	client := workload("shop", "forger", 1)
	client.ServiceAccount = "batch"
	client.Labels[identity.LabelServiceAccount] = "web"
	client.Labels[identity.LabelNamespace] = "pay"
	client.NamespaceLabels[identity.LabelNamespace] = "pay"
	server := workload("pay", "db", 1)
	server.ServiceAccount = "db"
	server.Labels[identity.LabelServiceAccount] = "admin"

	clientSaw, serverSaw := handshake(t, ce, se, client, server)
	for _, c := range []struct {
		side     string
		peer     *identity.Identity
		sa, ns   string
		nLabels  int
		nNSLabel int
	}{
		{"server's view of the client", serverSaw, "batch", "shop", 1, 1},
		{"client's view of the server", clientSaw, "db", "pay", 1, 1},
	} {
		if sa, _ := c.peer.PodLabel(identity.LabelServiceAccount); sa != c.sa {
			t.Errorf("%s: service account pseudo-label %q, want the signed %q", c.side, sa, c.sa)
		}
		if ns, _ := c.peer.PodLabel(identity.LabelNamespace); ns != c.ns {
			t.Errorf("%s: namespace pseudo-label %q, want the signed %q", c.side, ns, c.ns)
		}
		if ns, _ := c.peer.NamespaceLabel(identity.LabelNamespace); ns != c.ns {
			t.Errorf("%s: namespace label %q, want the signed %q", c.side, ns, c.ns)
		}
		for k := range c.peer.Labels {
			if identity.IsReserved(k) {
				t.Errorf("%s: peer identity kept the sender's reserved label %s", c.side, k)
			}
		}
		if len(c.peer.Labels) != c.nLabels || len(c.peer.NamespaceLabels) != c.nNSLabel {
			t.Errorf("%s: labels %v, namespace labels %v", c.side, c.peer.Labels, c.peer.NamespaceLabels)
		}
	}
}
