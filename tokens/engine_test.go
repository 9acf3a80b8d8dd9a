package tokens

import (
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/bireme/bireme/identity"
)

func TestHandshake(t *testing.T) {
	_, ce, se := newPair(t)
	client := workload("frontend", "web-1", 3)
	server := workload("backend", "api-1", 2)
	for i := 0; i < 3; i++ { // cold, then cached
		clientSaw, serverSaw := handshake(t, ce, se, client, server)
		want := client.Clone()
		want.Cluster = "cluster.local"
		if !reflect.DeepEqual(serverSaw, want) {
			t.Fatalf("server saw %+v, want %+v", serverSaw, want)
		}
		want = server.Clone()
		want.Cluster = "cluster.local"
		if !reflect.DeepEqual(clientSaw, want) {
			t.Fatalf("client saw %+v, want %+v", clientSaw, want)
		}
	}
	if client.Cluster != "" {
		t.Fatal("NewSYN modified the caller's identity")
	}
}

// Returned identities are copies: changing one changes no later result.
func TestPeerIdentityIsACopy(t *testing.T) {
	_, ce, se := newPair(t)
	client, server := workload("x", "c", 1), workload("y", "s", 1)
	_, seen := handshake(t, ce, se, client, server)
	seen.Labels["example.com/label-00"] = "tampered"
	_, again := handshake(t, ce, se, client, server)
	if again.Labels["example.com/label-00"] != "value-00" {
		t.Fatal("a cached identity was mutated through a returned one")
	}
}

// The brief's size budget: with 10 labels of 30 bytes, SYN < 1000 bytes,
// SYN-ACK similar, ACK <= 20.
func TestMessageSizes(t *testing.T) {
	f, ce, se := newPair(t)
	client := workload("frontend", "web-7d9f8c6b5-abcde", 10)
	h := startHandshake(t, ce, se, client, workload("backend", "api-5c6d7e8f9-fghij", 10))
	syn, ch, synack := h.syn, h.ch, h.synack
	if _, err := ch.ConsumeSYNACK(synack, testServerISN); err != nil {
		t.Fatal(err)
	}
	ack, err := ch.NewACK()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("SYN %d bytes (certificate %d), SYN-ACK %d bytes, ACK %d bytes", len(syn), len(f.a.Cert.Raw), len(synack), len(ack))
	if len(syn) >= 1000 {
		t.Errorf("SYN is %d bytes, want < 1000", len(syn))
	}
	if len(synack) >= 1000+2*NonceSize {
		t.Errorf("SYN-ACK is %d bytes, want < %d", len(synack), 1000+2*NonceSize)
	}
	if len(ack) > 20 {
		t.Errorf("ACK is %d bytes, want <= 20", len(ack))
	}
}

// Many goroutines share two engines; run with -race.
func TestConcurrentHandshakes(t *testing.T) {
	f, ce, se := newPair(t)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				client := workload("ns", "client", g%3)
				server := workload("ns", "server", i%2)
				syn, ch, err := ce.NewSYN(client, testConn)
				if err != nil {
					t.Error(err)
					return
				}
				sh, err := se.ConsumeSYN(syn, testConn)
				if err != nil {
					t.Error(err)
					return
				}
				synack, err := sh.NewSYNACK(server, testServerISN)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := ch.ConsumeSYNACK(synack, testServerISN); err != nil {
					t.Error(err)
					return
				}
				ack, _ := ch.NewACK()
				if err := sh.ConsumeACK(ack); err != nil {
					t.Error(err)
					return
				}
				if g == 0 && i == 10 {
					if err := ce.Rotate(mustIssue(t, f.ca, "node-a")); err != nil {
						t.Error(err)
					}
				}
				if g == 1 && i == 5 {
					if err := se.SetTrust(f.bundle); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
}

func mustIssue(t testing.TB, ca *CA, node string) *NodeCredentials {
	t.Helper()
	c, err := ca.IssueNode(node, 0)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Retransmissions: a retransmitted SYN-ACK carries the same bytes, and a
// duplicate SYN-ACK or ACK is accepted again.
func TestRetransmissions(t *testing.T) {
	_, ce, se := newPair(t)
	h := startHandshake(t, ce, se, workload("ns", "c", 1), workload("ns", "s", 1))
	ch, sh, s1 := h.ch, h.sh, h.synack
	s2, err := sh.NewSYNACK(workload("ns", "s", 1), testServerISN)
	if err != nil {
		t.Fatal("retransmitted NewSYNACK:", err)
	}
	if string(s1) != string(s2) {
		t.Fatal("a retransmitted SYN-ACK differs")
	}
	// Each call returns its own bytes: what a caller does with one (the
	// datapath writes into packets) does not change the next.
	s2[len(s2)-1] ^= 1
	if s3, err := sh.NewSYNACK(workload("ns", "s", 1), testServerISN); err != nil || string(s3) != string(s1) {
		t.Fatalf("SYN-ACK after a caller changed an earlier one: %v, same bytes %v", err, string(s3) == string(s1))
	}
	if n, ok := SYNACKClientNonce(s1); !ok || n != ch.Nonce() {
		t.Fatal("SYNACKClientNonce does not return the echoed nonce")
	}
	for i := 0; i < 2; i++ {
		if _, err := ch.ConsumeSYNACK(s1, testServerISN); err != nil {
			t.Fatal(err)
		}
	}
	if ch.PeerNode() != "node-b" || sh.PeerNode() != "node-a" {
		t.Fatalf("peer nodes %q, %q", ch.PeerNode(), sh.PeerNode())
	}
	ack, _ := ch.NewACK()
	for i := 0; i < 2; i++ {
		if err := sh.ConsumeACK(ack); err != nil {
			t.Fatal(err)
		}
	}
}

func TestNewEngineErrors(t *testing.T) {
	f := newFixture(t, "cluster.local")
	for name, cfg := range map[string]Config{
		"no trust":       {Credentials: f.a},
		"no credentials": {Trust: f.bundle},
		"key mismatch":   {Trust: f.bundle, Credentials: &NodeCredentials{Node: "node-a", TrustDomain: "cluster.local", Cert: f.a.Cert, Key: f.b.Key}},
		"name mismatch":  {Trust: f.bundle, Credentials: &NodeCredentials{Node: "node-x", TrustDomain: "cluster.local", Cert: f.a.Cert, Key: f.a.Key}},
		"CA as node":     {Trust: f.bundle, Credentials: &NodeCredentials{Node: "", TrustDomain: "cluster.local", Cert: f.ca.Cert, Key: f.ca.Key}},
		"tiny lifetime":  {Trust: f.bundle, Credentials: f.a, TokenLifetime: time.Second},
		// A peer configured alike would refuse this node's own tokens.
		"peer lifetime cap below own": {Trust: f.bundle, Credentials: f.a, TokenLifetime: 5 * time.Minute, MaxPeerTokenLifetime: 4 * time.Minute},
	} {
		if _, err := NewEngine(cfg); err == nil {
			t.Errorf("%s: NewEngine accepted", name)
		}
	}
	e := newTestEngine(t, f.a, f.bundle, nil)
	if e.TrustDomain() != "cluster.local" {
		t.Fatal(e.TrustDomain())
	}
	for name, id := range map[string]*identity.Identity{
		"nil":          nil,
		"no pod":       {Namespace: "ns"},
		"no namespace": {Pod: "p"},
	} {
		if _, _, err := e.NewSYN(id, testConn); err == nil {
			t.Errorf("NewSYN(%s, testConn) accepted", name)
		}
	}
}
