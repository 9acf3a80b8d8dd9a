package tokens_test

import (
	"fmt"
	"log"
	"net/netip"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/tokens"
)

// Two nodes of one cluster run the three-message handshake for a client
// workload on node-a and a server workload on node-b.
func Example() {
	ca, err := tokens.NewCA("cluster.local", 0)
	if err != nil {
		log.Fatal(err)
	}
	trust, err := tokens.NewTrustBundle(ca.Cert)
	if err != nil {
		log.Fatal(err)
	}
	engine := func(node string) *tokens.Engine {
		creds, err := ca.IssueNode(node, 0)
		if err != nil {
			log.Fatal(err)
		}
		e, err := tokens.NewEngine(tokens.Config{Credentials: creds, Trust: trust})
		if err != nil {
			log.Fatal(err)
		}
		return e
	}
	clientNode, serverNode := engine("node-a"), engine("node-b")
	client := &identity.Identity{Namespace: "shop", Pod: "web-1", Labels: map[string]string{"app": "web"}}
	server := &identity.Identity{Namespace: "shop", Pod: "db-1", Labels: map[string]string{"app": "db"}}

	// The connection as both sides see it (no NAT between them): the
	// addresses and ports, and the ISNs of the SYN and the SYN-ACK.
	conn := tokens.Endpoints{
		Client:    netip.MustParseAddrPort("198.18.1.2:40000"),
		Server:    netip.MustParseAddrPort("198.18.2.2:5432"),
		ClientISN: 1000,
	}
	const serverISN = 2000

	syn, ch, err := clientNode.NewSYN(client, conn) // rides in the SYN
	if err != nil {
		log.Fatal(err)
	}
	sh, err := serverNode.ConsumeSYN(syn, conn)
	if err != nil {
		log.Fatal(tokens.ReasonOf(err), err)
	}
	fmt.Println("server sees", sh.Peer(), sh.Peer().Labels)

	synack, err := sh.NewSYNACK(server, serverISN) // rides in the SYN-ACK
	if err != nil {
		log.Fatal(err)
	}
	peer, err := ch.ConsumeSYNACK(synack, serverISN)
	if err != nil {
		log.Fatal(tokens.ReasonOf(err), err)
	}
	fmt.Println("client sees", peer, peer.Labels)

	ack, err := ch.NewACK() // rides in the ACK
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ACK bytes:", len(ack))
	fmt.Println("ACK verifies:", sh.ConsumeACK(ack) == nil)

	_, err = serverNode.ConsumeSYN(syn, conn) // the same SYN again
	fmt.Println("replayed SYN:", tokens.ReasonOf(err))

	// The SYN passed on by a third address: it names the server it was
	// sent to and the address it came from.
	relayed := tokens.Endpoints{Client: netip.MustParseAddrPort("198.18.1.66:40000"), Server: netip.MustParseAddrPort("198.18.3.2:5432"), ClientISN: 1000}
	_, err = engine("node-c").ConsumeSYN(syn, relayed)
	fmt.Println("relayed SYN:", tokens.ReasonOf(err))
	// Output:
	// server sees cluster.local/shop/web-1 map[app:web]
	// client sees cluster.local/shop/db-1 map[app:db]
	// ACK bytes: 17
	// ACK verifies: true
	// replayed SYN: replayed-nonce
	// relayed SYN: endpoint-mismatch
}
