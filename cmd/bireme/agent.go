package main

import (
	"context"
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
	"github.com/bireme/bireme/k8s/nodecert"
	"github.com/bireme/bireme/k8s/podnetns"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

// agentOptions are the flags `bireme agent` adds to the node flags.
type agentOptions struct {
	kubeconfig  string
	netnsCheck  time.Duration
	syncTimeout time.Duration
	// nodeCreds is "files" (--cert/--key) or "csr" (requested through
	// the API, kept in stateDir).
	nodeCreds    string
	stateDir     string
	certLifetime time.Duration
	// publishedNodeCerts: learn peer node keys from the node signer's
	// requests (apisource.Config.NodeCertificates).
	publishedNodeCerts bool

	client kubernetes.Interface // made once, shared by the source and the CSRs
}

// newAgentCmd is the node daemon on Kubernetes: the same node as
// `bireme enforce`, with the API server as its source.
func newAgentCmd() *cobra.Command {
	var (
		opts        enforceOptions
		api         agentOptions
		metricsAddr string
		verbose     bool
	)
	cmd := &cobra.Command{
		Use:   "agent --node NAME --cluster NAME --ca-bundle FILE[,FILE...] (--cert FILE --key FILE | --node-credentials csr) --identity-networks CIDR[,CIDR...] [--kubeconfig FILE]",
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
(fail closed until an agent runs again; 'bireme uninstall' removes them).

Node credentials come from --cert/--key (files, reloaded when they change), or
with --node-credentials csr from the API: the agent makes its key in
--state-dir (mode 0600, reused after a restart), asks 'bireme signer' for its
certificate with a CertificateSigningRequest (signer bireme.io/node), and
renews it with a new key at two thirds of its lifetime.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch api.nodeCreds {
			case "files":
				if opts.certFile == "" || opts.keyFile == "" {
					return fmt.Errorf("--node-credentials files: give --cert and --key")
				}
			case "csr":
				if opts.certFile != "" || opts.keyFile != "" {
					return fmt.Errorf("--node-credentials csr: the key and certificate are in --state-dir; do not give --cert or --key")
				}
				if api.stateDir == "" {
					return fmt.Errorf("--node-credentials csr: give --state-dir")
				}
				opts.credentials = func(ctx context.Context, log *slog.Logger) (*tokens.NodeCredentials, func(context.Context, func(*tokens.NodeCredentials) error) error, error) {
					return api.csrCredentials(ctx, opts, log)
				}
			default:
				return fmt.Errorf("--node-credentials %q: want files or csr", api.nodeCreds)
			}
			newSource := func(log *slog.Logger) (desired.Source, error) { return api.source(opts, log) }
			return serveNode(cmd, opts, newSource, metricsAddr, verbose)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.node, "node", os.Getenv("NODE_NAME"), "this node's name, matched against pods' spec.nodeName (default $NODE_NAME, which a DaemonSet sets from spec.nodeName)")
	f.StringVar(&api.kubeconfig, "kubeconfig", "", "kubeconfig file of the API server; empty: the in-cluster service account")
	addNodeFlags(f, &opts, &metricsAddr, &verbose)
	f.DurationVar(&opts.poll, "poll", 200*time.Millisecond, "how often failed installs are retried and key files checked for changes")
	f.DurationVar(&api.netnsCheck, "netns-check", time.Second, "how often the pods' network namespaces are looked up again")
	f.DurationVar(&api.syncTimeout, "sync-timeout", time.Minute, "how long to wait for the first complete view of the API before giving up")
	f.StringVar(&api.nodeCreds, "node-credentials", "files", "where the node key and certificate come from: files (--cert, --key) or csr (a CertificateSigningRequest to 'bireme signer', the key made and kept in --state-dir)")
	f.StringVar(&api.stateDir, "state-dir", "/var/lib/bireme/node", "with --node-credentials csr: directory of the node key and certificate (0700, files 0600)")
	f.BoolVar(&api.publishedNodeCerts, "published-node-certs", false, "learn peer node keys ahead of time from the node certificates 'bireme signer' issued (requests of signer bireme.io/node; needs list and watch on certificatesigningrequests): the first connection to a pod of such a node takes the two-message handshake")
	f.DurationVar(&api.certLifetime, "cert-lifetime", nodecert.DefaultLifetime, "with --node-credentials csr: certificate lifetime to ask for (at least 10m; the signer may cap it)")
	for _, name := range []string{"cluster", "ca-bundle", "identity-networks"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// restConfig is the API server's configuration: the kubeconfig file, or
// the in-cluster service account when it is empty.
func restConfig(kubeconfig string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("API server configuration: %w", err)
	}
	return cfg, nil
}

// apiClient connects to the API server once for the source and the
// certificate requests.
func (a *agentOptions) apiClient(opts enforceOptions) (kubernetes.Interface, error) {
	if a.client != nil {
		return a.client, nil
	}
	if opts.node == "" {
		return nil, fmt.Errorf("no node name: give --node or set NODE_NAME")
	}
	cfg, err := restConfig(a.kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "bireme-agent/" + opts.node
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	a.client = client
	return client, nil
}

// csrCredentials gets the node's credentials through a certificate
// signing request (or from the state directory) and returns the renewal
// loop.
func (a *agentOptions) csrCredentials(ctx context.Context, opts enforceOptions, log *slog.Logger) (*tokens.NodeCredentials, func(context.Context, func(*tokens.NodeCredentials) error) error, error) {
	client, err := a.apiClient(opts)
	if err != nil {
		return nil, nil, err
	}
	m, err := nodecert.New(nodecert.Config{
		Client: client, Node: opts.node, TrustDomain: opts.cluster,
		StateDir: a.stateDir, Lifetime: a.certLifetime, Log: log,
	})
	if err != nil {
		return nil, nil, err
	}
	creds, err := m.Initial(ctx)
	if err != nil {
		return nil, nil, err
	}
	return creds, m.Run, nil
}

// source connects to the API server and builds the agent's source.
func (a *agentOptions) source(opts enforceOptions, log *slog.Logger) (desired.Source, error) {
	client, err := a.apiClient(opts)
	if err != nil {
		return nil, err
	}
	cfg, err := restConfig(a.kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "bireme-agent/" + opts.node
	cnps, err := cnpclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	return apisource.New(apisource.Config{
		Client:           client,
		ClusterPolicies:  cnps,
		Node:             opts.node,
		Cluster:          opts.cluster,
		NetNS:            podnetns.Scanner{},
		Verify:           a.netnsCheck,
		SyncTimeout:      a.syncTimeout,
		Log:              log,
		Policy:           policy.Options{IPBlockIdentityOnly: opts.ipBlockIdentityOnly},
		NodeCertificates: a.publishedNodeCerts,
	})
}
