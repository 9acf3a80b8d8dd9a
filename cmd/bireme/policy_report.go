package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/policy/report"
)

// newPolicyReportCmd is `bireme policy report`: the compliance report of
// package policy/report over a store, with refusals from flow records.
func newPolicyReportCmd() *cobra.Command {
	var (
		files, regimes, flows []string
		output, cluster       string
	)
	cmd := &cobra.Command{
		Use:   "report -f FILE|DIR [-f ...] [--regime KEY=VALUE ...] [--flows FILE ...] [--output table|json|markdown]",
		Short: "Report which workloads policy isolates, whom it admits, regime coverage and refusals per policy",
		Long: `Report lists every pod of the store: whether a policy isolates it for
ingress and for egress (workloads isolated in neither direction first), the
policies that select it and, rule by rule, which peers (namespace, labels,
service account) may connect on which ports. --regime KEY=VALUE (repeatable)
checks that every workload whose pod or namespace carries that label is
isolated in both directions. --flows (repeatable) reads the enforcers' flow
records and counts the refused connections against each policy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			write, ok := map[string]func(*report.Report) error{
				"table":    func(r *report.Report) error { return report.WriteTable(cmd.OutOrStdout(), r) },
				"markdown": func(r *report.Report) error { return report.WriteMarkdown(cmd.OutOrStdout(), r) },
				"json":     func(r *report.Report) error { return writeJSON(cmd.OutOrStdout(), r) },
			}[output]
			if !ok {
				return fmt.Errorf("--output %q: want table, json or markdown", output)
			}
			in := report.Input{}
			for _, s := range regimes {
				reg, err := report.ParseRegime(s)
				if err != nil {
					return err
				}
				in.Regimes = append(in.Regimes, reg)
			}
			e, err := loadPolicyInput(files)
			if err != nil {
				return err
			}
			in.Engine = e
			in.IgnoredLabels = map[string][]string{}
			objs := e.Objects()
			for _, p := range objs.Pods {
				id := k8s.IdentityOf(cluster, objs.Namespace(p.Namespace), p)
				in.Workloads = append(in.Workloads, id)
				if ignored := k8s.IgnoredReservedLabels(p); len(ignored) > 0 {
					in.IgnoredLabels[id.Ref()] = ignored
				}
			}
			if flows != nil {
				if in.Flows, err = readFlowRecords(flows); err != nil {
					return err
				}
			}
			return write(report.Build(in))
		},
	}
	f := cmd.Flags()
	f.StringSliceVarP(&files, "filename", "f", nil, "YAML/JSON file or directory (repeatable, comma-separated)")
	f.StringArrayVar(&regimes, "regime", nil, "label marking a regime's workloads, KEY=VALUE (repeatable), e.g. pci=true or "+identity.LabelServiceAccount+"=payments")
	f.StringSliceVar(&flows, "flows", nil, "flow record file (JSON lines) of an enforcer (repeatable, comma-separated)")
	f.StringVarP(&output, "output", "o", "table", "table, json or markdown")
	f.StringVar(&cluster, "cluster", "local", "cluster name given to the pods' identities")
	return cmd
}

// readFlowRecords reads every record of the files, in order; an empty
// file contributes none.
func readFlowRecords(files []string) ([]flowlog.Record, error) {
	all := []flowlog.Record{}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		recs, err := flowlog.Read(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		all = append(all, recs...)
	}
	return all, nil
}
