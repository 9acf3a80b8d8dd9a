package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/k8s/filestore"
	"github.com/bireme/bireme/policy"
)

// newPolicyCmd is `bireme policy`: check and explain NetworkPolicy files
// offline, with the same loader and engine the enforcer uses.
func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Validate NetworkPolicy files, explain decisions and report coverage",
	}
	cmd.AddCommand(newPolicyCheckCmd(), newPolicyExplainCmd(), newPolicyReportCmd())
	return cmd
}

// ipBlockIdentityOnlyHelp documents --ipblock-identity-only, the strict
// ipBlock mode of policy.Options.
const ipBlockIdentityOnlyHelp = "strict ipBlock mode: ipBlock rules (and ClusterNetworkPolicy networks peers) match only peers WITHOUT an identity; by default they match any peer's observed address, as upstream Kubernetes does"

// loadPolicyInput loads and compiles -f inputs (files or directories).
func loadPolicyInput(files []string, opts ...policy.Options) (*policy.Engine, error) {
	if len(files) == 0 {
		return nil, errors.New("no input: give -f FILE or -f DIR")
	}
	objs, err := filestore.LoadPaths(files...)
	if err != nil {
		return nil, err
	}
	var o policy.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	return k8s.CompileWith(objs, o)
}

// loadDockerPolicyInput is loadPolicyInput with the Docker engine's
// protected containers added as the pods the agent makes of them. A pod
// the files define under the same name stays as the files have it.
func loadDockerPolicyInput(ctx context.Context, files []string, dock dockerOptions, opts policy.Options) (*policy.Engine, error) {
	if len(files) == 0 {
		return nil, errors.New("no input: give -f DIR (the agent's --policy-dir)")
	}
	objs, err := filestore.LoadPaths(files...)
	if err != nil {
		return nil, err
	}
	pods, err := dockerPods(ctx, dock)
	if err != nil {
		return nil, err
	}
	for _, p := range pods {
		if objs.Pod(p.Namespace, p.Name) == nil {
			objs.Pods = append(objs.Pods, p)
		}
	}
	return k8s.CompileWith(objs, opts)
}

func newPolicyCheckCmd() *cobra.Command {
	var files []string
	cmd := &cobra.Command{
		Use:   "check -f FILE|DIR [-f ...]",
		Short: "Validate Namespace, Pod and NetworkPolicy files; exit non-zero on the first bad object",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := loadPolicyInput(files)
			if err != nil {
				return err
			}
			o := e.Objects()
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %d namespaces, %d pods, %d network policies, %d cluster network policies\n", len(o.Namespaces), len(o.Pods), len(o.Policies), len(o.ClusterPolicies))
			return nil
		},
	}
	cmd.Flags().StringSliceVarP(&files, "filename", "f", nil, "YAML/JSON file or directory (repeatable, comma-separated)")
	return cmd
}

func newPolicyExplainCmd() *cobra.Command {
	var (
		files            []string
		from, to, port   string
		protocol, output string
		cluster          string
		strict           bool
		dock             dockerOptions
	)
	cmd := &cobra.Command{
		Use:   "explain -f FILE|DIR --from NS/POD --to NS/POD --port P [--protocol TCP] [--output text|json]",
		Short: "Explain whether a connection is allowed: the client's egress, the server's ingress and the verdict",
		Long: `Explain decides a connection as the two enforcers would: the egress decision of
the client (--from) and the ingress decision of the server (--to); the connection
is allowed only if both allow. --from or --to may be an IP address instead of a
pod: such a peer has no identity and only ipBlock rules can match it (a pod's
status.podIP, if its object has one, is matched by ipBlock rules too, unless
--ipblock-identity-only). ClusterNetworkPolicy tiers are decided first and last;
a policy in audit mode (bireme.io/enforcement: audit) is shown both ways. --port is
a number or a port name resolved on the destination pod. The exit status is 0
whenever a verdict was printed, allowed or not.

Across clusters: --from or --to may be CLUSTER/NAMESPACE/POD, a workload of a
federated cluster whose Pod and Namespace objects are in the input (for example
exported from that cluster). Its identity gets the reserved namespace label
bireme.io/cluster=CLUSTER, and only a namespaceSelector that names that label
admits it; its own side is decided by its own cluster and is not shown.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: want text or json", output)
			}
			if from == "" || to == "" || port == "" {
				return errors.New("--from, --to and --port are required")
			}
			var e *policy.Engine
			var err error
			if dock.dockerHost == "" {
				e, err = loadPolicyInput(files, policy.Options{IPBlockIdentityOnly: strict})
			} else {
				e, err = loadDockerPolicyInput(cmd.Context(), files, dock, policy.Options{IPBlockIdentityOnly: strict})
			}
			if err != nil {
				return err
			}
			x, err := k8s.Explain(e, cluster, from, to, port, protocol)
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), x)
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), x.String())
			return err
		},
	}
	f := cmd.Flags()
	f.StringSliceVarP(&files, "filename", "f", nil, "YAML/JSON file or directory (repeatable, comma-separated)")
	f.StringVar(&from, "from", "", "client: NAMESPACE/POD, CLUSTER/NAMESPACE/POD of a federated cluster, or an IP address")
	f.StringVar(&to, "to", "", "server: NAMESPACE/POD, CLUSTER/NAMESPACE/POD of a federated cluster, or an IP address")
	f.StringVar(&port, "port", "", "destination port: number or name of a port of the destination pod")
	f.StringVar(&protocol, "protocol", "TCP", "TCP, UDP or SCTP")
	f.StringVarP(&output, "output", "o", "text", "text or json")
	f.StringVar(&cluster, "cluster", "local", "the local cluster (trust domain) of NAMESPACE/POD ends")
	f.BoolVar(&strict, "ipblock-identity-only", false, ipBlockIdentityOnlyHelp)
	f.StringVar(&dock.dockerHost, "docker-host", "", "also read the running containers of this Docker engine as pods, as 'bireme docker' does (with -f its --policy-dir)")
	f.StringVar(&dock.host, "host", defaultHostName(), "with --docker-host: the host's node name")
	f.BoolVar(&dock.all, "all", false, "with --docker-host: every container, as 'bireme docker --all'")
	return cmd
}
