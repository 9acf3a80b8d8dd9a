package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/bireme/bireme/lab"
)

// newLabCmd is `bireme lab`: a cluster of workloads on this machine, built
// from Kubernetes YAML, with one enforcer per node. The logic is in package
// lab; this file only parses flags and prints.
func newLabCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Build a cluster of workloads on this machine from Kubernetes YAML and probe it",
		Long: `lab turns Namespace, Pod and NetworkPolicy objects into network namespaces on
this machine: each pod gets an address from 198.18.0.0/15 and a server on every
declared TCP container port; each spec.nodeName becomes a node with its own
"bireme enforce". Needs root.

  bireme lab run -f model.yaml              build, probe every pair, tear down
  bireme lab up -f model.yaml               build and leave running
  bireme lab apply -f policy.yaml           add or change objects (labels too)
  bireme lab delete -f policy.yaml          remove objects
  bireme lab probe                          reachability matrix
  bireme lab status                         pods, their netns names and addresses
  bireme lab down                           remove everything

Two clusters (federation, docs/federation.md):
  bireme lab up -f a.yaml --cluster a --member b=b.yaml [--nat]
  bireme lab trust a b                      a imports b's trust bundle (a admits b's workloads its policy names)
  bireme lab distrust a b                   a removes it: new and established connections from b cut`,
	}
	cmd.AddCommand(newLabRunCmd(), newLabUpCmd(), newLabApplyCmd(), newLabDeleteCmd(),
		newLabProbeCmd(), newLabStatusCmd(), newLabDownCmd(), newLabServeCmd(),
		newLabTrustCmd(true), newLabTrustCmd(false))
	return cmd
}

// labFlags are the flags several lab commands share.
type labFlags struct {
	files     []string
	state     string
	output    string
	nat       bool
	noEnforce bool
	untrusted []string
	verbose   bool
	cluster   string
	members   []string
	flowsMax  int64
}

func (f *labFlags) addState(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.state, "state", lab.DefaultStateDir, "directory holding the running lab")
}

func (f *labFlags) addFiles(cmd *cobra.Command) {
	cmd.Flags().StringSliceVarP(&f.files, "filename", "f", nil, "YAML or JSON file of Namespaces, Pods and NetworkPolicies (repeatable)")
	_ = cmd.MarkFlagRequired("filename")
}

func (f *labFlags) addBuild(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.nat, "nat", false, "masquerade traffic between nodes (servers see node addresses)")
	cmd.Flags().BoolVar(&f.noEnforce, "no-enforce", false, "run no enforcers: plain routing, every connection allowed")
	cmd.Flags().StringSliceVar(&f.untrusted, "untrusted-node", nil, "give this node keys from a CA the others do not trust (forged identities)")
	cmd.Flags().BoolVarP(&f.verbose, "verbose", "v", false, "print each build step")
	cmd.Flags().StringVar(&f.cluster, "cluster", lab.DefaultCluster, "trust domain of the cluster built from -f")
	cmd.Flags().Int64Var(&f.flowsMax, "flows-max-bytes", 0, "rotate each enforcer's flow file before it grows past this many bytes (the chain continues across the files; 'bireme flows verify' takes them all); 0: never")
	cmd.Flags().StringArrayVar(&f.members, "member", nil, "a further cluster NAME=FILE[,FILE...]: its own CA, trust domain NAME, store, nodes and pods; no cluster trusts another until 'bireme lab trust' (repeatable; docs/federation.md)")
}

func (f *labFlags) addOutput(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
}

func (f *labFlags) checkOutput() error {
	if f.output != "table" && f.output != "json" {
		return fmt.Errorf("--output %q: want table or json", f.output)
	}
	return nil
}

func (f *labFlags) config(cmd *cobra.Command) (lab.Config, error) {
	if os.Geteuid() != 0 {
		return lab.Config{}, fmt.Errorf("bireme lab %s needs root: it builds network namespaces", cmd.Name())
	}
	bin, err := os.Executable()
	if err != nil {
		return lab.Config{}, fmt.Errorf("find the bireme binary: %w", err)
	}
	cfg := lab.Config{StateDir: f.state, Binary: bin}
	if f.verbose {
		cfg.Log = cmd.ErrOrStderr()
	}
	return cfg, nil
}

