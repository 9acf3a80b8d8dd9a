//go:build unix

package tokens

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time (user + system) this process used so far.
// Benchmarks report it per operation next to wall time, because on a shared
// machine wall time also counts the time other processes held the CPU.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
