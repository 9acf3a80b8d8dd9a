package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestQueueDropsCounted: with node n1's enforcer stopped (SIGSTOP), a burst
// of SYNs from x/web overflows its queue (4096 packets). The kernel drops
// the rest, nothing reaches x/db while the enforcer is away (fail closed),
// and once the enforcer runs again bireme_queue_drops_total counts what
// the kernel dropped.
func TestQueueDropsCounted(t *testing.T) {
	c := newCluster(t, modelSpec(false))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	drops := func() float64 {
		t.Helper()
		var sum float64
		for _, reason := range []string{"queue-full", "socket-full"} {
			v, err := c.metric("n1", "bireme_queue_drops_total", map[string]string{"reason": reason})
			if err != nil {
				t.Fatal(err)
			}
			sum += v
		}
		return sum
	}
	if d := drops(); d != 0 {
		t.Fatalf("n1 dropped %v packets before the test", d)
	}
	pid := c.node("n1").EnforcerPID
	if pid == 0 {
		t.Fatal("n1 runs no enforcer")
	}
	accepts := c.servers[serverKey("x/db", 5432)].accepts.Load()

	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	resume := func() {
		if stopped {
			stopped = false
			if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
				t.Errorf("SIGCONT to n1's enforcer: %v", err)
			}
		}
	}
	defer resume() // a stopped enforcer would hold up the lab's teardown
	// 6000 non-blocking connects: one SYN each into web's egress queue,
	// which nobody reads. The sockets close before the enforcer resumes.
	const burst = 6000
	web, db := c.pod("web"), c.pod("db")
	script := fmt.Sprintf(`
import resource, socket, time
resource.setrlimit(resource.RLIMIT_NOFILE, (%[1]d + 100, %[1]d + 100))
socks = []
for _ in range(%[1]d):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("%[2]s", 5432))
    socks.append(s)
time.sleep(1)
print("sent", len(socks))
`, burst, db.Addr)
	out, err := web.NS.Command(ctx, "python3", "-c", script).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("sent %d", burst)) {
		t.Fatalf("SYN burst from x/web: %v\n%s", err, out)
	}
	if n := c.servers[serverKey("x/db", 5432)].accepts.Load(); n != accepts {
		t.Errorf("x/db accepted %d connections while n1's enforcer was stopped", n-accepts)
	}
	resume()

	var d float64
	deadline := time.Now().Add(20 * time.Second)
	for d = drops(); d == 0 && time.Now().Before(deadline); d = drops() {
		time.Sleep(200 * time.Millisecond)
	}
	if d == 0 {
		t.Fatalf("n1's bireme_queue_drops_total stayed 0 after %d SYNs into a queue nobody read", burst)
	}
	t.Logf("n1 counted %.0f packets dropped at its queues (%d SYNs sent, queue of 4096)", d, burst)
	// The enforcer works again.
	c.expectAllowed(t, "web", "db", 5432)
}
