package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/bireme/bireme/tokens"
)

// File names inside the directories `bireme keys` writes.
const (
	caCertFile   = "ca.crt"
	caKeyFile    = "ca.key"
	nodeCertFile = "node.crt"
	nodeKeyFile  = "node.key"
)

// newKeysCmd is `bireme keys`: create and inspect the cluster CA and node
// credentials. The logic is in package tokens; this file parses flags and
// places files.
func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Create and inspect the cluster CA and node credentials",
		Long: `keys writes and reads the PEM files Bireme's identity tokens rest on. Every
file is written with mode 0600; existing keys are never overwritten without --force.

  bireme keys init-ca --trust-domain cluster.local --out ca/
  bireme keys issue-node --ca-dir ca/ --node node-1 --out node-1/
  bireme keys show node-1/node.crt
  bireme keys bundle export --ca-dir ca/ --out cluster.local.json   (federation: see 'bireme keys bundle')`,
	}
	cmd.AddCommand(newKeysInitCACmd(), newKeysIssueNodeCmd(), newKeysShowCmd(), newKeysBundleCmd())
	return cmd
}

func newKeysInitCACmd() *cobra.Command {
	var (
		domain, out string
		validity    time.Duration
		force       bool
	)
	cmd := &cobra.Command{
		Use:   "init-ca --trust-domain DOMAIN --out DIR",
		Short: "Create a cluster CA: DIR/ca.crt and DIR/ca.key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			certPath, keyPath := filepath.Join(out, caCertFile), filepath.Join(out, caKeyFile)
			if err := prepareOut(out, force, certPath, keyPath); err != nil {
				return err
			}
			ca, err := tokens.NewCA(domain, validity)
			if err != nil {
				return fmt.Errorf("init-ca: %w", err)
			}
			if err := ca.Save(certPath, keyPath); err != nil {
				return fmt.Errorf("init-ca: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CA for trust domain %s: %s, %s (valid until %s)\n",
				ca.TrustDomain, certPath, keyPath, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().StringVar(&domain, "trust-domain", "", "trust domain (cluster name) the CA vouches for, e.g. cluster.local")
	cmd.Flags().StringVar(&out, "out", "", "directory to write ca.crt and ca.key into (created 0700)")
	cmd.Flags().DurationVar(&validity, "validity", tokens.DefaultCAValidity, "how long the CA certificate is valid")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite an existing CA in --out")
	_ = cmd.MarkFlagRequired("trust-domain")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func newKeysIssueNodeCmd() *cobra.Command {
	var (
		caDir, node, out string
		validity         time.Duration
		force            bool
	)
	cmd := &cobra.Command{
		Use:   "issue-node --ca-dir DIR --node NAME --out DIR",
		Short: "Issue a node key and certificate: DIR/node.crt, DIR/node.key and a copy of ca.crt",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := tokens.LoadCA(filepath.Join(caDir, caCertFile), filepath.Join(caDir, caKeyFile))
			if err != nil {
				return fmt.Errorf("issue-node: %w", err)
			}
			certPath, keyPath := filepath.Join(out, nodeCertFile), filepath.Join(out, nodeKeyFile)
			if err := prepareOut(out, force, certPath, keyPath); err != nil {
				return err
			}
			creds, err := ca.IssueNode(node, validity)
			if err != nil {
				return fmt.Errorf("issue-node: %w", err)
			}
			if err := creds.Save(certPath, keyPath); err != nil {
				return fmt.Errorf("issue-node: %w", err)
			}
			caCopy := filepath.Join(out, caCertFile)
			if filepath.Clean(out) != filepath.Clean(caDir) {
				if err := copyCACert(ca, caCopy); err != nil {
					return fmt.Errorf("issue-node: %w", err)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s of trust domain %s: %s, %s, %s (valid until %s)\n",
				creds.Node, creds.TrustDomain, certPath, keyPath, caCopy, creds.Cert.NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().StringVar(&caDir, "ca-dir", "", "directory holding ca.crt and ca.key (from init-ca)")
	cmd.Flags().StringVar(&node, "node", "", "node name (letters, digits, '.', '-', '_')")
	cmd.Flags().StringVar(&out, "out", "", "directory to write node.crt, node.key and ca.crt into (created 0700)")
	cmd.Flags().DurationVar(&validity, "validity", tokens.DefaultNodeValidity, "how long the node certificate is valid (never beyond the CA)")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite an existing node key in --out")
	for _, f := range []string{"ca-dir", "node", "out"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}

func newKeysShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show FILE...",
		Short: "Summarize certificates and keys (never prints private key material)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			for i, f := range files {
				data, err := os.ReadFile(f)
				if err != nil {
					return fmt.Errorf("show: %w", err)
				}
				text, err := tokens.DescribePEM(data, time.Now())
				if err != nil {
					return fmt.Errorf("show %s: %w", f, err)
				}
				if i > 0 {
					fmt.Fprintln(cmd.OutOrStdout())
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s", f, text)
			}
			return nil
		},
	}
}

// prepareOut creates dir (0700) and refuses to replace existing files
// unless force is set: a lost CA or node key cannot be recovered.
func prepareOut(dir string, force bool, files ...string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if force {
		return nil
	}
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			return fmt.Errorf("%s exists (use --force to replace it)", f)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("check %s: %w", f, err)
		}
	}
	return nil
}

// copyCACert writes the CA certificate (no key) next to the node's files,
// so one directory holds everything `bireme enforce` needs.
func copyCACert(ca *tokens.CA, path string) error {
	return tokens.SaveCertificate(ca.Cert, path)
}
