//go:build !unix

package tokens

import "time"

// processCPU is unavailable here; the cpu-ns/op metric then reads 0.
func processCPU() time.Duration { return 0 }
