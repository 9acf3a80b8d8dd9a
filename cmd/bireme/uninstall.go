package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bireme/bireme/k8s/dockersource"
	"github.com/bireme/bireme/k8s/filestore"
	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/supervisor"
)

// uninstallOptions are the flags of `bireme uninstall`.
type uninstallOptions struct {
	node, store string
	netns       []string
	dockerHost  string
}

// newUninstallCmd is the one way, besides a workload leaving the store,
// that Bireme's rules leave a workload namespace: stopping or restarting
// `bireme enforce` leaves them in place (fail closed).
func newUninstallCmd() *cobra.Command {
	var opts uninstallOptions
	cmd := &cobra.Command{
		Use:   "uninstall (--node NAME --store DIR | --netns NAME|PATH ... | --docker-host URL)",
		Short: "Remove Bireme's rules from this node's workload namespaces",
		Long: `uninstall removes every rule Bireme installed (the jumps to the BIREME-* chains
and the chains, IPv4 and IPv6) from the network namespace of every Pod in
--store whose spec.nodeName is --node and which carries the bireme.io/netns
annotation (the pods 'bireme enforce --node NAME --store DIR' protects), and
from each --netns given (a name under /run/netns or an absolute path), for
example a pod that left the store while no enforcer ran. Rules of other
software are not touched; a namespace that no longer exists is skipped.

Stopping 'bireme enforce' (SIGTERM, SIGINT, a crash) leaves the rules in place
so that its workloads stay protected: new connections wait until an enforcer
runs again. Stop the enforcer before uninstalling: it does not put back rules
removed while it runs, and from then on the workloads are not protected.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return errors.New("bireme uninstall needs root: it changes iptables rules in network namespaces")
			}
			return runUninstall(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.node, "node", "", "this node's name, matched against pods' spec.nodeName")
	f.StringVar(&opts.store, "store", "", "directory of Namespace, Pod and NetworkPolicy YAML/JSON (as for bireme enforce)")
	f.StringSliceVar(&opts.netns, "netns", nil, "also uninstall from these network namespaces (names under /run/netns or absolute paths)")
	f.StringVar(&opts.dockerHost, "docker-host", "", "also uninstall from every running container of this Docker engine (unix:///var/run/docker.sock), as protected by 'bireme docker'")
	return cmd
}

// runUninstall removes Bireme's rules from every namespace opts names and
// prints one line per namespace. Every namespace is tried; the errors are
// joined.
func runUninstall(ctx context.Context, opts uninstallOptions, out io.Writer) error {
	paths, err := opts.namespaces(ctx)
	if err != nil {
		return err
	}
	// Unprotect finds our rules by their chain names and jumps, which do
	// not depend on the queue layout the enforcer ran with.
	sup := supervisor.New(marks.Layout{})
	var errs []error
	for _, path := range paths {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(out, "%s: gone (its rules went with it)\n", path)
			continue
		}
		if err := sup.Unprotect(ctx, path); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(out, "%s: rules removed\n", path)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	return nil
}

// namespaces returns the paths of the namespaces to uninstall from,
// sorted and without duplicates: the store's pods of the node and the
// --netns given.
func (o uninstallOptions) namespaces(ctx context.Context) ([]string, error) {
	if (o.node == "") != (o.store == "") {
		return nil, errors.New("uninstall: give --node and --store together")
	}
	if o.store == "" && len(o.netns) == 0 && o.dockerHost == "" {
		return nil, errors.New("uninstall: nothing to uninstall from: give --node and --store, --netns, or --docker-host")
	}
	set := map[string]bool{}
	if o.dockerHost != "" {
		// Every running container but those sharing another namespace
		// (host, container:): whatever labels say now, any of them may
		// have been protected or fenced under other labels or --all.
		netnss, err := dockerNamespaces(ctx, o.dockerHost)
		if err != nil {
			return nil, fmt.Errorf("uninstall: %w", err)
		}
		for _, p := range netnss {
			set[p] = true
		}
	}
	if o.store != "" {
		objs, err := filestore.LoadDir(o.store)
		if err != nil {
			return nil, fmt.Errorf("uninstall: load store (give the namespaces with --netns instead): %w", err)
		}
		// The trust domain names identities, which uninstalling does not use.
		sel := filestore.SelectWorkloads(objs, "", o.node)
		for _, w := range sel.Workloads {
			set[w.NetNS] = true
		}
	}
	for _, n := range o.netns {
		path, err := filestore.NetNSPath(n)
		if err != nil {
			return nil, fmt.Errorf("uninstall: --netns %s: %w", n, err)
		}
		set[path] = true
	}
	paths := make([]string, 0, len(set))
	for p := range set {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	return paths, nil
}

// dockerNamespaces returns the network namespaces of the engine's running
// containers that have one of their own.
func dockerNamespaces(ctx context.Context, dockerHost string) ([]string, error) {
	engine, err := dockersource.NewClient(dockerHost)
	if err != nil {
		return nil, err
	}
	defer engine.Close()
	running, err := engine.Running(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, c := range running {
		if c.NetworkMode == "host" || strings.HasPrefix(c.NetworkMode, "container:") {
			continue
		}
		full, err := engine.Inspect(ctx, c.ID)
		if err != nil || full.NetNS() == "" {
			continue // stopped since the list: its namespace went with it
		}
		out = append(out, full.NetNS())
	}
	return out, nil
}
