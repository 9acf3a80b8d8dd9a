package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/k8s/dockersource"
	"github.com/bireme/bireme/k8s/dockersource/runtimehook"
	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/supervisor"
)

// dockerOptions are what every `bireme docker` command needs to find the
// engine and to pick the containers: the same for the agent, the runtime
// hook, status, explain and uninstall, so that they agree.
type dockerOptions struct {
	dockerHost string
	host       string
	all        bool
}

func defaultDockerHost() string {
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		return h
	}
	return "unix:///var/run/docker.sock"
}

func defaultHostName() string {
	h, _ := os.Hostname()
	return h
}

func (d *dockerOptions) addFlags(f *pflag.FlagSet) {
	f.StringVar(&d.dockerHost, "docker-host", defaultDockerHost(), "the Docker engine's API ($DOCKER_HOST, else unix:///var/run/docker.sock)")
	f.StringVar(&d.host, "host", defaultHostName(), "this host's node name: the node of its containers in tokens and placement")
	f.BoolVar(&d.all, "all", false, "protect every container, not only those labelled bireme.io/protect=true (bireme.io/protect=false still opts out)")
}

func (d dockerOptions) rules() dockersource.Rules {
	return dockersource.Rules{Host: d.host, All: d.all}
}

// newDockerCmd is `bireme docker`: the host agent, and its status,
// runtime wrapper and runtime hook.
func newDockerCmd() *cobra.Command {
	var (
		opts        enforceOptions
		dock        dockerOptions
		policyDir   string
		resync      time.Duration
		metricsAddr string
		verbose     bool
	)
	cmd := &cobra.Command{
		Use:   "docker --policy-dir DIR --cluster NAME --ca-bundle FILE --cert FILE --key FILE --identity-networks CIDR[,CIDR...]",
		Short: "Run the node enforcer for the containers of a Docker host",
		Long: `docker protects the running containers of a Docker engine that are labelled
bireme.io/protect=true (every container with --all): a container is the pod
bireme.io/namespace/NAME (namespace "default" when the label is absent), its
labels are the pod's labels and --host is its node. Containers are listed at
start and followed through the engine's events; the network namespace is the
one of the container's process. --network host containers are refused with a
log line (their namespace is the host's). The policy is the Namespaces and
NetworkPolicies of --policy-dir (and its Pods: where workloads of other nodes
run), re-read every --poll; an invalid change is logged and the last good set
kept. One JSON flow record per decision goes to --flows.

Docker reports a start only after the container's process runs: to protect a
container before it can connect or accept, give Docker the runtime
'bireme docker runc' (docs/docker.md), whose hook fences the container's
namespace before its process starts. On SIGTERM or SIGINT the agent exits 0
and leaves its rules in place, as enforce does; 'bireme uninstall
--docker-host' removes them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.node = dock.host
			newSource := func(log *slog.Logger) (desired.Source, error) {
				engine, err := dockersource.NewClient(dock.dockerHost)
				if err != nil {
					return nil, err
				}
				return dockersource.New(dockersource.Config{
					Engine: engine, Rules: dock.rules(), Cluster: opts.cluster,
					PolicyDir: policyDir, Poll: opts.poll, Resync: resync, Log: log,
				})
			}
			if dock.host == "" {
				return errors.New("no host name: give --host")
			}
			if st, err := os.Stat(policyDir); err != nil || !st.IsDir() {
				return fmt.Errorf("--policy-dir %q: not a directory", policyDir)
			}
			return serveNode(cmd, opts, newSource, metricsAddr, verbose)
		},
	}
	f := cmd.Flags()
	dock.addFlags(f)
	f.StringVar(&policyDir, "policy-dir", "", "directory of Namespace, NetworkPolicy (and other nodes' Pod) YAML/JSON (required)")
	addNodeFlags(f, &opts, &metricsAddr, &verbose)
	f.DurationVar(&opts.poll, "poll", 200*time.Millisecond, "how often the policy directory and key files are checked for changes")
	f.DurationVar(&resync, "resync", 30*time.Second, "how often the containers are listed again without an event")
	for _, name := range []string{"policy-dir", "cluster", "ca-bundle", "cert", "key", "identity-networks"} {
		_ = cmd.MarkFlagRequired(name)
	}
	cmd.AddCommand(newDockerStatusCmd(), newDockerRuncCmd(), newDockerHookCmd())
	return cmd
}

// containerStatus is one line of `bireme docker status`.
type containerStatus struct {
	Container string   `json:"container"`
	Identity  string   `json:"identity,omitempty"`
	Labels    string   `json:"labels,omitempty"`
	Addresses []string `json:"addresses,omitempty"`
	NetNS     string   `json:"netns,omitempty"`
	Status    string   `json:"status"`
}

func newDockerStatusCmd() *cobra.Command {
	var (
		dock   dockerOptions
		output string
	)
	cmd := &cobra.Command{
		Use:   "status [--docker-host URL] [--all] [--output table|json]",
		Short: "List the host's containers with their identity, address and whether Bireme's rules are in their namespace",
		Long: `status lists the running containers the agent would protect (and the refused
ones, with the reason): identity (namespace/name), labels, addresses, network
namespace, and whether Bireme's chains are in that namespace, read from the
kernel: "protected" when they are, "NOT protected" when the agent has not
(yet) installed them. Give the same --all and --host as the agent.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: want table or json", output)
			}
			rows, err := dockerStatus(cmd.Context(), dock)
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), rows)
			}
			return printDockerStatus(cmd.OutOrStdout(), rows)
		},
	}
	dock.addFlags(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

// dockerStatus lists the opted-in running containers and checks the
// kernel for Bireme's chains in each one's namespace.
func dockerStatus(ctx context.Context, dock dockerOptions) ([]containerStatus, error) {
	engine, err := dockersource.NewClient(dock.dockerHost)
	if err != nil {
		return nil, err
	}
	defer engine.Close()
	running, err := engine.Running(ctx)
	if err != nil {
		return nil, err
	}
	sup := supervisor.New(marks.Layout{})
	rules := dock.rules()
	var rows []containerStatus
	for _, c := range running {
		if d := rules.Pod(c); d.Pod == nil {
			continue
		}
		full, err := engine.Inspect(ctx, c.ID)
		if err != nil {
			continue // gone since the list
		}
		d := rules.Pod(full)
		row := containerStatus{Container: full.Name, Status: d.Status, NetNS: full.NetNS()}
		row.Identity = d.Pod.Namespace + "/" + d.Pod.Name
		row.Labels = labelString(d.Pod.Labels)
		for _, a := range full.Addresses {
			row.Addresses = append(row.Addresses, a.String())
		}
		if d.Protect {
			switch ok, err := sup.Installed(ctx, full.NetNS()); {
			case err != nil:
				row.Status = "unknown: " + err.Error()
			case ok:
				row.Status = "protected"
			default:
				row.Status = "NOT protected: no Bireme rules in its namespace (is the agent running?)"
			}
		} else {
			row.NetNS = ""
		}
		rows = append(rows, row)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Identity < rows[j].Identity })
	return rows, nil
}