func (f *labFlags) options() (lab.Options, error) {
	o := lab.Options{NAT: f.nat, NoEnforce: f.noEnforce, UntrustedNodes: f.untrusted, Cluster: f.cluster, FlowsMaxBytes: f.flowsMax}
	for _, m := range f.members {
		name, files, ok := strings.Cut(m, "=")
		if !ok || name == "" || files == "" {
			return o, fmt.Errorf("--member %q: want NAME=FILE[,FILE...]", m)
		}
		o.Members = append(o.Members, lab.Member{Cluster: name, Files: strings.Split(files, ",")})
	}
	return o, nil
}

func newLabRunCmd() *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   "run -f FILE... [--output table|json] [--nat]",
		Short: "Build a lab, probe every pair of pods, tear it down",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.checkOutput(); err != nil {
				return err
			}
			cfg, err := f.config(cmd)
			if err != nil {
				return err
			}
			opts, err := f.options()
			if err != nil {
				return err
			}
			pods, results, err := lab.Run(cmd.Context(), cfg, opts, f.files...)
			if err != nil {
				return err
			}
			return printResults(cmd.OutOrStdout(), f.output, pods, results)
		},
	}
	f.addFiles(cmd)
	f.addBuild(cmd)
	f.addOutput(cmd)
	return cmd
}

func newLabUpCmd() *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   "up -f FILE... [--state DIR] [--nat]",
		Short: "Build a lab and leave it running",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config(cmd)
			if err != nil {
				return err
			}
			opts, err := f.options()
			if err != nil {
				return err
			}
			l, err := lab.Up(cmd.Context(), cfg, opts, f.files...)
			if err != nil {
				return err
			}
			defer l.Close()
			st := l.Status()
			fmt.Fprintf(cmd.OutOrStdout(), "lab up in %s: %d nodes, %d pods (namespace prefix %s)\n", st.StateDir, len(st.Nodes), len(st.Pods), st.Prefix)
			return nil
		},
	}
	f.addFiles(cmd)
	f.addState(cmd)
	f.addBuild(cmd)
	return cmd
}

// withLab opens the running lab for one command.
func withLab(cmd *cobra.Command, f *labFlags, fn func(*lab.Lab) error) error {
	cfg, err := f.config(cmd)
	if err != nil {
		return err
	}
	l, err := lab.Open(cfg)
	if err != nil {
		return err
	}
	defer l.Close()
	return fn(l)
}

func newLabApplyCmd() *cobra.Command {
	return newLabFilesCmd("apply", "Add or change Namespaces, Pods and NetworkPolicies on the running lab", (*lab.Lab).Apply)
}

func newLabDeleteCmd() *cobra.Command {
	return newLabFilesCmd("delete", "Remove the objects named in FILE from the running lab", (*lab.Lab).Delete)
}

// newLabFilesCmd is a lab command that hands the objects in -f FILE... to
// change, a method of the running lab.
func newLabFilesCmd(name, short string, change func(*lab.Lab, context.Context, ...string) error) *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   name + " -f FILE... [--state DIR]",
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withLab(cmd, &f, func(l *lab.Lab) error { return change(l, cmd.Context(), f.files...) })
		},
	}
	f.addFiles(cmd)
	f.addState(cmd)
	return cmd
}

func newLabProbeCmd() *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   "probe [--output table|json] [--state DIR]",
		Short: "Try every (pod, pod, declared port) with a real TCP connection",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.checkOutput(); err != nil {
				return err
			}
			return withLab(cmd, &f, func(l *lab.Lab) error {
				results, err := l.Probe(cmd.Context())
				if err != nil {
					return err
				}
				return printResults(cmd.OutOrStdout(), f.output, l.Pods(), results)
			})
		},
	}
	f.addState(cmd)
	f.addOutput(cmd)
	return cmd
}

func printResults(w io.Writer, output string, pods []string, results []lab.Result) error {
	if output == "json" {
		if results == nil {
			results = []lab.Result{}
		}
		return writeJSON(w, results)
	}
	return lab.WriteTable(w, pods, results)
}

