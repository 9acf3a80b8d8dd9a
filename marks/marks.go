// Package marks defines Layout, the NFQUEUE queue numbers and connection-mark
// bits on which the supervisor's rules and the enforcer's verdicts must agree.
package marks

// Default connection-mark bits. They must not collide with marks other
// software in the workload namespace uses.
const (
	DefaultAuthorized uint32 = 0x00100000
	DefaultPending    uint32 = 0x00200000
)

// Layout says which queues the supervisor's rules feed and the enforcer
// reads, and which connection-mark bits carry a connection's state. Build
// one value and give it to both. The zero value is usable: one queue,
// number 0, default marks.
type Layout struct {
	// Queues is how many NFQUEUE queues, numbered from QueueBase, the
	// handshake packets are spread over (--queue-balance). The kernel
	// hashes the address pair symmetrically, so both directions of a flow
	// land on the same queue. 0 means 1.
	Queues uint16
	// QueueBase is the first queue number. Queue numbers are per network
	// namespace, so every workload can use the same numbers.
	QueueBase uint16
	// Authorized and Pending are single connection-mark bits; 0 means the
	// default. Authorized: the handshake was verified, every packet passes
	// in the kernel. Pending: the handshake-completing ACK still has to
	// pass the queue.
	Authorized uint32
	Pending    uint32
}

// WithDefaults returns l with its zero fields filled in.
func (l Layout) WithDefaults() Layout {
	if l.Queues == 0 {
		l.Queues = 1
	}
	if l.Authorized == 0 {
		l.Authorized = DefaultAuthorized
	}
	if l.Pending == 0 {
		l.Pending = DefaultPending
	}
	return l
}

// Mask is the union of the mark bits Bireme owns: every other bit of a
// packet or connection mark belongs to someone else and is left alone.
func (l Layout) Mask() uint32 {
	l = l.WithDefaults()
	return l.Authorized | l.Pending
}