func labelString(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}

func printDockerStatus(out io.Writer, rows []containerStatus) error {
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTAINER\tIDENTITY\tADDRESS\tLABELS\tNETNS\tSTATUS")
	for _, r := range rows {
		addr := strings.Join(r.Addresses, ",")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Container, r.Identity, dash(addr), dash(r.Labels), dash(r.NetNS), r.Status)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// dockerPods returns the running containers that opted in, as the pods
// the agent makes of them, for `bireme policy explain --docker-host`.
func dockerPods(ctx context.Context, dock dockerOptions) ([]*corev1.Pod, error) {
	engine, err := dockersource.NewClient(dock.dockerHost)
	if err != nil {
		return nil, err
	}
	defer engine.Close()
	running, err := engine.Running(ctx)
	if err != nil {
		return nil, err
	}
	rules := dock.rules()
	var pods []*corev1.Pod
	for _, c := range running {
		c.Pid = 1 // running: Rules.Pod needs no more of it here
		if d := rules.Pod(c); d.Protect {
			pods = append(pods, d.Pod)
		}
	}
	return pods, nil
}

// runtimeOptions configure the runtime wrapper and the hook it adds.
type runtimeOptions struct {
	dock   dockerOptions
	runc   string
	queues int
}

// newDockerRuncCmd is the OCI runtime Docker is given (`--add-runtime`):
// runc, with Bireme's hook added to every container it creates.
func newDockerRuncCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "runc [--runc PATH] [--docker-host URL] [--all] [--queues N] -- RUNC-ARGS...",
		Short: "An OCI runtime for Docker: runc, with a hook that fences protected containers before their process starts",
		Long: `runc is meant to be Docker's runtime, through a two-line script such as

    #!/bin/sh
    exec /usr/local/bin/bireme docker runc --docker-host unix:///var/run/docker.sock -- "$@"

registered with dockerd --add-runtime bireme=SCRIPT --default-runtime bireme (or
"runtimes" and "default-runtime" in daemon.json). It runs runc with the same
arguments; on "create" it first adds to the container's OCI config a
createRuntime hook, 'bireme docker hook', which runc runs once the container's
namespaces exist and before its process starts. Give it the agent's --all.`,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			o, runcArgs, err := parseRuntimeArgs(args)
			if err != nil {
				return err
			}
			return runRuntime(o, runcArgs)
		},
	}
}

