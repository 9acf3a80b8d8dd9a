package workload

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"
)

// LoadSpec describes one connection-rate measurement.
type LoadSpec struct {
	Addr           string        // host:port of the server
	TLS            *tls.Config   // nil for plain TCP
	Concurrency    int           // clients running at once, each one connection at a time
	Duration       time.Duration // how long to keep opening connections
	MaxConns       int           // stop after this many attempts in total (0: no limit)
	ConnectTimeout time.Duration // a connect (and TLS handshake) slower than this fails
}

// LoadResult is what a load run measured. Latencies are in microseconds.
type LoadResult struct {
	Attempts  int     `json:"attempts"`
	Completed int     `json:"completed"` // connect, request, response and close all succeeded
	Failed    int     `json:"failed"`
	ElapsedS  float64 `json:"elapsed_s"`
	ConnPerS  float64 `json:"conn_per_s"` // Completed / ElapsedS
	// Connect latency: until connect() returned (plain TCP) or the TLS
	// handshake completed, for completed connections.
	ConnectP50us float64 `json:"connect_p50_us"`
	ConnectP99us float64 `json:"connect_p99_us"`
	// Transaction latency: connect + request + response + close.
	TxnP50us float64 `json:"txn_p50_us"`
	TxnP99us float64 `json:"txn_p99_us"`
	// Time until a failed attempt gave up.
	FailP50us  float64 `json:"fail_p50_us,omitempty"`
	FailP99us  float64 `json:"fail_p99_us,omitempty"`
	FirstError string  `json:"first_error,omitempty"`
}

type sample struct {
	connect, txn time.Duration
	err          error
}

// RunLoad opens connections as Concurrency parallel clients until Duration
// has passed, MaxConns attempts were made or ctx ends. Each connection sends
// one request byte, reads the one-byte answer and closes.
func RunLoad(ctx context.Context, spec LoadSpec) (LoadResult, error) {
	if spec.Concurrency < 1 || spec.Duration <= 0 || spec.ConnectTimeout <= 0 {
		return LoadResult{}, fmt.Errorf("load spec needs concurrency >= 1, duration and connect timeout > 0: %+v", spec)
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Duration)
	defer cancel()
	var (
		mu       sync.Mutex
		attempts int
		all      []sample
		wg       sync.WaitGroup
	)
	// take reserves one attempt, so MaxConns bounds the total across clients.
	take := func() bool {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil || (spec.MaxConns > 0 && attempts >= spec.MaxConns) {
			return false
		}
		attempts++
		return true
	}
	start := time.Now()
	for i := 0; i < spec.Concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []sample
			for take() {
				mine = append(mine, oneConn(spec))
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	res := LoadResult{Attempts: len(all), ElapsedS: elapsed.Seconds()}
	var connects, txns, fails []time.Duration
	for _, s := range all {
		if s.err != nil {
			res.Failed++
			fails = append(fails, s.txn)
			if res.FirstError == "" {
				res.FirstError = s.err.Error()
			}
			continue
		}
		res.Completed++
		connects = append(connects, s.connect)
		txns = append(txns, s.txn)
	}
	res.ConnPerS = float64(res.Completed) / elapsed.Seconds()
	res.ConnectP50us, res.ConnectP99us = percentiles(connects)
	res.TxnP50us, res.TxnP99us = percentiles(txns)
	res.FailP50us, res.FailP99us = percentiles(fails)
	return res, nil
}

// oneConn runs one connection; on failure txn holds the time until the
// client gave up.
func oneConn(spec LoadSpec) sample {
	t0 := time.Now()
	d := net.Dialer{Timeout: spec.ConnectTimeout}
	c, err := d.Dial("tcp", spec.Addr)
	if err != nil {
		return sample{txn: time.Since(t0), err: fmt.Errorf("connect: %w", err)}
	}
	defer c.Close()
	if err := c.SetDeadline(t0.Add(spec.ConnectTimeout + 5*time.Second)); err != nil {
		return sample{txn: time.Since(t0), err: err}
	}
	if spec.TLS != nil {
		tc := tls.Client(c, spec.TLS)
		if err := tc.Handshake(); err != nil {
			return sample{txn: time.Since(t0), err: fmt.Errorf("tls handshake: %w", err)}
		}
		c = tc
	}
	connect := time.Since(t0)
	if _, err := c.Write([]byte{ReqEcho}); err != nil {
		return sample{txn: time.Since(t0), err: fmt.Errorf("request: %w", err)}
	}
	var resp [1]byte
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		return sample{txn: time.Since(t0), err: fmt.Errorf("response: %w", err)}
	}
	if resp[0] != RespEcho {
		return sample{txn: time.Since(t0), err: fmt.Errorf("response byte %q", resp[0])}
	}
	if err := c.Close(); err != nil {
		return sample{txn: time.Since(t0), err: fmt.Errorf("close: %w", err)}
	}
	return sample{connect: connect, txn: time.Since(t0)}
}

// percentiles returns p50 and p99 in microseconds (nearest rank), or zeros.
func percentiles(d []time.Duration) (p50, p99 float64) {
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	at := func(p float64) float64 {
		i := int(p*float64(len(d))+0.5) - 1
		i = max(0, min(i, len(d)-1))
		return float64(d[i]) / float64(time.Microsecond)
	}
	return at(0.50), at(0.99)
}

// BulkResult is one bulk transfer.
type BulkResult struct {
	Bytes    int64   `json:"bytes"`
	ElapsedS float64 `json:"elapsed_s"`
	Gbps     float64 `json:"gbit_per_s"`
}

// RunBulk connects once and sends n bytes in one stream; it measures from
// the first byte written until the server confirmed it read all of them.
func RunBulk(ctx context.Context, addr string, tlsConf *tls.Config, n int64, timeout time.Duration) (BulkResult, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return BulkResult{}, fmt.Errorf("bulk connect %s: %w", addr, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := c.SetDeadline(time.Now().Add(bulkDeadline)); err != nil {
		return BulkResult{}, err
	}
	if tlsConf != nil {
		tc := tls.Client(c, tlsConf)
		if err := tc.Handshake(); err != nil {
			return BulkResult{}, fmt.Errorf("bulk tls handshake: %w", err)
		}
		c = tc
	}
	var hdr [9]byte
	hdr[0] = ReqBulk
	binary.BigEndian.PutUint64(hdr[1:], uint64(n))
	start := time.Now()
	if _, err := c.Write(hdr[:]); err != nil {
		return BulkResult{}, fmt.Errorf("bulk header: %w", err)
	}
	buf := make([]byte, 256<<10)
	for left := n; left > 0; {
		chunk := buf
		if left < int64(len(chunk)) {
			chunk = chunk[:left]
		}
		w, err := c.Write(chunk)
		if err != nil {
			return BulkResult{}, fmt.Errorf("bulk write after %d bytes: %w", n-left, err)
		}
		left -= int64(w)
	}
	var resp [1]byte
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		return BulkResult{}, fmt.Errorf("bulk confirmation: %w", err)
	}
	if resp[0] != RespBulk {
		return BulkResult{}, errors.New("bulk: wrong confirmation byte")
	}
	el := time.Since(start)
	return BulkResult{Bytes: n, ElapsedS: el.Seconds(), Gbps: float64(n) * 8 / el.Seconds() / 1e9}, nil
}
