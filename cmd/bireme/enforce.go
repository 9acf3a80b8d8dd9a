package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/bireme/bireme/agent"
)

// newEnforceCmd is the node daemon: it protects this node's workloads from
// the file store until SIGTERM/SIGINT, then removes everything it installed.
func newEnforceCmd() *cobra.Command {
	var (
		cfg         agent.Config
		flows       string
		metricsAddr string
		verbose     bool
		natPeers    natPeersFlag
	)
	cmd := &cobra.Command{
		Use:   "enforce --node NAME --store DIR --cluster NAME --ca-bundle FILE[,FILE...] --cert FILE --key FILE",
		Short: "Run the node enforcer for the workloads of one node in a file store",
		Long: `enforce protects every Pod in --store whose spec.nodeName is --node and which
carries the bireme.io/netns annotation (a name under /run/netns or an absolute
path). Namespaces, Pods and NetworkPolicies are re-read from --store every --poll;
an invalid change is logged and the last good set kept. One JSON flow record per
decision goes to --flows. On SIGTERM or SIGINT every rule and queue it installed
is removed and it exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			cfg.Log = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))

			out, closeFlows, err := openFlows(flows, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			defer closeFlows()
			cfg.Flows = out

			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel() // also stops the metrics server when Run fails
			if metricsAddr != "" {
				reg := prometheus.NewRegistry()
				reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
				cfg.Metrics = reg
				served, err := agent.ServeMetrics(ctx, metricsAddr, reg)
				if err != nil {
					return err
				}
				defer func() {
					cancel()
					if err := <-served; err != nil {
						cfg.Log.Error("metrics server", "err", err)
					}
				}()
			}
			cfg.NATGateways = natPeers.gateways
			return agent.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Node, "node", "", "this node's name, matched against pods' spec.nodeName (required)")
	f.StringVar(&cfg.StoreDir, "store", "", "directory of Namespace, Pod and NetworkPolicy YAML/JSON (required)")
	f.StringVar(&cfg.Cluster, "cluster", "", "trust domain of the workloads' identities (required)")
	f.StringSliceVar(&cfg.CABundle, "ca-bundle", nil, "PEM file(s) of the trusted cluster CAs, comma separated (required)")
	f.StringVar(&cfg.CertFile, "cert", "", "this node's certificate, issued by the cluster CA (required)")
	f.StringVar(&cfg.KeyFile, "key", "", "this node's private key (required)")
	f.StringVar(&flows, "flows", "-", "file the JSON flow records are appended to; - for stdout")
	f.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics (for example 127.0.0.1:9464)")
	f.DurationVar(&cfg.TokenLifetime, "token-lifetime", 5*time.Minute, "how long a signed identity token stays valid")
	f.Var(&natPeers, "nat-peers", "a trust domain whose nodes reach this one through source NAT, with its gateways' address ranges: their clients may be seen from those addresses instead of their own (repeatable; docs/protocol.md)")
	f.IntVar(&cfg.Queues, "queues", 1, "NFQUEUE queues per workload")
	f.DurationVar(&cfg.Poll, "poll", 200*time.Millisecond, "how often the store and key files are checked for changes")
	f.BoolVarP(&verbose, "verbose", "v", false, "log debug messages")
	for _, name := range []string{"node", "store", "cluster", "ca-bundle", "cert", "key"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// openFlows returns where flow records go: stdout for "-", else the file,
// appended to so that a restarted enforcer continues the same log.
func openFlows(path string, stdout io.Writer) (io.Writer, func(), error) {
	if path == "-" || path == "" {
		return stdout, func() {}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("open flows file: %w", err)
	}
	return f, func() {
		if err := f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			fmt.Fprintln(os.Stderr, "bireme: close flows file:", err)
		}
	}, nil
}
