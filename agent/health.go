package agent

import (
	"net/http"
	"sync/atomic"
)

// Health is what a node's probes read: whether the agent has applied the
// desired state its source last delivered. It is made before the agent
// (the metrics server that answers the probes starts first) and handed to
// it through Config. The zero value is "not ready".
type Health struct {
	ready atomic.Bool
}

// Ready reports whether the latest desired state is in force: every
// workload it names is protected (or refused for good, with a log line).
func (h *Health) Ready() bool { return h != nil && h.ready.Load() }

func (h *Health) setReady(ok bool) {
	if h != nil {
		h.ready.Store(ok)
	}
}

// livez answers while the process serves at all: a liveness probe that
// restarts an agent whose HTTP server answers would only open a gap.
func livez(w http.ResponseWriter, _ *http.Request) {
	w.Write([]byte("ok\n"))
}

// Readiness is what /readyz asks: a *Health for an agent; any other
// process serving its metrics the same way (the signer) brings its own.
type Readiness interface {
	Ready() bool
}

// readyz answers 200 once ready — for an agent, once it has applied its
// source's latest state — and 503 before that or while a workload is still
// being protected, so a rolling update waits for the new agent before it
// stops the next one.
func readyz(r Readiness) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		if !r.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	}
}
