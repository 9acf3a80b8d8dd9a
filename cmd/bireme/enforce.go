package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/bireme/bireme/agent"
	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/k8s/filestore"
	"github.com/bireme/bireme/policy"
	"github.com/bireme/bireme/tokens"
)

// enforceOptions are the flags of `bireme enforce`; `bireme agent` shares
// all but the store.
type enforceOptions struct {
	node, cluster, store string
	caBundle             []string
	trustBundles         string
	endRevoked           bool
	certFile, keyFile    string
	tokenLifetime        time.Duration
	natPeers             natPeersFlag
	twoMessage           bool
	twoMessageWindow     time.Duration
	identityNetworks     []string
	queues               int
	poll                 time.Duration
	flows                flowOptions
	// credentials, when set, replaces the --cert/--key files: it gets the
	// node's first credentials and a function that keeps them fresh
	// (the agent's certificate signing requests).
	credentials credentialsFunc
	// ipBlockIdentityOnly: the strict ipBlock mode (policy.Options).
	ipBlockIdentityOnly bool
}

// flowOptions say where flow records go: the file (or stdout), its
// rotation and the key of its head.
type flowOptions struct {
	path     string
	key      string
	maxBytes int64
	keep     int
}

// credentialsFunc gets a node's first credentials, and keep, which renews
// them into rotate until its context ends.
type credentialsFunc func(ctx context.Context, log *slog.Logger) (first *tokens.NodeCredentials, keep func(ctx context.Context, rotate func(*tokens.NodeCredentials) error) error, err error)

