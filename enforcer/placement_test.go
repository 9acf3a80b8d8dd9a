package enforcer

import (
	"strings"
	"testing"

	"github.com/bireme/bireme/identity"
)

// fixedPlacement is a Placement that does not change: "namespace/pod" ->
// node.
type fixedPlacement map[string]string

func (p fixedPlacement) NodeOf(namespace, pod string) (string, bool) {
	node, ok := p[namespace+"/"+pod]
	return node, ok
}

// everyPodOn is a Placement that runs every pod on one node: for tests
// whose one token engine signs, as that node, for every workload.
type everyPodOn string

func (node everyPodOn) NodeOf(_, _ string) (string, bool) { return string(node), true }

// TestPlacementRefusesOtherNodesPods: both workloads' tokens are signed by
// node n1 (the pair's one engine). A peer whose pod the local state places
// on another node, or does not know, is refused on the SYN (server) and on
// the SYN-ACK (client), with a flow record naming the signer and the node.
func TestPlacementRefusesOtherNodesPods(t *testing.T) {
	syn := func(sport uint16) []byte { return seg(t, true, sport, true, false, linuxSYNOptions, nil) }
	synack := func(sport uint16) []byte { return seg(t, false, sport, true, true, linuxSYNOptions, nil) }
	lastReason := func(t *testing.T, p *pair) (reason, tokenErr string) {
		t.Helper()
		rs := p.flows.records(t)
		if len(rs) == 0 {
			t.Fatal("no flow record")
		}
		r := rs[len(rs)-1]
		if r.Verdict != "deny" {
			t.Errorf("verdict %s, want deny", r.Verdict)
		}
		return r.Reason, r.TokenError
	}

	for _, tt := range []struct {
		name      string
		placement fixedPlacement
		want      string
	}{
		{"client placed on another node", fixedPlacement{"t/cli": "n2", "t/srv": "n1"},
			"token signed by node n1 but pod t/cli runs on node n2"},
		{"client unknown to the store", fixedPlacement{"t/srv": "n1"},
			"token signed by node n1 for pod t/cli, which is unknown to this node's store"},
	} {
		t.Run("server: "+tt.name, func(t *testing.T) {
			p := newPairWith(t, Config{Placement: tt.placement}, true)
			v := pass(p.cli, syn(1), true)
			if !v.accept {
				t.Fatalf("client SYN: %+v", v)
			}
			if w := pass(p.srv, v.packet, false); w.accept {
				t.Fatalf("server accepted the SYN of a pod its signer does not run: %+v", w)
			}
			reason, tokenErr := lastReason(t, p)
			if !strings.Contains(reason, tt.want) || tokenErr != string(ReasonWrongNode) {
				t.Errorf("flow record reason %q, tokenError %q; want %q, %q", reason, tokenErr, tt.want, ReasonWrongNode)
			}
		})
	}

	t.Run("client: server placed on another node", func(t *testing.T) {
		p := newPairWith(t, Config{Placement: fixedPlacement{"t/cli": "n1", "t/srv": "n3"}}, true)
		v := pass(p.cli, syn(2), true)
		// The server's own view is the same placement: it refuses nothing
		// of the client's, which n1 runs.
		if w := pass(p.srv, v.packet, false); !w.accept {
			t.Fatalf("server SYN: %+v", w)
		}
		v = pass(p.srv, synack(2), true)
		if !v.accept {
			t.Fatalf("server SYN-ACK: %+v", v)
		}
		if w := pass(p.cli, v.packet, false); w.accept {
			t.Fatalf("client accepted the SYN-ACK of a pod its signer does not run: %+v", w)
		}
		if reason, _ := lastReason(t, p); !strings.Contains(reason, "token signed by node n1 but pod t/srv runs on node n3") {
			t.Errorf("flow record reason %q", reason)
		}
	})

	t.Run("placed on the signer: allowed", func(t *testing.T) {
		p := newPairWith(t, Config{Placement: fixedPlacement{"t/cli": "n1", "t/srv": "n1"}}, true)
		if v := p.proofACK(t, 3); !v.accept {
			t.Fatalf("handshake between pods their signer runs: %+v", v)
		}
	})

	t.Run("another trust domain is not checked here", func(t *testing.T) {
		p := newPairWith(t, Config{Placement: fixedPlacement{}}, false)
		foreign := &identity.Identity{Cluster: "elsewhere", Namespace: "t", Pod: "cli"}
		if err := p.e.checkPlacement(foreign, "m1"); err != nil {
			t.Errorf("identity of another trust domain: %v", err)
		}
	})
}
