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

func TestStage(t *testing.T) {
	tests := []struct {
		name string
		pkt  []byte
		want int
	}{
		{"ipv4 ack", ipv4TCP(6, flagACK), StageACK},
		{"ipv4 ack+psh", ipv4TCP(6, flagACK|0x08), StageACK},
		{"ipv4 fin-ack", ipv4TCP(6, flagFIN|flagACK), StageACK},
		{"ipv4 syn", ipv4TCP(6, flagSYN), StageOther},
		{"ipv4 syn-ack", ipv4TCP(6, flagSYN|flagACK), StageSYNACK},
		{"ipv4 rst-ack", ipv4TCP(6, flagRST|flagACK), StageOther},
		{"ipv4 udp", ipv4TCP(17, flagACK), StageOther},
		{"ipv6 ack", ipv6TCP(flagACK), StageACK},
		{"ipv6 syn-ack", ipv6TCP(flagSYN | flagACK), StageSYNACK},
		{"truncated tcp", ipv4TCP(6, flagACK)[:30], StageOther},
		{"bad ihl", append([]byte{0x41}, ipv4TCP(6, flagACK)[1:]...), StageOther},
		{"empty", nil, StageOther},
		{"not ip", []byte{0x20, 1, 2}, StageOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Stage(tt.pkt); got != tt.want {
				t.Fatalf("got %v want %v", got, tt.want)
			}
		})
	}
}

func FuzzStage(f *testing.F) {
	f.Add(ipv4TCP(6, flagACK))
	f.Add(ipv6TCP(flagSYN))
	f.Add([]byte{0x4f})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		Stage(pkt) // must not panic
	})
}