// writeJSON writes v to w as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newLabStatusCmd() *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   "status [--output table|json] [--state DIR]",
		Short: "List the lab's pods with their network namespace, address, node and labels",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.checkOutput(); err != nil {
				return err
			}
			return withLab(cmd, &f, func(l *lab.Lab) error {
				st := l.Status()
				if f.output == "json" {
					return writeJSON(cmd.OutOrStdout(), st)
				}
				return printStatus(cmd.OutOrStdout(), st)
			})
		},
	}
	f.addState(cmd)
	f.addOutput(cmd)
	return cmd
}

func printStatus(w io.Writer, st lab.Status) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "lab in %s, prefix %s, nat %v, enforced %v, router %s\n\n", st.StateDir, st.Prefix, st.NAT, st.Enforced, st.Router)
	fmt.Fprintln(tw, "NODE\tNETNS\tADDRESS\tENFORCER PID")
	for _, n := range st.Nodes {
		pid := "-"
		if n.EnforcerPID != 0 {
			pid = fmt.Sprint(n.EnforcerPID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Name, n.NetNS, n.Addr, pid)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "POD\tNETNS\tADDRESS\tNODE\tPORTS\tLABELS")
	for _, p := range st.Pods {
		var labels []string
		for k, v := range p.Labels {
			labels = append(labels, k+"="+v)
		}
		var ports []string
		for _, port := range p.Ports {
			ports = append(ports, fmt.Sprint(port))
		}
		sort.Strings(labels)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Pod, p.NetNS, p.Addr, p.Node, strings.Join(ports, ","), strings.Join(labels, ","))
	}
	return tw.Flush()
}

func newLabDownCmd() *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   "down [--state DIR]",
		Short: "Remove the lab: enforcers, namespaces, state (also after a crash)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config(cmd)
			if err != nil {
				return err
			}
			// Finish even when interrupted: half a teardown helps nobody.
			return lab.Down(context.WithoutCancel(cmd.Context()), cfg)
		},
	}
	f.addState(cmd)
	return cmd
}

// newLabServeCmd is the server the lab runs inside each pod's namespace.
func newLabServeCmd() *cobra.Command {
	var (
		ref   string
		ports []uint
	)
	cmd := &cobra.Command{
		Use:    "serve --ref NS/POD --port PORT...",
		Short:  "Answer every TCP connection on PORT with NS/POD (run by the lab inside a pod's namespace)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ps []uint16
			for _, p := range ports {
				if p == 0 || p > 65535 {
					return fmt.Errorf("--port %d: out of range", p)
				}
				ps = append(ps, uint16(p))
			}
			return lab.Serve(cmd.Context(), ref, ps, nil)
		},
	}
	cmd.Flags().StringVar(&ref, "ref", "", "namespace/pod to answer with")
	cmd.Flags().UintSliceVar(&ports, "port", nil, "TCP port to listen on (repeatable)")
	_ = cmd.MarkFlagRequired("ref")
	_ = cmd.MarkFlagRequired("port")
	return cmd
}

// newLabTrustCmd is `bireme lab trust` (or distrust): the bundle exchange
// between two clusters of a lab, as a step one can watch.
func newLabTrustCmd(trust bool) *cobra.Command {
	var f labFlags
	use, short := "trust TRUSTER TRUSTED", "Give cluster TRUSTER the trust bundle of cluster TRUSTED (one way)"
	if !trust {
		use, short = "distrust TRUSTER TRUSTED", "Remove TRUSTED's bundle from TRUSTER: new connections refused, established ones ended"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withLab(cmd, &f, func(l *lab.Lab) error {
				if !trust {
					if err := l.Distrust(cmd.Context(), args[0], args[1]); err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "cluster %s no longer trusts cluster %s\n", args[0], args[1])
					return nil
				}
				fps, err := l.Trust(cmd.Context(), args[0], args[1])
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "cluster %s trusts cluster %s (CA sha256 %s)\n", args[0], args[1], strings.Join(fps, ", "))
				return nil
			})
		},
	}
	f.addState(cmd)
	return cmd
}
