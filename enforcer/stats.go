package enforcer

// HandshakesInFlight returns how many handshakes the enforcer has seen
// start and not yet seen complete or expire, over every attached workload
// (the agent exports it as the bireme_handshakes_in_flight gauge).
func (e *Enforcer) HandshakesInFlight() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, wl := range e.workloads {
		n += wl.conns.len()
	}
	return n
}
