package lab

import (
	"context"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// startServer runs `bireme lab serve` inside the pod's namespace, on every
// declared TCP port; the returned function waits until each port answers.
// Starting every server before waiting for any keeps a large lab quick.
func (l *Lab) startServer(ctx context.Context, p *corev1.Pod) (wait func() error, err error) {
	return l.startServerAs(ctx, p, podRef(p), hostName(p))
}

// startServerAs is startServer for the pod named ref on host host (a
// member cluster's pod has both qualified by its cluster).
func (l *Lab) startServerAs(ctx context.Context, p *corev1.Pod, ref, host string) (wait func() error, err error) {
	ports := tcpPorts(p)
	if len(ports) == 0 {
		return func() error { return nil }, nil
	}
	h := l.topo.Host(host)
	if h == nil {
		return nil, fmt.Errorf("pod %s: no host", ref)
	}
	args := []string{"lab", "serve", "--ref", ref}
	for _, port := range ports {
		args = append(args, "--port", strconv.Itoa(int(port)))
	}
	// Not bound to ctx: the server outlives this command; it dies with
	// its namespace.
	cmd := h.NS.Command(context.Background(), l.cfg.Binary, args...)
	logFile := l.cfg.path("logs", "serve-"+h.Name+".log")
	server, err := startDetached(cmd, logFile)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", ref, err)
	}
	return func() error {
		deadline := time.Now().Add(ServerTimeout)
		target := Target{Ref: ref, NS: h.NS, Addr: h.Addr}
		for _, port := range ports {
			for {
				r := Result{Port: port}
				probeOne(ctx, target, target, &r)
				if r.Connected {
					break
				}
				select {
				case <-server.exited:
					return fmt.Errorf("pod %s: server exited: %s", ref, tail(logFile))
				default:
				}
				if time.Now().After(deadline) || ctx.Err() != nil {
					return fmt.Errorf("pod %s: server on port %d does not answer (%s): %s", ref, port, r.Reason, tail(logFile))
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		return nil
	}, nil
}

// ServerTimeout bounds how long a pod's server may take to answer after
// it was started.
const ServerTimeout = 10 * time.Second

// startServers starts the servers of pods, then waits for all of them.
// With Options.NoServers it does nothing.
func (l *Lab) startServers(ctx context.Context, pods []*corev1.Pod) error {
	if l.st.Options.NoServers {
		return nil
	}
	var waits []func() error
	for _, p := range pods {
		wait, err := l.startServer(ctx, p)
		if err != nil {
			return err
		}
		waits = append(waits, wait)
	}
	for _, wait := range waits {
		if err := wait(); err != nil {
			return err
		}
	}
	return nil
}
