package enforcer

import "testing"

func TestParseQueueDrops(t *testing.T) {
	got, err := parseQueueDrops([]byte("    0 1234    0 2 65535     3     4       17  1\n    1 1235    2 2 65535    10     0       99  1\n"))
	if err != nil || got != (QueueDrops{QueueFull: 13, SocketFull: 4}) {
		t.Fatalf("got %+v, %v", got, err)
	}
	if got, err := parseQueueDrops(nil); err != nil || got != (QueueDrops{}) {
		t.Fatalf("empty: %+v %v", got, err)
	}
	for _, bad := range []string{"0 1 2\n", "0 1 0 2 65535 x 0 1 1\n"} {
		if _, err := parseQueueDrops([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