// parseRuntimeArgs reads the wrapper's own flags, up to "--"; the rest is
// runc's command line.
func parseRuntimeArgs(args []string) (runtimeOptions, []string, error) {
	o := runtimeOptions{dock: dockerOptions{dockerHost: defaultDockerHost()}, runc: "runc", queues: 1}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return o, args[i+1:], nil
		}
		name, value, hasValue := strings.Cut(a, "=")
		takeValue := func() (string, error) {
			if hasValue {
				return value, nil
			}
			if i+1 >= len(args) {
				return "", fmt.Errorf("docker runc: %s needs a value", name)
			}
			i++
			return args[i], nil
		}
		var err error
		switch name {
		case "--runc":
			o.runc, err = takeValue()
		case "--docker-host":
			o.dock.dockerHost, err = takeValue()
		case "--all":
			o.dock.all = true
		case "--queues":
			var v string
			if v, err = takeValue(); err == nil {
				o.queues, err = strconv.Atoi(v)
			}
		default:
			return o, nil, fmt.Errorf("docker runc: unknown flag %q before \"--\"", a)
		}
		if err != nil {
			return o, nil, fmt.Errorf("docker runc: %s: %w", name, err)
		}
	}
	return o, nil, errors.New(`docker runc: no "--" before runc's arguments`)
}

// runRuntime adds the hook on create, then becomes runc.
func runRuntime(o runtimeOptions, runcArgs []string) error {
	runc, err := exec.LookPath(o.runc)
	if err != nil {
		return fmt.Errorf("docker runc: %w", err)
	}
	if bundle, ok := runtimehook.CreateBundle(runcArgs); ok {
		if err := addHook(o, bundle); err != nil {
			// No hook means no fence: the container must not start.
			return fmt.Errorf("docker runc: %w", err)
		}
	}
	return syscall.Exec(runc, append([]string{"runc"}, runcArgs...), os.Environ())
}

// addHook rewrites BUNDLE/config.json with the hook added.
func addHook(o runtimeOptions, bundle string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("own path: %w", err)
	}
	args := []string{"bireme", "docker", "hook", "--docker-host", o.dock.dockerHost, "--queues", strconv.Itoa(o.queues)}
	if o.dock.all {
		args = append(args, "--all")
	}
	timeout := 60
	path := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read OCI config: %w", err)
	}
	out, err := runtimehook.AddCreateRuntimeHook(data, runtimehook.Hook{
		Path: self, Args: args, Timeout: &timeout,
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	})
	if err != nil {
		return err
	}
	tmp := path + ".bireme"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return fmt.Errorf("write OCI config: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write OCI config: %w", err)
	}
	return nil
}

// newDockerHookCmd is the createRuntime hook the wrapper adds: runc runs it
// with the container's state on stdin, after its namespaces exist and
// before its process starts.
func newDockerHookCmd() *cobra.Command {
	var (
		dock   dockerOptions
		queues int
	)
	cmd := &cobra.Command{
		Use:   "hook [--docker-host URL] [--all] [--queues N] < OCI-STATE",
		Short: "OCI createRuntime hook: fence a container the agent protects before its process starts",
		Long: `hook is run by runc (added by 'bireme docker runc'), with the container's OCI
state on stdin. If the agent would protect the container (the same rules:
bireme.io/protect=true or --all, not --network host or container:), it
installs Bireme's rules in the container's network namespace before the
container's process starts. Until the agent's enforcer reads their queues,
those rules drop every handshake of the container, in and out; the agent takes
them over when it sees the container start. It fails (and so does the
container's start) when it cannot read the container's labels or install the
rules: a protected container never runs unfenced.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
			if err != nil {
				return fmt.Errorf("docker hook: read state: %w", err)
			}
			st, err := runtimehook.ParseState(data)
			if err != nil {
				return fmt.Errorf("docker hook: %w", err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 50*time.Second)
			defer cancel()
			return runHook(ctx, dock, queues, st, cmd.ErrOrStderr())
		},
	}
	dock.addFlags(cmd.Flags())
	cmd.Flags().IntVar(&queues, "queues", 1, "NFQUEUE queues per workload (the agent's --queues)")
	return cmd
}

// runHook fences the container of st if the agent's rules protect it.
func runHook(ctx context.Context, dock dockerOptions, queues int, st runtimehook.State, log io.Writer) error {
	engine, err := dockersource.NewClient(dock.dockerHost)
	if err != nil {
		return fmt.Errorf("docker hook: %w", err)
	}
	defer engine.Close()
	c, err := engine.ByID(ctx, st.ID)
	if err != nil {
		return fmt.Errorf("docker hook: labels of container %s: %w", st.ID, err)
	}
	c.Pid = st.Pid
	d := dock.rules().Pod(c)
	if !d.Protect {
		return nil
	}
	if queues < 1 || queues > 1024 {
		return fmt.Errorf("docker hook: --queues %d: want 1 to 1024", queues)
	}
	sup := supervisor.New(marks.Layout{Queues: uint16(queues)})
	if err := sup.Protect(ctx, c.NetNS()); err != nil {
		return fmt.Errorf("docker hook: fence container %s: %w", c.Name, err)
	}
	fmt.Fprintf(log, "bireme docker hook: container %s fenced in %s before its start\n", c.Name, c.NetNS())
	return nil
}
