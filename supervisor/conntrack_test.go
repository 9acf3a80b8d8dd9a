package supervisor

import (
	"net/netip"
	"testing"
)

func TestParseProcNetTCP(t *testing.T) {
	data := []byte(`  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 010512C6:1B58 020512C6:C9A2 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: garbage
   3: 0000000000000000FFFF0000010512C6:1B58 0000000000000000FFFF0000020512C6:C9A3 01 0 0 0 0 0 0 0
`)
	got := parseProcNetTCP(data)
	want := []socketPair{
		{netip.MustParseAddrPort("198.18.5.1:7000"), netip.MustParseAddrPort("198.18.5.2:51618")},
		{netip.MustParseAddrPort("198.18.5.1:7000"), netip.MustParseAddrPort("198.18.5.2:51619")},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("socket %d = %v, want %v", i, got[i], want[i])
		}
	}
}
