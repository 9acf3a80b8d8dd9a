package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/bireme/bireme/agent"
	"github.com/bireme/bireme/k8s/signer"
	"github.com/bireme/bireme/tokens"
)

// newSignerCmd is `bireme signer`: the cluster CA on Kubernetes, signing
// node certificate requests (signer bireme.io/node) only for the node the
// requesting agent runs on.
func newSignerCmd() *cobra.Command {
	var (
		kubeconfig, caDir, agentSA string
		listen                     string
		maxLifetime                time.Duration
		verbose                    bool
	)
	cmd := &cobra.Command{
		Use:   "signer --ca-dir DIR [--kubeconfig FILE] [--agent-service-account NS/NAME] [--max-lifetime 24h]",
		Short: "Sign the agents' node certificate requests (signer bireme.io/node) on Kubernetes",
		Long: `signer holds the cluster CA (DIR/ca.crt and DIR/ca.key, as 'bireme keys init-ca'
writes them; on a cluster, a Secret mounted read-only) and watches the
CertificateSigningRequests whose signerName is bireme.io/node. It approves and
signs one only when it comes from the agents' service account with a token bound
to a pod, and names the node that pod runs on (the API server writes the
requester and its node into the request; docs/kubernetes.md). Every other
request is denied with a condition saying why. Certificates live at most
--max-lifetime; agents renew them at two thirds of their lifetime.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			ns, name, ok := strings.Cut(agentSA, "/")
			if !ok || ns == "" || name == "" {
				return fmt.Errorf("--agent-service-account %q: want NAMESPACE/NAME", agentSA)
			}
			ca, err := tokens.LoadCA(filepath.Join(caDir, caCertFile), filepath.Join(caDir, caKeyFile))
			if err != nil {
				return fmt.Errorf("signer: %w", err)
			}
			cfg, err := restConfig(kubeconfig)
			if err != nil {
				return err
			}
			cfg.UserAgent = "bireme-signer"
			client, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return fmt.Errorf("API client: %w", err)
			}
			reg := prometheus.NewRegistry()
			s, err := signer.New(signer.Config{
				Client: client, CA: ca, AgentNamespace: ns, AgentServiceAccount: name,
				MaxLifetime: maxLifetime, Log: log, Metrics: reg,
			})
			if err != nil {
				return err
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			if listen != "" {
				served, err := agent.ServeMetrics(ctx, listen, reg, s)
				if err != nil {
					return fmt.Errorf("signer: %w", err)
				}
				log.Info("serving /metrics, /healthz and /readyz", "addr", listen)
				defer func() { <-served }() // after cancel: the server shuts down
			}
			return s.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file of the API server; empty: the in-cluster service account")
	f.StringVar(&caDir, "ca-dir", "", "directory holding the cluster CA's ca.crt and ca.key (required)")
	f.StringVar(&agentSA, "agent-service-account", "bireme-system/bireme-agent", "the agents' service account, the only requester whose requests are signed")
	f.DurationVar(&maxLifetime, "max-lifetime", signer.DefaultMaxLifetime, "longest lifetime of a node certificate (a request may ask for less)")
	f.StringVar(&listen, "listen", "", "serve Prometheus metrics at http://ADDR/metrics and the probes /healthz and /readyz (for example :9465); empty: none")
	f.BoolVarP(&verbose, "verbose", "v", false, "log debug messages")
	_ = cmd.MarkFlagRequired("ca-dir")
	return cmd
}
