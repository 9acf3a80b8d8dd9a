package tokens

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"fmt"
)

// Key schedule, version 2 (docs/protocol.md has the rationale):
//
//	Z      = ECDH-P256(client node key, server node key)          static-static, cached per node pair
//	PRK    = HKDF-Extract(SHA-256, salt="bireme/v2 node pair", IKM=Z)     cached with Z
//	T      = Nc || Ns || SHA-256(client token) || SHA-256(server token)
//	         || clientAddr(16) clientPort(2) serverAddr(16) serverPort(2)
//	         || ISNc(4) || ISNs(4)
//	P      = HKDF-Expand(SHA-256, PRK, info="bireme/v2 proofs" || T, 32)  per handshake
//	proofS = P[0:16]   in the SYN-ACK
//	proofC = P[16:32]  in the ACK
//
// The addresses, ports and ISNs are the connection as the client sees it
// (the SYN carries that view; the server checked it against its own). So a
// proof made for one connection proves nothing on another: a relay that
// carries the messages between two connections fails on both.
//
// With L = 32, HKDF-Expand is one HMAC-SHA256(PRK, info || 0x01); the HMAC
// pads of PRK are hashed once per node pair, so a handshake costs four
// SHA-256 blocks per side (the inner message is 157 bytes: three blocks
// with the pad's, one for the outer hash).
const (
	pairSalt   = "bireme/v2 node pair"
	proofsInfo = "bireme/v2 proofs"
)

// pairKey is the PRK of a node pair, kept as the SHA-256 states after the
// HMAC inner and outer pads, ready to finish an HMAC.
type pairKey struct {
	inner, outer []byte // marshaled sha256 states
}

// newPairKey derives the pair key from the two nodes' static ECDH secret.
func newPairKey(local *ecdh.PrivateKey, peer *ecdh.PublicKey) (*pairKey, error) {
	z, err := local.ECDH(peer)
	if err != nil {
		return nil, fmt.Errorf("ECDH with peer node key: %w", err)
	}
	prk, err := hkdf.Extract(sha256.New, z, []byte(pairSalt))
	if err != nil {
		return nil, fmt.Errorf("HKDF-Extract: %w", err)
	}
	return pairKeyFromPRK(prk)
}

func pairKeyFromPRK(prk []byte) (*pairKey, error) {
	var ipad, opad [sha256.BlockSize]byte
	copy(ipad[:], prk) // PRK is 32 bytes, shorter than a block: used as is
	copy(opad[:], prk)
	for i := range ipad {
		ipad[i] ^= 0x36
		opad[i] ^= 0x5c
	}
	state := func(pad []byte) ([]byte, error) {
		h := sha256.New()
		h.Write(pad)
		return h.(encoding.BinaryMarshaler).MarshalBinary()
	}
	inner, err := state(ipad[:])
	if err != nil {
		return nil, fmt.Errorf("HMAC state: %w", err)
	}
	outer, err := state(opad[:])
	if err != nil {
		return nil, fmt.Errorf("HMAC state: %w", err)
	}
	return &pairKey{inner: inner, outer: outer}, nil
}

// handshakeProofs computes the server and client proofs of one handshake
// on the connection conn (the client's view) whose server chose serverISN.
func handshakeProofs(k *pairKey, nc, ns *[NonceSize]byte, clientToken, serverToken *[32]byte, conn *Endpoints, serverISN uint32) (server, client [ProofSize]byte, err error) {
	var msg [len(proofsInfo) + 2*NonceSize + 2*sha256.Size + proofEndpointsSize + 2*4 + 1]byte
	n := copy(msg[:], proofsInfo)
	n += copy(msg[n:], nc[:])
	n += copy(msg[n:], ns[:])
	n += copy(msg[n:], clientToken[:])
	n += copy(msg[n:], serverToken[:])
	n = len(appendProofEndpoints(msg[:n], conn))
	binary.BigEndian.PutUint32(msg[n:], conn.ClientISN)
	binary.BigEndian.PutUint32(msg[n+4:], serverISN)
	msg[n+8] = 0x01 // HKDF-Expand block counter

	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(k.inner); err != nil {
		return server, client, fmt.Errorf("HMAC state: %w", err)
	}
	h.Write(msg[:])
	var sum [sha256.Size]byte
	innerSum := h.Sum(sum[:0])
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(k.outer); err != nil {
		return server, client, fmt.Errorf("HMAC state: %w", err)
	}
	h.Write(innerSum)
	p := h.Sum(sum[:0])
	copy(server[:], p[:ProofSize])
	copy(client[:], p[ProofSize:])
	return server, client, nil
}
