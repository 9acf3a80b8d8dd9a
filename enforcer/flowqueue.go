package enforcer

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bireme/bireme/flowlog"
)

// flowQueueLen is how many flow records may wait for the writer. A
// handshake makes at most two; the queue absorbs bursts of thousands of
// connections while the output is slow.
const flowQueueLen = 8192

// flowInterval is how often the writer wakes to write what is queued.
// Waking it for every record cost a thread wake-up inside the packet's
// handling (on an idle machine an inter-processor interrupt), measured at
// 15-30 µs on each of the two trips of a handshake that record a
// decision. A record reaches the output at most this much later.
const flowInterval = 20 * time.Millisecond

// flowQueue writes flow records on a goroutine of its own, so encoding
// JSON and writing the output never delay a packet's verdict. The packet
// path never blocks on it and never wakes it: the writer drains the queue
// every flowInterval. When the queue is full the record is counted as
// dropped (Enforcer.FlowRecordsDropped) and a warning is logged.
type flowQueue struct {
	out     *flowlog.Writer
	log     *slog.Logger
	ch      chan flowItem
	stopped <-chan struct{} // the writer's context ended
	dropped atomic.Uint64
	done    sync.WaitGroup
}

// flowItem is a record to write, or a request to say when everything
// queued before it has been written.
type flowItem struct {
	r       *flowlog.Record
	flushed chan struct{}
}

// newFlowQueue starts the writer; it stops when ctx ends, after writing
// what is queued. out nil discards records.
func newFlowQueue(ctx context.Context, out *flowlog.Writer, log *slog.Logger) *flowQueue {
	f := &flowQueue{out: out, log: log, ch: make(chan flowItem, flowQueueLen), stopped: ctx.Done()}
	if out == nil {
		return f
	}
	f.done.Add(1)
	go f.run(ctx)
	return f
}

func (f *flowQueue) run(ctx context.Context) {
	defer f.done.Done()
	tick := time.NewTicker(flowInterval)
	defer tick.Stop()
	batch := make([]*flowlog.Record, 0, 256)
	for {
		select {
		case <-tick.C:
			batch = f.drain(batch)
		case <-ctx.Done():
			f.drain(batch)
			return
		}
	}
}

// drain writes what is queued now, in order and with one flush of the
// output per batch, and answers each flush request once the records
// queued before it are written. It returns batch emptied, for reuse.
func (f *flowQueue) drain(batch []*flowlog.Record) []*flowlog.Record {
	write := func() {
		if len(batch) == 0 {
			return
		}
		if err := f.out.WriteBatch(batch); err != nil {
			f.log.Warn("flow records not written", "records", len(batch), "err", err)
		}
		clear(batch)
		batch = batch[:0]
	}
	for n := len(f.ch); n > 0; n-- {
		it := <-f.ch
		if it.flushed != nil {
			write()
			close(it.flushed)
			continue
		}
		batch = append(batch, it.r)
	}
	write()
	return batch
}

// send queues r without waiting.
func (f *flowQueue) send(r *flowlog.Record) {
	if f.out == nil {
		return
	}
	select {
	case f.ch <- flowItem{r: r}:
	default:
		// Warn on the first drop and then every 1024th, not per packet.
		if n := f.dropped.Add(1); n&1023 == 1 {
			f.log.Warn("flow records dropped: the output is too slow", "dropped_total", n)
		}
	}
}

// flush returns when every record queued before the call is written (or
// the writer has stopped).
func (f *flowQueue) flush() {
	if f.out == nil {
		return
	}
	done := make(chan struct{})
	select {
	case f.ch <- flowItem{flushed: done}:
	case <-f.stopped:
		f.wait()
		return
	}
	select {
	case <-done:
	case <-f.stopped:
		f.wait() // the writer drains the queue before it returns
	}
}

// wait returns when the writer has stopped (after its context ended).
func (f *flowQueue) wait() { f.done.Wait() }
