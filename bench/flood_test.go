package main

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// The flood's SYNs are what the server's enforcer must take as Bireme
// SYNs: a right TCP checksum (or it would drop them before any token
// work), the token option announcing the whole payload, and a payload
// that differs from SYN to SYN in nonce and signature only.
func TestForgedSYN(t *testing.T) {
	syn := append([]byte{0x11}, bytes.Repeat([]byte{7}, 16+300+64)...)
	src, dst := netip.MustParseAddr("198.18.3.2"), netip.MustParseAddrPort("198.18.2.2:8080")
	a := forgedSYN(nil, src, dst, syn)
	b := forgedSYN(nil, src, dst, syn)
	pkt := gopacket.NewPacket(a, layers.LayerTypeIPv4, gopacket.Default)
	tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if tcp == nil || !tcp.SYN || tcp.ACK || tcp.DstPort != 8080 {
		t.Fatalf("not a SYN to port 8080: %v", pkt)
	}
	want := tcp.Checksum
	ip := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, tcp, gopacket.Payload(tcp.Payload)); err != nil {
		t.Fatal(err)
	}
	again := gopacket.NewPacket(buf.Bytes(), layers.LayerTypeTCP, gopacket.Default).Layer(layers.LayerTypeTCP).(*layers.TCP)
	if again.Checksum != want {
		t.Errorf("TCP checksum %#04x, want %#04x", want, again.Checksum)
	}
	var marker []byte
	for _, o := range tcp.Options {
		if o.OptionType == 253 {
			marker = o.OptionData
		}
	}
	if !bytes.Equal(marker, []byte{0xB1, 0x2E, byte(len(syn) >> 8), byte(len(syn))}) || len(tcp.Payload) != len(syn) {
		t.Errorf("token option %x, payload %d bytes, want the %d-byte token announced", marker, len(tcp.Payload), len(syn))
	}
	pa, pb := a[48:], b[48:]
	if bytes.Equal(pa[1:17], pb[1:17]) || bytes.Equal(pa[len(pa)-64:], pb[len(pb)-64:]) {
		t.Error("two forged SYNs share a nonce or a signature")
	}
	if claimed := uint16(pa[22])<<8 | uint16(pa[23]); claimed != uint16(tcp.SrcPort) {
		t.Errorf("the SYN claims client port %d, sent from %d", claimed, tcp.SrcPort)
	}
	if !bytes.Equal(pa[24:len(pa)-64], syn[24:len(syn)-64]) || !bytes.Equal(pa[17:22], syn[17:22]) {
		t.Error("the certificate and claims were changed")
	}
}
