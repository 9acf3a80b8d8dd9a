package enforcer

// HandshakesInFlight returns how many handshakes the enforcer remembers,
// over every attached workload: those in progress, and those that
// completed less than Config.HandshakeTimeout after they started (kept so
// that packets queued behind the completing ACK, and the client's proof
// retransmissions, are still recognized). The agent exports it as the
// bireme_handshakes_in_flight gauge.
func (e *Enforcer) HandshakesInFlight() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, wl := range e.workloads {
		n += wl.conns.len()
	}
	return n
}

// FlowRecordsDropped returns how many flow records were dropped because
// the output (Config.Flows) fell behind by more than the enforcer's
// buffer. The packet path never waits for the output; a non-zero value
// means the flow log is incomplete.
func (e *Enforcer) FlowRecordsDropped() uint64 {
	return e.flows.dropped.Load()
}
