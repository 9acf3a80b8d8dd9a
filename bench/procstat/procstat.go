// Package procstat reads the CPU time and memory of a running process from
// /proc, so the benchmark can charge each enforcer for what it used.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Sample is one reading of a process's counters.
type Sample struct {
	// CPU is user plus system time consumed since the process started.
	CPU time.Duration
	// RSS is the resident set size now, in bytes.
	RSS int64
	// PeakRSS is the high-water mark of the resident set (VmHWM), in bytes.
	PeakRSS int64
}

// Reader reads samples; it knows the kernel's clock tick so CPU times from
// /proc/PID/stat convert to durations.
type Reader struct {
	tick time.Duration
}

// NewReader asks getconf for the clock tick (USER_HZ) and falls back to 100 Hz,
// the value every mainstream Linux architecture uses.
func NewReader() *Reader {
	hz := 100
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && v > 0 {
			hz = v
		}
	}
	return &Reader{tick: time.Second / time.Duration(hz)}
}

// Read samples process pid.
func (r *Reader) Read(pid int) (Sample, error) {
	var s Sample
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	cpu, err := parseStatCPU(stat)
	if err != nil {
		return s, fmt.Errorf("pid %d: %w", pid, err)
	}
	s.CPU = time.Duration(cpu) * r.tick
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	s.RSS = statusKB(status, "VmRSS:") * 1024
	s.PeakRSS = statusKB(status, "VmHWM:") * 1024
	return s, nil
}

// parseStatCPU returns utime+stime in clock ticks. The command name (field 2)
// may contain spaces and parentheses, so fields are counted after the last ')'.
func parseStatCPU(stat []byte) (int64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat: no ')'")
	}
	// After ')' come fields 3.. ; utime is field 14 and stime field 15.
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc stat: %d fields after comm", len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed /proc stat: utime %q stime %q", f[11], f[12])
	}
	return utime + stime, nil
}

// statusKB returns the value in kB of the /proc status line starting with key,
// or 0 when the line is absent (kernel threads, exited processes).
func statusKB(status []byte, key string) int64 {
	for _, line := range strings.Split(string(status), "\n") {
		if !strings.HasPrefix(line, key) {
			continue
		}
		f := strings.Fields(line[len(key):])
		if len(f) == 0 {
			return 0
		}
		v, _ := strconv.ParseInt(f[0], 10, 64)
		return v
	}
	return 0
}
