package enforcer

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/bireme/bireme/netns"
)

// QueueDrops counts the handshake (and first non-TCP) packets the kernel
// dropped at the enforcer's queues before the enforcer saw them: the
// nfnetlink_queue counters of every attached workload's namespace, plus
// those of workloads detached since the enforcer started (read when they
// left, so the totals never go down while the enforcer runs). A drop is
// fail closed: the sender retransmits or the connection fails.
type QueueDrops struct {
	// QueueFull: the queue already held its maximum (queue_dropped).
	QueueFull uint64
	// SocketFull: the netlink socket's receive buffer was full
	// (queue_user_dropped).
	SocketFull uint64
}

func (d *QueueDrops) add(o QueueDrops) {
	d.QueueFull += o.QueueFull
	d.SocketFull += o.SocketFull
}

// QueueDrops reads the kernel's drop counters of the enforcer's queues.
// It enters each workload's namespace to read them (the file is per
// network namespace), so it costs a few system calls per workload: meant
// for a metrics scrape, not the packet path. A namespace that cannot be
// read (it is going away) is left out.
func (e *Enforcer) QueueDrops() QueueDrops {
	e.mu.Lock()
	total := e.retiredQueueDrops
	paths := make([]string, 0, len(e.workloads))
	for p := range e.workloads {
		paths = append(paths, p)
	}
	e.mu.Unlock()
	for _, p := range paths {
		if d, err := readQueueDrops(p); err == nil {
			total.add(d)
		}
	}
	return total
}

// retireQueueDrops keeps the counters of a workload about to be detached.
func (e *Enforcer) retireQueueDrops(nsPath string) {
	d, err := readQueueDrops(nsPath)
	if err != nil {
		return
	}
	e.mu.Lock()
	e.retiredQueueDrops.add(d)
	e.mu.Unlock()
}

// readQueueDrops reads /proc/net/netfilter/nfnetlink_queue as the
// namespace at nsPath sees it.
func readQueueDrops(nsPath string) (QueueDrops, error) {
	f, err := os.Open(nsPath)
	if err != nil {
		return QueueDrops{}, err
	}
	defer f.Close()
	var data []byte
	err = netns.DoFD(int(f.Fd()), func() error {
		// thread-self: this thread is the one inside the namespace.
		data, err = os.ReadFile("/proc/thread-self/net/netfilter/nfnetlink_queue")
		return err
	})
	if err != nil {
		return QueueDrops{}, err
	}
	return parseQueueDrops(data)
}

// parseQueueDrops sums the drop counters of every queue line of
// nfnetlink_queue (net/netfilter/nfnetlink_queue.c, seq_show: queue
// number, peer port id, queue total, copy mode, copy range, queue
// dropped, user dropped, id sequence, 1).
func parseQueueDrops(data []byte) (QueueDrops, error) {
	var d QueueDrops
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) < 7 {
			return QueueDrops{}, fmt.Errorf("nfnetlink_queue line %d: %d fields, want at least 7", n, len(f))
		}
		full, err1 := strconv.ParseUint(f[5], 10, 64)
		user, err2 := strconv.ParseUint(f[6], 10, 64)
		if err1 != nil || err2 != nil {
			return QueueDrops{}, fmt.Errorf("nfnetlink_queue line %d: bad counters %q %q", n, f[5], f[6])
		}
		d.QueueFull += full
		d.SocketFull += user
	}
	return d, sc.Err()
}
