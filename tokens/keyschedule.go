package tokens

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
)

// Key schedule, version 1 (docs/protocol.md has the rationale):
//
//	Z      = ECDH-P256(client node key, server node key)       static-static, cached per peer key
//	PRK    = HKDF-Extract(SHA-256, salt="bireme/v1 node pair", IKM=Z)  cached with Z
//	K      = HKDF-Expand(SHA-256, PRK, info="bireme/v1 proof key" || Nc || Ns, 32)
//	T      = Nc || Ns || SHA-256(client token) || SHA-256(server token)
//	proofS = HMAC-SHA256(K, "bireme/v1 server proof" || T)[:16]   in the SYN-ACK
//	proofC = HMAC-SHA256(K, "bireme/v1 client proof" || T)[:16]   in the ACK
const (
	pairSalt        = "bireme/v1 node pair"
	proofKeyInfo    = "bireme/v1 proof key"
	serverProofText = "bireme/v1 server proof"
	clientProofText = "bireme/v1 client proof"
)

// pairKey derives the PRK of a node pair from their static ECDH secret.
func pairKey(local *ecdh.PrivateKey, peer *ecdh.PublicKey) ([]byte, error) {
	z, err := local.ECDH(peer)
	if err != nil {
		return nil, fmt.Errorf("ECDH with peer node key: %w", err)
	}
	return hkdf.Extract(sha256.New, z, []byte(pairSalt))
}

// handshakeProofs computes the server and client proofs of one handshake.
func handshakeProofs(prk []byte, nc, ns *[NonceSize]byte, clientToken, serverToken *[32]byte) (server, client [ProofSize]byte, err error) {
	info := make([]byte, 0, len(proofKeyInfo)+2*NonceSize)
	info = append(info, proofKeyInfo...)
	info = append(info, nc[:]...)
	info = append(info, ns[:]...)
	k, err := hkdf.Expand(sha256.New, prk, string(info), 32)
	if err != nil {
		return server, client, fmt.Errorf("derive proof key: %w", err)
	}
	var transcript [2*NonceSize + 2*sha256.Size]byte
	copy(transcript[0:], nc[:])
	copy(transcript[NonceSize:], ns[:])
	copy(transcript[2*NonceSize:], clientToken[:])
	copy(transcript[2*NonceSize+sha256.Size:], serverToken[:])

	mac := hmac.New(sha256.New, k)
	var sum [sha256.Size]byte
	mac.Write([]byte(serverProofText))
	mac.Write(transcript[:])
	copy(server[:], mac.Sum(sum[:0]))
	mac.Reset()
	mac.Write([]byte(clientProofText))
	mac.Write(transcript[:])
	copy(client[:], mac.Sum(sum[:0]))
	return server, client, nil
}
