package procstat

import (
	"os"
	"testing"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name    string
		stat    string
		want    int64
		wantErr bool
	}{
		{"plain", "42 (bireme) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 4 0 100 1000 10", 12, false},
		{"comm with spaces and parens", "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 30 70 0 0 20 0 4 0", 100, false},
		{"truncated", "42 (x) S 1 2", 0, true},
		{"no comm", "42 x S", 0, true},
		{"not numbers", "42 (x) S 1 42 42 0 -1 4194560 100 0 0 0 u s 0 0", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tt.stat))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %d, want %d", got, tt.want)
			}
		})
	}
}

func TestStatusKB(t *testing.T) {
	status := []byte("Name:\tbireme\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n")
	if got := statusKB(status, "VmHWM:"); got != 20480 {
		t.Fatalf("VmHWM = %d", got)
	}
	if got := statusKB(status, "VmSwap:"); got != 0 {
		t.Fatalf("absent key = %d", got)
	}
}

func TestReadSelf(t *testing.T) {
	s, err := NewReader().Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.PeakRSS <= 0 || s.RSS <= 0 || s.PeakRSS < s.RSS {
		t.Fatalf("implausible sample %+v", s)
	}
}
