package syncbuf

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestConcurrentWrites(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fmt.Fprintf(&b, "line\n")
			_ = b.String()
		}()
	}
	wg.Wait()
	if n := strings.Count(b.String(), "line\n"); n != 20 || len(b.Bytes()) != 100 {
		t.Fatalf("got %d lines, %d bytes; want 20, 100", n, len(b.Bytes()))
	}
}
