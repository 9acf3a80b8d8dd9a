package nfqaccept

import "testing"

// ipv4TCP builds an IPv4 header (protocol TCP unless proto says otherwise)
// followed by a TCP header with the given flags.
func ipv4TCP(proto, flags byte) []byte {
	p := make([]byte, 40)
	p[0] = 0x45
	p[9] = proto
	p[20+13] = flags
	return p
}

func ipv6TCP(flags byte) []byte {
	p := make([]byte, 60)
	p[0] = 0x60
	p[6] = 6
	p[40+13] = flags
	return p
}

func TestIsHandshakeACK(t *testing.T) {
	tests := []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"ipv4 ack", ipv4TCP(6, flagACK), true},
		{"ipv4 ack+psh", ipv4TCP(6, flagACK|0x08), true},
		{"ipv4 syn", ipv4TCP(6, flagSYN), false},
		{"ipv4 syn-ack", ipv4TCP(6, flagSYN|flagACK), false},
		{"ipv4 fin-ack", ipv4TCP(6, flagFIN|flagACK), false},
		{"ipv4 rst-ack", ipv4TCP(6, flagRST|flagACK), false},
		{"ipv4 udp", ipv4TCP(17, flagACK), false},
		{"ipv6 ack", ipv6TCP(flagACK), true},
		{"ipv6 syn", ipv6TCP(flagSYN), false},
		{"truncated tcp", ipv4TCP(6, flagACK)[:30], false},
		{"bad ihl", append([]byte{0x41}, ipv4TCP(6, flagACK)[1:]...), false},
		{"empty", nil, false},
		{"not ip", []byte{0x20, 1, 2}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsHandshakeACK(tt.pkt); got != tt.want {
				t.Fatalf("got %v want %v", got, tt.want)
			}
		})
	}
}

func FuzzIsHandshakeACK(f *testing.F) {
	f.Add(ipv4TCP(6, flagACK))
	f.Add(ipv6TCP(flagSYN))
	f.Add([]byte{0x4f})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		IsHandshakeACK(pkt) // must not panic
	})
}
