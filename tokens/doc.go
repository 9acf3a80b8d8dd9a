// Package tokens proves workload identity inside the TCP handshake.
//
// A cluster CA (ECDSA P-256, x509) issues each node a certificate naming its
// trust domain and node name (URI spiffe://TRUST-DOMAIN/node/NAME). The node
// signs its workloads' identities as ES256 JWTs (claims: cluster, namespace,
// pod, service account, labels, namespace labels, named ports, issuing
// node, issued-at, expiry). The handshake has three messages:
//
//	SYN      client token (node certificate + JWT payload + signature), client nonce Nc
//	SYN-ACK  echo of Nc, server nonce Ns, server token, server proof
//	ACK      client proof
//
// Proofs are HMAC-SHA256 under a key derived (HKDF) from the static ECDH
// secret of the two node keys and both nonces, over a transcript of both
// nonces and both tokens' digests: a replayed SYN yields a SYN-ACK nobody
// but the real client node can answer, and a token cut from one handshake
// fails in another. docs/protocol.md has the bytes and the threat model.
//
// Typical use by a datapath, one Engine per node:
//
//	e, err := tokens.NewEngine(tokens.Config{Credentials: creds, Trust: bundle})
//	// client side
//	conn := tokens.Endpoints{Client: src, Server: dst, ClientISN: synSeq}
//	syn, ch, err := e.NewSYN(clientWorkload, conn)       // attach syn to the SYN
//	peer, err := ch.ConsumeSYNACK(synackPayload, synackSeq) // verified server identity
//	ack, err := ch.NewACK()                              // attach ack to the ACK
//	// server side, conn as the server observes it
//	sh, err := e.ConsumeSYN(synPayload, conn)            // sh.Peer(): verified client
//	synack, err := sh.NewSYNACK(serverWorkload, synackSeq)
//	err = sh.ConsumeACK(ackPayload)
//
// Every Consume* error is a *RejectError; ReasonOf gives its Reason for flow
// records. Signed tokens, verified peer tokens and ECDH secrets are cached,
// so a handshake with a known peer costs symmetric crypto only.
package tokens
