package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/k8s/apisource"
	"github.com/bireme/bireme/k8s/podnetns"
	"github.com/bireme/bireme/policy"
)

// agentOptions are the flags `bireme agent` adds to the node flags.
type agentOptions struct {
	kubeconfig  string
	netnsCheck  time.Duration
	syncTimeout time.Duration
}

// newAgentCmd is the node daemon on Kubernetes: the same node as
// `bireme enforce`, with the API server as its source.
func newAgentCmd() *cobra.Command {
	var (
		opts        enforceOptions
		api         agentOptions
		flows       string
		metricsAddr string
		verbose     bool
	)
	cmd := &cobra.Command{
		Use:   "agent --node NAME --cluster NAME --ca-bundle FILE[,FILE...] --cert FILE --key FILE --identity-networks CIDR[,CIDR...] [--kubeconfig FILE]",
		Short: "Run the node enforcer for the pods the Kubernetes API server places on this node",
		Long: `agent protects every Running pod whose spec.nodeName is --node, following the
API server (in-cluster configuration, or --kubeconfig): pods, namespaces and
NetworkPolicies are watched, and a change takes effect for new connections at
once. A pod's network namespace is the one on this machine that holds the pod's
IP (found by scanning /proc/*/ns/net, so the agent needs the host's PID
namespace, and /run/netns), checked again every --netns-check. hostNetwork pods
are never protected. A peer's token is accepted only for a pod the API server
places on the peer's node. One JSON flow record per decision goes to --flows.
On SIGTERM or SIGINT it exits 0 and leaves its rules in place, as enforce does
(fail closed until an agent runs again; 'bireme uninstall' removes them).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			newSource := func(log *slog.Logger) (desired.Source, error) { return api.source(opts, log) }
			return serveNode(cmd, opts, newSource, flows, metricsAddr, verbose)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.node, "node", os.Getenv("NODE_NAME"), "this node's name, matched against pods' spec.nodeName (default $NODE_NAME, which a DaemonSet sets from spec.nodeName)")
	f.StringVar(&api.kubeconfig, "kubeconfig", "", "kubeconfig file of the API server; empty: the in-cluster service account")
	addNodeFlags(f, &opts, &flows, &metricsAddr, &verbose)
	f.DurationVar(&opts.poll, "poll", 200*time.Millisecond, "how often failed installs are retried and key files checked for changes")
	f.DurationVar(&api.netnsCheck, "netns-check", time.Second, "how often the pods' network namespaces are looked up again")
	f.DurationVar(&api.syncTimeout, "sync-timeout", time.Minute, "how long to wait for the first complete view of the API before giving up")
	for _, name := range []string{"cluster", "ca-bundle", "cert", "key", "identity-networks"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// source connects to the API server and builds the agent's source.
func (a agentOptions) source(opts enforceOptions, log *slog.Logger) (desired.Source, error) {
	if opts.node == "" {
		return nil, fmt.Errorf("no node name: give --node or set NODE_NAME")
	}
	var (
		cfg *rest.Config
		err error
	)
	if a.kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", a.kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("API server configuration: %w", err)
	}
	cfg.UserAgent = "bireme-agent/" + opts.node
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	cnps, err := cnpclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	return apisource.New(apisource.Config{
		Client:          client,
		ClusterPolicies: cnps,
		Node:            opts.node,
		Cluster:         opts.cluster,
		NetNS:           podnetns.Scanner{},
		Verify:          a.netnsCheck,
		SyncTimeout:     a.syncTimeout,
		Log:             log,
		Policy:          policy.Options{IPBlockIdentityOnly: opts.ipBlockIdentityOnly},
	})
}