// newEnforceCmd is the node daemon: it protects this node's workloads from
// the file store until SIGTERM/SIGINT, then stops reading its queues and
// leaves its rules in place (fail closed; `bireme uninstall` removes them).
func newEnforceCmd() *cobra.Command {
	var (
		opts        enforceOptions
		metricsAddr string
		verbose     bool
	)
	cmd := &cobra.Command{
		Use:   "enforce --node NAME --store DIR --cluster NAME --ca-bundle FILE[,FILE...] --cert FILE --key FILE",
		Short: "Run the node enforcer for the workloads of one node in a file store",
		Long: `enforce protects every Pod in --store whose spec.nodeName is --node and which
carries the bireme.io/netns annotation (a name under /run/netns or an absolute
path). Namespaces, Pods and NetworkPolicies are re-read from --store every --poll;
an invalid change is logged and the last good set kept. One JSON flow record per
decision goes to --flows. On SIGTERM or SIGINT it stops reading its queues and
exits 0, leaving its rules in place: until an enforcer runs again, new
connections of its workloads wait (their SYNs are dropped and retransmitted)
while authorized ones keep flowing, and a restarted enforcer takes the rules
over. The rules of a pod go when it leaves the store; 'bireme uninstall'
removes them all.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serveNode(cmd, opts, opts.fileStore, metricsAddr, verbose)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.node, "node", "", "this node's name, matched against pods' spec.nodeName (required)")
	f.StringVar(&opts.store, "store", "", "directory of Namespace, Pod and NetworkPolicy YAML/JSON (required)")
	addNodeFlags(f, &opts, &metricsAddr, &verbose)
	f.DurationVar(&opts.poll, "poll", 200*time.Millisecond, "how often the store and key files are checked for changes")
	// --identity-networks has no default on purpose. "Everywhere" (the
	// behaviour before it existed) sends every workload's labels to any
	// external host it dials; a guess such as the RFC 1918 ranges would
	// leak them to private networks outside the cluster and silently
	// decide pods in other ranges by address only. Only the operator
	// knows the pod CIDRs.
	for _, name := range []string{"node", "store", "cluster", "ca-bundle", "cert", "key", "identity-networks"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// addNodeFlags declares the flags every node command shares (enforce,
// agent): credentials, trust, identity networks, flow records, metrics and
// the datapath.
func addNodeFlags(f *pflag.FlagSet, opts *enforceOptions, metricsAddr *string, verbose *bool) {
	f.StringVar(&opts.cluster, "cluster", "", "trust domain of the workloads' identities (required)")
	f.StringSliceVar(&opts.caBundle, "ca-bundle", nil, "PEM file(s) of the trusted cluster CAs, comma separated (required)")
	f.StringVar(&opts.trustBundles, "trust-bundles", "", "directory of foreign clusters' trust bundles, one SPIFFE bundle per trust domain named TRUST-DOMAIN.json (a mounted ConfigMap works), re-read every --poll: adding a file federates with that cluster, removing it refuses its new connections at once (docs/federation.md)")
	f.BoolVar(&opts.endRevoked, "end-revoked", false, "when a trust bundle is removed, also end the established connections with that cluster's workloads (conntrack entries deleted, sockets aborted, one flow record each)")
	f.StringVar(&opts.certFile, "cert", "", "this node's certificate, issued by the cluster CA (required)")
	f.StringVar(&opts.keyFile, "key", "", "this node's private key (required)")
	f.StringVar(&opts.flows.path, "flows", "-", "file the JSON flow records are appended to; - for stdout")
	f.StringVar(&opts.flows.key, "flows-key", "", "file of the node-local key (created if missing, mode 0600) that signs the flow file's head FILE.head, so that `bireme flows verify` detects a cut or rewritten tail; empty: no head")
	f.Int64Var(&opts.flows.maxBytes, "flows-max-bytes", 0, "rotate the flow file before it grows past this many bytes (FILE.1 is the newest old file); 0: never")
	f.IntVar(&opts.flows.keep, "flows-keep", 5, "rotated flow files kept")
	f.StringVar(metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics (for example 127.0.0.1:9464)")
	f.DurationVar(&opts.tokenLifetime, "token-lifetime", 5*time.Minute, "how long a signed identity token stays valid")
	f.StringSliceVar(&opts.identityNetworks, "identity-networks", nil, "address ranges where peers run an enforcer (the pod CIDRs), comma separated (required): only SYNs to them carry this node's identity tokens; other destinations get a plain SYN and are decided by ipBlock egress rules. 0.0.0.0/0,::/0 sends tokens everywhere, external hosts included")
	f.Var(&opts.natPeers, "nat-peers", "a trust domain whose nodes reach this one through source NAT, with its gateways' address ranges: their clients may be seen from those addresses instead of their own (repeatable; docs/protocol.md)")
	f.BoolVar(&opts.twoMessage, "two-message", true, "complete handshakes with known peer nodes in two messages (four queue trips, the ACK never queued); false: always three messages. Either way this node answers both kinds of SYN (docs/protocol.md)")
	f.DurationVar(&opts.twoMessageWindow, "two-message-window", tokens.DefaultTwoMessageWindow, "how far a two-message SYN's timestamp may be from this node's clock; also how long after a start they use three messages")
	f.IntVar(&opts.queues, "queues", 1, "NFQUEUE queues per workload")
	f.BoolVar(&opts.ipBlockIdentityOnly, "ipblock-identity-only", false, ipBlockIdentityOnlyHelp)
	f.BoolVarP(verbose, "verbose", "v", false, "log debug messages")
}

// sourceFunc builds the source of desired state a node runs with, once
// the node's log exists.
type sourceFunc func(log *slog.Logger) (desired.Source, error)

// fileStore is `bireme enforce`'s source: the store directory.
func (o enforceOptions) fileStore(log *slog.Logger) (desired.Source, error) {
	return filestore.NewSource(filestore.Config{Dir: o.store, Node: o.node, Cluster: o.cluster, Poll: o.poll, Log: log,
		Policy: policy.Options{IPBlockIdentityOnly: o.ipBlockIdentityOnly}})
}

// serveNode runs a node command (enforce, agent) until its context ends:
// the log, the flow records and the metrics server around [runNode].
func serveNode(cmd *cobra.Command, opts enforceOptions, newSource sourceFunc, metricsAddr string, verbose bool) error {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level})).With("node", opts.node)

	out, closeFlows, err := openFlows(opts.flows, cmd.OutOrStdout(), log)
	if err != nil {
		return err
	}
	defer closeFlows()

	ctx, cancel := context.WithCancel(cmd.Context())
	defer cancel()                       // also stops the metrics server when the node fails
	var metricsReg prometheus.Registerer // nil: no metrics
	health := &agent.Health{}
	if metricsAddr != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		metricsReg = reg
		served, err := agent.ServeMetrics(ctx, metricsAddr, reg, health)
		if err != nil {
			return err
		}
		defer func() {
			cancel()
			if err := <-served; err != nil {
				log.Error("metrics server", "err", err)
			}
		}()
	}
	return runNode(ctx, opts, newSource, out, metricsReg, health, log)
}

// runNode assembles one node (the token engine from the node's keys and
// the CA bundle, the source newSource builds, the real datapath, the
// metrics when reg is set) and runs its agent until ctx ends.
func runNode(ctx context.Context, o enforceOptions, newSource sourceFunc, flows *flowlog.Writer, reg prometheus.Registerer, health *agent.Health, log *slog.Logger) (err error) {
	var (
		creds    *tokens.NodeCredentials
		keep     func(context.Context, func(*tokens.NodeCredentials) error) error
		nodeKeys *agent.NodeKeys // the files, reloaded when they change
	)
	if o.credentials != nil {
		if creds, keep, err = o.credentials(ctx, log); err != nil {
			return err
		}
	} else {
		if creds, err = tokens.LoadNodeCredentials(o.certFile, o.keyFile); err != nil {
			return fmt.Errorf("load node credentials: %w", err)
		}
		nodeKeys = &agent.NodeKeys{CertFile: o.certFile, KeyFile: o.keyFile}
	}
	trust, engine, err := o.tokenEngine(creds, log)
	if err != nil {
		return err
	}
	source, err := newSource(log)
	if err != nil {
		return err
	}
	var metrics *agent.Metrics
	var (
		onDecision func(*flowlog.Record)
		onStage    func(string, bool, time.Duration)
	)
	if reg != nil {
		if metrics, err = agent.NewMetrics(reg); err != nil {
			return err
		}
		onDecision, onStage = metrics.Observe, metrics.ObserveStage
	}
	// No policy until the source delivers one: nothing is protected yet.
	live := policy.NewLive(nil)
	// No pod placed either: every peer token is refused until then.
	placement := agent.NewLivePlacement()
	identityNetworks, err := parseIdentityNetworks(o.identityNetworks)
	if err != nil {
		return err
	}
	dp, err := agent.NewNodeDatapath(agent.NodeDatapathConfig{
		Node: o.node, Queues: o.queues, Tokens: engine, Policy: live, Placement: placement,
		Services: placement, Addresses: placement,
		Flows: flows, OnDecision: onDecision, OnStage: onStage, Log: log,
		IdentityNetworks: identityNetworks,
	})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := dp.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close enforcer: %w", cerr))
		}
	}()
	if metrics != nil {
		if err := metrics.RegisterEnforcer(dp.Stats()); err != nil {
			return err
		}
	}
	if o.endRevoked {
		trust.OnRevoke(func(td string) { dp.EndConnections(td) })
	}
	node, err := agent.New(agent.Config{
		Source: source, Datapath: dp, Policy: live, Placement: placement, Tokens: engine,
		NodeKeys: nodeKeys, Trust: trust,
		Poll: o.poll, Metrics: metrics, Health: health, Log: log,
	})
	if err != nil {
		return err
	}
	if keep != nil {
		keepCtx, stopKeep := context.WithCancel(ctx)
		kept := make(chan error, 1)
		go func() { kept <- keep(keepCtx, engine.Rotate) }()
		defer func() {
			stopKeep()
			if kerr := <-kept; kerr != nil {
				err = errors.Join(err, fmt.Errorf("node credentials: %w", kerr))
			}
		}()
	}
	return node.Run(ctx)
}

// tokenEngine builds the token engine from the node's credentials and
// the trust (the local CAs and the foreign bundles), and returns it with
// the reloader that keeps its trust up to date.
func (o enforceOptions) tokenEngine(creds *tokens.NodeCredentials, log *slog.Logger) (*agent.TrustReloader, *tokens.Engine, error) {
	if creds.TrustDomain != o.cluster {
		return nil, nil, fmt.Errorf("node certificate is for trust domain %q, not cluster %q", creds.TrustDomain, o.cluster)
	}
	if len(o.caBundle) == 0 {
		return nil, nil, errors.New("no CA bundle: give --ca-bundle")
	}
	reloader, trust, err := agent.LoadTrust(agent.TrustFiles{CAFiles: o.caBundle, BundleDir: o.trustBundles, LocalDomain: o.cluster}, log)
	if err != nil {
		return nil, nil, err
	}
	engine, err := tokens.NewEngine(tokens.Config{Credentials: creds, Trust: trust, TokenLifetime: o.tokenLifetime, NATGateways: o.natPeers.gateways,
		TwoMessage: o.twoMessage, TwoMessageWindow: o.twoMessageWindow})
	if err != nil {
		return nil, nil, fmt.Errorf("token engine: %w", err)
	}
	reloader.Attach(engine)
	log.Info("trust", "trust_domains", strings.Join(trust.TrustDomains(), ","))
	return reloader, engine, nil
}

// openFlows returns where flow records go: stdout for "-", else the file,
// appended to so that a restarted enforcer continues the same log and its
// chain, rotated and with a keyed head as o says.
func openFlows(o flowOptions, stdout io.Writer, log *slog.Logger) (*flowlog.Writer, func(), error) {
	if o.path == "-" || o.path == "" {
		if o.key != "" || o.maxBytes != 0 {
			return nil, nil, errors.New("--flows-key and --flows-max-bytes need a --flows file")
		}
		return flowlog.NewWriter(stdout), func() {}, nil
	}
	cfg := flowlog.FileConfig{Path: o.path, MaxBytes: o.maxBytes, Keep: o.keep, Log: log}
	if o.key != "" {
		key, err := flowlog.LoadOrCreateKey(o.key)
		if err != nil {
			return nil, nil, err
		}
		cfg.Key = key
	}
	w, c, err := flowlog.OpenFile(cfg)
	if err != nil {
		return nil, nil, err
	}
	return w, func() {
		if err := c.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			fmt.Fprintln(os.Stderr, "bireme: close flows file:", err)
		}
	}, nil
}

// parseIdentityNetworks reads --identity-networks: at least one CIDR.
func parseIdentityNetworks(cidrs []string) ([]netip.Prefix, error) {
	if len(cidrs) == 0 {
		return nil, errors.New("--identity-networks: give the address ranges where peers run an enforcer (the pod CIDRs)")
	}
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, fmt.Errorf("--identity-networks %q: %w", c, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
