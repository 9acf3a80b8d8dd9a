package workload

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// serve starts a server on a loopback port for the test's lifetime.
func serve(t *testing.T, tlsConf *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, tlsConf) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

func TestLoadAndBulk(t *testing.T) {
	dir := t.TempDir()
	if err := WriteTLSMaterial(dir); err != nil {
		t.Fatal(err)
	}
	srvTLS, err := ServerTLSConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	cliTLS, err := ClientTLSConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		srv, cli *tls.Config
	}{
		{"plain", nil, nil},
		{"mutual TLS", srvTLS, cliTLS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := serve(t, tt.srv)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			res, err := RunLoad(ctx, LoadSpec{Addr: addr, TLS: tt.cli, Concurrency: 4, Duration: 5 * time.Second, MaxConns: 40, ConnectTimeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if res.Attempts != 40 || res.Completed != 40 || res.Failed != 0 {
				t.Fatalf("load: %+v", res)
			}
			if res.ConnectP50us <= 0 || res.ConnectP99us < res.ConnectP50us || res.TxnP50us < res.ConnectP50us {
				t.Fatalf("latencies inconsistent: %+v", res)
			}
			b, err := RunBulk(ctx, addr, tt.cli, 3<<20+7, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if b.Bytes != 3<<20+7 || b.Gbps <= 0 {
				t.Fatalf("bulk: %+v", b)
			}
		})
	}
}

func TestLoadFailsAgainstClosedPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	res, err := RunLoad(context.Background(), LoadSpec{Addr: addr, Concurrency: 2, Duration: 2 * time.Second, MaxConns: 5, ConnectTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Completed != 0 || res.Failed != 5 || res.FirstError == "" || res.FailP50us <= 0 {
		t.Fatalf("refused connections not counted as failures: %+v", res)
	}
}

func TestLoadSpecValidation(t *testing.T) {
	if _, err := RunLoad(context.Background(), LoadSpec{Addr: "127.0.0.1:1"}); err == nil {
		t.Fatal("zero spec accepted")
	}
}

func TestPercentiles(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Microsecond)
	}
	p50, p99 := percentiles(d)
	if p50 != 50 || p99 != 99 {
		t.Fatalf("p50 %v p99 %v", p50, p99)
	}
	if a, b := percentiles(nil); a != 0 || b != 0 {
		t.Fatal("empty percentiles not zero")
	}
}
