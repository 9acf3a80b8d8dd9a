package enforcer

import (
	"bytes"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// buildTCP serializes a TCP packet with gopacket (an independent
// implementation of lengths and checksums).
func buildTCP(t testing.TB, v6 bool, syn, ack bool, opts []layers.TCPOption, payload []byte) []byte {
	t.Helper()
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, Seq: 1000, Ack: 2000, SYN: syn, ACK: ack, Window: 64240, Options: opts}
	var ip gopacket.SerializableLayer
	if v6 {
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::2")}
		_ = tcp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	} else {
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
			SrcIP: net.IPv4(198, 18, 0, 1), DstIP: net.IPv4(198, 18, 0, 2)}
		_ = tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		ip, tcp, gopacket.Payload(payload))
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// reserialize decodes pkt with gopacket and serializes it again with fresh
// lengths and checksums: equal bytes mean pkt's were right.
func reserialize(t testing.TB, pkt []byte, v6 bool) []byte {
	t.Helper()
	first := layers.LayerTypeIPv4
	if v6 {
		first = layers.LayerTypeIPv6
	}
	gp := gopacket.NewPacket(pkt, first, gopacket.Default)
	if el := gp.ErrorLayer(); el != nil {
		t.Fatalf("gopacket cannot decode: %v", el.Error())
	}
	tcp := gp.Layer(layers.LayerTypeTCP).(*layers.TCP)
	var ls []gopacket.SerializableLayer
	if v6 {
		ip := gp.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
		_ = tcp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, ip)
	} else {
		ip := gp.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		_ = tcp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, ip)
	}
	ls = append(ls, tcp, gopacket.Payload(tcp.Payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var linuxSYNOptions = []layers.TCPOption{
	{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
	{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
	{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)},
	{OptionType: layers.TCPOptionKindNop},
	{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
}

var linuxACKOptions = []layers.TCPOption{
	{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
	{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{1, 2, 3, 4, 5, 6, 7, 8}},
}

func TestInsertStripRoundTrip(t *testing.T) {
	token := bytes.Repeat([]byte("T0k3n"), 180) // 900 bytes
	proof := bytes.Repeat([]byte{0xAB}, 20)
	tests := []struct {
		name    string
		v6      bool
		syn     bool
		opts    []layers.TCPOption
		payload []byte
		proof   bool
	}{
		{"ipv4 SYN", false, true, linuxSYNOptions, nil, false},
		{"ipv6 SYN", true, true, linuxSYNOptions, nil, false},
		{"ipv4 SYN with data (TFO)", false, true, linuxSYNOptions, []byte("GET / HTTP/1.1\r\n"), false},
		{"ipv4 SYN no options", false, true, nil, nil, false},
		{"ipv4 ACK proof", false, false, linuxACKOptions, nil, true},
		{"ipv6 ACK proof", true, false, linuxACKOptions, nil, true},
		{"ipv4 data ACK proof", false, false, linuxACKOptions, []byte("hello"), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			orig := buildTCP(t, tc.v6, tc.syn, !tc.syn, tc.opts, tc.payload)
			var p packet
			if err := parsePacket(orig, &p); err != nil {
				t.Fatal(err)
			}
			if p.v6 != tc.v6 || p.sport != 40000 || p.dport != 80 || p.seq != 1000 {
				t.Fatalf("parsed %+v", p)
			}
			buf := make([]byte, 65535)
			var out []byte
			var err error
			if tc.proof {
				out, err = p.insertProof(buf, proof, 1500)
			} else {
				out, err = p.insertToken(buf, token, 1500)
			}
			if err != nil {
				t.Fatal(err)
			}
			if re := reserialize(t, out, tc.v6); !bytes.Equal(re, out) {
				t.Fatalf("lengths or checksums wrong after insert:\n got %x\nwant %x", out, re)
			}
			var q packet
			if err := parsePacket(out, &q); err != nil {
				t.Fatal(err)
			}
			if q.seq != p.seq || q.ack != p.ack {
				t.Errorf("seq/ack changed")
			}
			if tc.proof {
				if !bytes.Equal(q.proof(), proof) || len(q.payload()) != len(tc.payload) {
					t.Errorf("proof = %x, payload %q", q.proof(), q.payload())
				}
			} else if !bytes.Equal(q.token(), token) || !bytes.Equal(q.payload()[len(token):], tc.payload) {
				t.Errorf("token not carried")
			}
			stripped, err := q.strip(make([]byte, 65535))
			if err != nil {
				t.Fatal(err)
			}
			want := orig
			if !tc.proof && tc.payload != nil {
				// Data behind a token never reaches the peer (see strip).
				want = buildTCP(t, tc.v6, tc.syn, !tc.syn, tc.opts, nil)
			}
			if !bytes.Equal(stripped, want) {
				t.Errorf("strip(insert(x)) != x:\n got %x\nwant %x", stripped, want)
			}
		})
	}
}

func TestInsertLimits(t *testing.T) {
	var p packet
	full := []layers.TCPOption{ // 36 bytes: no room for a 8-byte marker
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
		{OptionType: 34, OptionLength: 18, OptionData: make([]byte, 16)}, // TFO cookie
		{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)},
		{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
		{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
	}
	buf := make([]byte, 65535)
	if err := parsePacket(buf2(t, full), &p); err != nil {
		t.Fatal(err)
	}
	if _, err := p.insertToken(buf, []byte("x"), 1500); err != errNoRoom {
		t.Errorf("full options: err = %v, want errNoRoom", err)
	}
	if err := parsePacket(buildTCP(t, false, true, false, linuxSYNOptions, nil), &p); err != nil {
		t.Fatal(err)
	}
	if _, err := p.insertToken(buf, make([]byte, 1300), 1280); err != errTooLarge {
		t.Errorf("oversized: err = %v, want errTooLarge", err)
	}
	if _, err := p.insertProof(buf, make([]byte, MaxProofLen+1), 1500); err != errProofSize {
		t.Errorf("long proof: err = %v", err)
	}
	out, err := p.insertToken(buf, []byte("x"), 1500)
	if err != nil {
		t.Fatal(err)
	}
	var q packet
	if err := parsePacket(out, &q); err != nil {
		t.Fatal(err)
	}
	if _, err := q.insertToken(make([]byte, 2000), []byte("y"), 1500); err != errHasBireme {
		t.Errorf("double insert: err = %v", err)
	}
}

func buf2(t *testing.T, opts []layers.TCPOption) []byte {
	return buildTCP(t, false, true, false, opts, nil)
}

func TestParseRejects(t *testing.T) {
	good := buildTCP(t, false, true, false, linuxSYNOptions, nil)
	frag := append([]byte(nil), good...)
	frag[6] |= 0x20 // more fragments
	udp := append([]byte(nil), good...)
	udp[9] = 17
	badOpt := append([]byte(nil), good...)
	badOpt[20+20+1] = 40 // MSS option length past the header
	badMarker := buildTCP(t, false, true, false, []layers.TCPOption{
		{OptionType: optKindExperimental, OptionLength: 6, OptionData: []byte{0xB1, 0x2E, 0x01, 0x00}}, // 256-byte token, no payload
		{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
	}, nil)
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, errMalformed},
		{"short ipv4", good[:30], errMalformed},
		{"fragment", frag, errFragment},
		{"udp", udp, errNotTCP},
		{"option overruns", badOpt, errMalformed},
		{"token longer than payload", badMarker, errBadToken},
		{"ipv6 truncated", buildTCP(t, true, true, false, nil, nil)[:50], errMalformed},
	}
	for _, tc := range tests {
		var p packet
		if err := parsePacket(tc.b, &p); err != tc.want {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestPacketPathAllocatesNothing(t *testing.T) {
	pkt := buildTCP(t, false, true, false, linuxSYNOptions, nil)
	token := make([]byte, 700)
	buf := make([]byte, 65535)
	buf3 := make([]byte, 65535)
	allocs := testing.AllocsPerRun(100, func() {
		var p, q packet
		_ = parsePacket(pkt, &p)
		out, _ := p.insertToken(buf, token, 1500)
		_ = parsePacket(out, &q)
		_, _ = q.strip(buf3)
	})
	if allocs != 0 {
		t.Errorf("parse+insert+strip allocates %v times per packet", allocs)
	}
}

func BenchmarkInsertStripToken(b *testing.B) {
	pkt := buildTCP(b, false, true, false, linuxSYNOptions, nil)
	token := make([]byte, 700)
	buf := make([]byte, 65535)
	buf3 := make([]byte, 65535)
	b.ReportAllocs()
	for b.Loop() {
		var p, q packet
		_ = parsePacket(pkt, &p)
		out, _ := p.insertToken(buf, token, 1500)
		_ = parsePacket(out, &q)
		_, _ = q.strip(buf3)
	}
}

// FuzzPacket feeds arbitrary bytes to the parser and, when they parse, to
// insert and strip: nothing may panic, and whatever insert produces must
// parse again and strip back to a packet without Bireme options.
func FuzzPacket(f *testing.F) {
	f.Add(buildTCP(f, false, true, false, linuxSYNOptions, nil), []byte("token"))
	f.Add(buildTCP(f, true, true, true, linuxSYNOptions, []byte("data")), []byte("tok"))
	f.Add(buildTCP(f, false, false, true, linuxACKOptions, nil), bytes.Repeat([]byte{1}, 20))
	f.Add([]byte{0x45, 0, 0, 20}, []byte{})
	f.Fuzz(func(t *testing.T, b []byte, tok []byte) {
		var p packet
		if parsePacket(b, &p) != nil {
			return
		}
		_ = p.token()
		_ = p.proof()
		buf := make([]byte, 70000)
		if s, err := p.strip(buf); err == nil {
			var q packet
			if err := parsePacket(s, &q); err != nil && err != errBadToken {
				t.Fatalf("stripped packet does not parse: %v", err)
			} else if err == nil && (q.tokenOpt != 0 || q.proofOpt != 0) {
				t.Fatalf("strip left a Bireme option")
			} else if err == nil && !q.tcpChecksumOK() {
				t.Fatalf("stripped packet has a wrong TCP checksum")
			} else if err == nil && p.tokenOpt != 0 && len(q.payload()) != 0 {
				t.Fatalf("strip left %d bytes of data behind a token", len(q.payload()))
			}
		}
		for _, ins := range []func([]byte, []byte, int) ([]byte, error){p.insertToken, p.insertProof} {
			out, err := ins(make([]byte, 70000), tok, 1<<16)
			if err != nil {
				continue
			}
			var q packet
			if err := parsePacket(out, &q); err != nil {
				t.Fatalf("inserted packet does not parse: %v", err)
			}
			if _, err := q.strip(buf); err != nil {
				t.Fatalf("strip after insert: %v", err)
			}
		}
	})
}
