package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/netns"
)

// Result is the outcome of one probe: one TCP connection from one pod to a
// declared port of another. It is the element of `lab probe --output json`.
type Result struct {
	From      string `json:"from"` // "namespace/pod"
	To        string `json:"to"`
	Port      uint16 `json:"port"`
	Protocol  string `json:"protocol"`
	Connected bool   `json:"connected"`
	// Reason says why: for a refused connection the deny flow record of an
	// enforcer when one matches, else "timeout", "refused" or the error;
	// for a connection, the allow record's reason when one matches.
	Reason string `json:"reason"`

	// Where the probe ran, to match it with flow records.
	local  netip.AddrPort
	remote netip.AddrPort
}

// Target is one pod as a probe sees it.
type Target struct {
	Ref   string // "namespace/pod"
	NS    *netns.NS
	Addr  netip.Addr
	Ports []uint16 // declared TCP container ports
}

// ProbeTimeout bounds each connection attempt and the read of the answer.
const ProbeTimeout = 1500 * time.Millisecond

// probeWorkers bounds concurrent probes; each holds an OS thread in a
// namespace while it runs.
const probeWorkers = 64

// ProbeAll tries every (from, to, declared port of to) with from != to, in
// parallel, and returns the results sorted by from, to, port.
func ProbeAll(ctx context.Context, targets []Target) []Result {
	var jobs []*Result
	type pair struct{ from, to Target }
	var pairs []pair
	for _, from := range targets {
		for _, to := range targets {
			if from.Ref == to.Ref {
				continue
			}
			for _, p := range to.Ports {
				jobs = append(jobs, &Result{From: from.Ref, To: to.Ref, Port: p, Protocol: "TCP"})
				pairs = append(pairs, pair{from, to})
			}
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, probeWorkers)
	for i, r := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			probeOne(ctx, pairs[i].from, pairs[i].to, r)
		}()
	}
	wg.Wait()
	out := make([]Result, len(jobs))
	for i, r := range jobs {
		out[i] = *r
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.From != b.From {
			return a.From < b.From
		}
		if a.To != b.To {
			return a.To < b.To
		}
		return a.Port < b.Port
	})
	return out
}

// bindSource binds the socket fd to addr on a port the kernel picks and
// returns the address and port it got (zero if the socket is not IPv4).
func bindSource(fd int, addr netip.Addr) (netip.AddrPort, error) {
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: addr.As4()}); err != nil {
		return netip.AddrPort{}, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, err
	}
	in4, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		return netip.AddrPort{}, nil
	}
	return netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)), nil
}

// probeOne connects from inside from's namespace, learning the local port
// before the SYN leaves so the enforcers' records can be matched later.
func probeOne(ctx context.Context, from, to Target, r *Result) {
	r.remote = netip.AddrPortFrom(to.Addr, r.Port)
	var conn net.Conn
	err := from.NS.Do(func() error {
		d := net.Dialer{
			Timeout: ProbeTimeout,
			Control: func(_, _ string, rc syscall.RawConn) error {
				var berr error
				if err := rc.Control(func(fd uintptr) { r.local, berr = bindSource(int(fd), from.Addr) }); err != nil {
					return err
				}
				return berr
			},
		}
		var err error
		conn, err = d.DialContext(ctx, "tcp4", r.remote.String())
		return err
	})
	if err != nil {
		r.Reason = dialReason(err)
		return
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(ProbeTimeout))
	line, err := bufio.NewReader(io.LimitReader(conn, 1024)).ReadString('\n')
	switch {
	case err != nil:
		r.Reason = "connected but no answer: " + dialReason(err)
	case line != Answer(to.Ref):
		r.Reason = fmt.Sprintf("answered by %q, not %s", strings.TrimSpace(line), to.Ref)
	default:
		r.Connected = true
	}
}

func dialReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	return err.Error()
}

// ExplainFromFlows fills each result's Reason from the enforcers' flow
// records: a refused probe takes the deny record of its connection (either
// enforcer's), a connected one the allow record of the server's side. A
// record matches when it names the probe's server address and port and
// the client's port (the client address may have been translated by NAT).
func ExplainFromFlows(results []Result, records []flowlog.Record) {
	type key struct {
		server netip.AddrPort
		cport  uint16
	}
	deny := map[key]*flowlog.Record{}
	allow := map[key]*flowlog.Record{}
	for i := range records {
		rec := &records[i]
		local, err1 := netip.ParseAddrPort(rec.LocalAddr)
		peer, err2 := netip.ParseAddrPort(rec.PeerAddr)
		if err1 != nil || err2 != nil {
			continue
		}
		var k key
		if rec.Direction == "ingress" {
			k = key{local, peer.Port()}
		} else {
			k = key{peer, local.Port()}
		}
		switch rec.Verdict {
		case flowlog.Deny:
			if deny[k] == nil {
				deny[k] = rec
			}
		case flowlog.Allow:
			if rec.Direction == "ingress" || allow[k] == nil {
				allow[k] = rec
			}
		}
	}
	for i := range results {
		r := &results[i]
		if !r.local.IsValid() {
			continue
		}
		k := key{r.remote, r.local.Port()}
		if !r.Connected {
			if rec := deny[k]; rec != nil {
				r.Reason = describe(rec)
			}
		} else if rec := allow[k]; rec != nil {
			r.Reason = describe(rec)
		}
	}
}

func describe(rec *flowlog.Record) string {
	s := rec.Node + " " + rec.Direction + ": " + rec.Reason
	if rec.TokenError != "" && !strings.Contains(rec.Reason, rec.TokenError) {
		s += " (token: " + rec.TokenError + ")"
	}
	return s
}

// ReadFlowFiles reads the records of every file that exists; a torn last
// line (an enforcer mid-write) is skipped, not an error.
func ReadFlowFiles(files ...string) ([]flowlog.Record, error) {
	var all []flowlog.Record
	for _, f := range files {
		data, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read flows: %w", err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			var rec flowlog.Record
			if strings.TrimSpace(line) == "" || json.Unmarshal([]byte(line), &rec) != nil {
				continue
			}
			all = append(all, rec)
		}
	}
	return all, nil
}
