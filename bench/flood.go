package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/bireme/bireme/bench/report"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/tokens"
)

// Case 8: the known-peer case (4) while a third namespace floods the
// server with SYNs carrying forged tokens, sent from a raw socket. Each
// forged token is new (a random signature under a real node certificate
// and fresh claims), so every one would cost the server's enforcer an
// ECDSA verification without its verification budget; the legitimate
// client's token is known, so its SYNs take the cheap path.

// roleFlood sends forged-token SYNs until SIGTERM.
const roleFlood = "syn-flood"

// attackerNode and attackerHost: the flood's own node, so that it shares
// nothing with the client but the router and the server.
const attackerNode, attackerHost = "n3", "attacker"

// Flood rates, forged SYNs per second: well above the enforcer's default
// verification budget (100/s per source, 1,000/s per node), below what
// the raw socket sender itself would take a whole CPU for.
const (
	floodRate      = 5000
	floodRateShort = 2000
)

// workerFlood sends SYNs from -from to -to at -rate per second, each with
// a fresh nonce, source port and forged token signature, until ctx ends.
func workerFlood(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(roleFlood, flag.ContinueOnError)
	from := fs.String("from", "", "source IPv4 address (the attacker's own)")
	to := fs.String("to", "", "destination IPv4 address:port")
	rate := fs.Int("rate", floodRate, "SYNs per second")
	certFile := fs.String("cert", "", "a node certificate of the cluster (the token's certificate verifies; its signature does not)")
	keyFile := fs.String("key", "", "its key, to sign the claims once (then the signature is replaced)")
	caFile := fs.String("ca", "", "the cluster CA certificate")
	if err := fs.Parse(args); err != nil {
		return err
	}
	src, err := netip.ParseAddr(*from)
	if err != nil || !src.Is4() {
		return fmt.Errorf("-from %q: want an IPv4 address", *from)
	}
	dst, err := netip.ParseAddrPort(*to)
	if err != nil || !dst.Addr().Is4() {
		return fmt.Errorf("-to %q: want IPv4 address:port", *to)
	}
	syn, err := forgeableSYN(*certFile, *keyFile, *caFile, netip.AddrPortFrom(src, 0), dst)
	if err != nil {
		return err
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer syscall.Close(fd)
	sa := &syscall.SockaddrInet4{Addr: dst.Addr().As4()}
	pkt := make([]byte, 0, 2048)
	fmt.Println(readyLine)
	const tick = 10 * time.Millisecond
	perTick := max(1, *rate*int(tick)/int(time.Second))
	t := time.NewTicker(tick)
	defer t.Stop()
	var sent, failed uint64
	defer func() {
		fmt.Fprintf(os.Stderr, "bench %s: sent %d forged SYNs (%d send errors)\n", roleFlood, sent, failed)
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for range perTick {
			pkt = forgedSYN(pkt[:0], src, dst, syn)
			if err := syscall.Sendto(fd, pkt, 0, sa); err != nil {
				failed++ // a full socket buffer: the flood is as fast as it gets
				continue
			}
			sent++
		}
	}
}

// forgeableSYN returns a genuine SYN payload (type, nonce, endpoints,
// token) of a made-up workload from src to dst, signed with the node key
// given: its certificate and claims verify, and forgedSYN replaces nonce,
// source port and signature.
func forgeableSYN(certFile, keyFile, caFile string, src, dst netip.AddrPort) ([]byte, error) {
	creds, err := tokens.LoadNodeCredentials(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	trust, err := tokens.LoadTrustBundle(caFile)
	if err != nil {
		return nil, err
	}
	eng, err := tokens.NewEngine(tokens.Config{Credentials: creds, Trust: trust})
	if err != nil {
		return nil, err
	}
	syn, _, err := eng.NewSYN(&identity.Identity{Namespace: benchNS, Pod: "mallory", Labels: map[string]string{"app": "client"}},
		tokens.Endpoints{Client: src, Server: dst})
	return syn, err
}

// forgedSYN appends to b an IPv4 SYN from src (random port) to dst that
// carries syn with a random nonce and a random token signature, announced
// by Bireme's token option (docs/protocol.md: FD 06 B1 2E LLLL). The
// endpoints the SYN claims are the packet's own, so the server gets as far
// as the signature (a relayed SYN is refused before it).
func forgedSYN(b []byte, src netip.Addr, dst netip.AddrPort, syn []byte) []byte {
	const ipLen, tcpLen = 20, 28 // TCP: 20 + NOP NOP + 6-byte token option
	total := ipLen + tcpLen + len(syn)
	b = append(b, make([]byte, total)...)
	ip, tcp, payload := b[:ipLen], b[ipLen:ipLen+tcpLen], b[ipLen+tcpLen:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(total))
	ip[8], ip[9] = 64, syscall.IPPROTO_TCP
	s4, d4 := src.As4(), dst.Addr().As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	// The kernel fills in the IP checksum (and the ID) of raw IP_HDRINCL packets.

	var rnd [2 + 4 + 16 + 64]byte
	_, _ = rand.Read(rnd[:])
	binary.BigEndian.PutUint16(tcp[0:2], 1024+binary.BigEndian.Uint16(rnd[0:2])%60000)
	binary.BigEndian.PutUint16(tcp[2:4], dst.Port())
	copy(tcp[4:8], rnd[2:6]) // sequence number
	tcp[12] = tcpLen / 4 << 4
	tcp[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(tcp[14:16], 64240)
	copy(tcp[20:], []byte{1, 1, 253, 6, 0xB1, 0x2E})
	binary.BigEndian.PutUint16(tcp[26:28], uint16(len(syn)))

	copy(payload, syn)
	copy(payload[1:17], rnd[6:22]) // nonce
	// The claimed client port, in the IPv4 endpoints after the nonce:
	// family(1) clientAddr(4) clientPort(2) serverAddr(4) serverPort(2).
	copy(payload[1+16+1+4:], tcp[0:2])
	copy(payload[len(payload)-64:], rnd[22:86]) // signature
	binary.BigEndian.PutUint16(tcp[16:18], tcpChecksum(s4, d4, b[ipLen:]))
	return b
}

// tcpChecksum is the TCP checksum of seg (checksum field zero) between
// src and dst.
func tcpChecksum(src, dst [4]byte, seg []byte) uint16 {
	sum := uint32(binary.BigEndian.Uint16(src[0:2])) + uint32(binary.BigEndian.Uint16(src[2:4])) +
		uint32(binary.BigEndian.Uint16(dst[0:2])) + uint32(binary.BigEndian.Uint16(dst[2:4])) +
		syscall.IPPROTO_TCP + uint32(len(seg))
	for i := 0; i+1 < len(seg); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(seg[i:]))
	}
	if len(seg)%2 == 1 {
		sum += uint32(seg[len(seg)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// startFlood starts the flood worker in the attacker's namespace.
func (r *runner) startFlood(ctx context.Context) (*worker, error) {
	attacker := r.topo.Host(attackerHost)
	rate := floodRate
	if r.cfg.short {
		rate = floodRateShort
	}
	dir := r.bireme.dir
	return r.startWorker(ctx, "syn-flood", attacker.NS, roleFlood,
		"-from", attacker.Addr.String(), "-to", r.serverAddr(portPlain), "-rate", strconv.Itoa(rate),
		"-cert", filepath.Join(dir, clientNode, "node.crt"), "-key", filepath.Join(dir, clientNode, "node.key"),
		"-ca", filepath.Join(dir, "ca", "ca.crt"))
}

// measureFlood runs case 8's load runs: at each concurrency, once without
// and once with the flood, back to back, so the comparison shares the
// machine's state of the moment.
func (r *runner) measureFlood(ctx context.Context, c *benchCase, act *active, rr *report.Round) error {
	for _, n := range r.cfg.concurrency {
		quiet, err := r.load(ctx, c, act, n)
		if err != nil {
			return err
		}
		flood, err := r.startFlood(ctx)
		if err != nil {
			return err
		}
		flooded, err := r.load(ctx, c, act, n)
		if serr := flood.stop(); serr != nil && err == nil {
			err = fmt.Errorf("stop the flood: %w", serr)
		}
		if err != nil {
			return err
		}
		rr.Quiet = append(rr.Quiet, quiet)
		rr.Loads = append(rr.Loads, flooded)
	}
	return nil
}
