package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bireme/bireme/tokens"
)

// bundleFile is the name of trust domain td's bundle in a bundle
// directory (--trust-bundles): the file name states the trust domain,
// which SPIFFE bundle JSON itself does not.
func bundleFile(dir, td string) string { return filepath.Join(dir, td+".json") }

// newKeysBundleCmd is `bireme keys bundle`: the trust bundles clusters
// exchange to federate (tokens/bundle.go has the format).
func newKeysBundleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Export, verify and import trust bundles (SPIFFE bundle JSON) to federate clusters",
		Long: `bundle exchanges the CA certificates of a trust domain with other clusters, in the
SPIFFE bundle format (a JSON Web Key Set of x509-svid keys, each holding one CA
certificate, with spiffe_sequence and spiffe_refresh_hint). A bundle holds no
secret. Each cluster keeps the bundles it trusts in a directory, one file per
foreign trust domain named TRUST-DOMAIN.json, given to 'bireme enforce' and
'bireme agent' with --trust-bundles; they re-read it on change, and removing a
file stops trusting that domain at once. docs/federation.md explains the model.

  cluster b:  bireme keys bundle export --ca-dir ca/ --out b.json
  cluster a:  bireme keys bundle verify --trust-domain b b.json      (compare the fingerprints with b's operator)
              bireme keys bundle import --trust-domain b --in b.json --dir /etc/bireme/bundles --cluster a
  revoke:     bireme keys bundle remove --trust-domain b --dir /etc/bireme/bundles`,
	}
	cmd.AddCommand(newBundleExportCmd(), newBundleVerifyCmd(), newBundleImportCmd(), newBundleRemoveCmd())
	return cmd
}

func newBundleExportCmd() *cobra.Command {
	var (
		caDir, out string
		caFiles    []string
		hint       time.Duration
		sequence   uint64
	)
	cmd := &cobra.Command{
		Use:   "export (--ca-dir DIR | --ca FILE[,FILE...]) --out FILE|-",
		Short: "Write this cluster's trust bundle: its CA certificate(s), never a key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (caDir == "") == (len(caFiles) == 0) {
				return errors.New("export: give either --ca-dir or --ca")
			}
			if caDir != "" {
				caFiles = []string{filepath.Join(caDir, caCertFile)}
			}
			trust, err := tokens.LoadTrustBundle(caFiles...)
			if err != nil {
				return fmt.Errorf("export: %w", err)
			}
			domains := trust.TrustDomains()
			if len(domains) != 1 {
				return fmt.Errorf("export: the CA certificates name trust domains %s: a bundle is of one trust domain", strings.Join(domains, ", "))
			}
			b, err := tokens.NewBundle(domains[0], trust.CAs(domains[0]), sequence, hint)
			if err != nil {
				return fmt.Errorf("export: %w", err)
			}
			if out == "-" {
				data, err := b.MarshalSPIFFE()
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(data)
				return err
			}
			if err := b.SaveSPIFFE(out); err != nil {
				return fmt.Errorf("export: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "bundle of trust domain %s (%d CA): %s\n", b.TrustDomain, len(b.CAs), out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&caDir, "ca-dir", "", "directory holding this cluster's ca.crt (from init-ca)")
	f.StringSliceVar(&caFiles, "ca", nil, "PEM file(s) of this cluster's CA certificates (several during a CA rotation)")
	f.StringVar(&out, "out", "", "file to write; - for stdout")
	f.DurationVar(&hint, "refresh-hint", 5*time.Minute, "spiffe_refresh_hint: how often consumers should fetch the bundle again")
	f.Uint64Var(&sequence, "sequence", 0, "spiffe_sequence (0: not stated); raise it with every change")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// readBundle reads and checks file as the bundle of td.
func readBundle(file, td string) (*tokens.Bundle, error) {
	return tokens.LoadSPIFFEBundle(file, td)
}

func newBundleVerifyCmd() *cobra.Command {
	var td string
	cmd := &cobra.Command{
		Use:   "verify --trust-domain DOMAIN FILE",
		Short: "Check that FILE is a valid bundle of DOMAIN and show its CAs and fingerprints",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := readBundle(args[0], td)
			if err != nil {
				return fmt.Errorf("verify: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s", args[0], b.Describe(time.Now()))
			return nil
		},
	}
	cmd.Flags().StringVar(&td, "trust-domain", "", "the trust domain the bundle must be of (required)")
	_ = cmd.MarkFlagRequired("trust-domain")
	return cmd
}

func newBundleImportCmd() *cobra.Command {
	var (
		td, in, dir, local string
		force              bool
	)
	cmd := &cobra.Command{
		Use:   "import --trust-domain DOMAIN --in FILE --dir DIR [--cluster LOCAL]",
		Short: "Verify a foreign cluster's bundle and install it as DIR/DOMAIN.json",
		Long: `import checks FILE as the bundle of DOMAIN (every CA names spiffe://DOMAIN) and
writes it to DIR/DOMAIN.json in one rename, so enforcers watching DIR never read
half a file. It refuses the local trust domain (--cluster): the local CAs come
from --ca-bundle, and a foreign bundle must never add CAs for this cluster's
own workloads. An existing bundle of DOMAIN is replaced only with --force.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if local != "" && td == local {
				return fmt.Errorf("import: %q is this cluster's own trust domain: its CAs come from --ca-bundle, never from a foreign bundle", td)
			}
			b, err := readBundle(in, td)
			if err != nil {
				return fmt.Errorf("import: %w", err)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("import: %w", err)
			}
			dest := bundleFile(dir, td)
			if _, err := os.Stat(dest); err == nil && !force {
				return fmt.Errorf("import: %s exists (use --force to replace it)", dest)
			} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("import: %w", err)
			}
			if err := b.SaveSPIFFE(dest); err != nil {
				return fmt.Errorf("import: %w", err)
			}
			// Readable by the agent whatever user it runs as: no secret.
			if err := os.Chmod(dest, 0o644); err != nil {
				return fmt.Errorf("import: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "trusting trust domain %s (%d CA: %s): %s\n", td, len(b.CAs), fingerprints(b.CAs), dest)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&td, "trust-domain", "", "the foreign trust domain the bundle is of (required)")
	f.StringVar(&in, "in", "", "the bundle file received from that cluster (required)")
	f.StringVar(&dir, "dir", "", "the bundle directory the enforcers watch (--trust-bundles) (required)")
	f.StringVar(&local, "cluster", "", "this cluster's own trust domain, refused as a foreign one")
	f.BoolVar(&force, "force", false, "replace an existing bundle of the domain")
	for _, n := range []string{"trust-domain", "in", "dir"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

func newBundleRemoveCmd() *cobra.Command {
	var td, dir string
	cmd := &cobra.Command{
		Use:   "remove --trust-domain DOMAIN --dir DIR",
		Short: "Stop trusting a foreign trust domain: remove DIR/DOMAIN.json",
		Long: `remove deletes the bundle of DOMAIN from the bundle directory. Enforcers watching it
refuse new connections from DOMAIN's workloads at their next poll (reason
unknown-ca); those started with --end-revoked also end the established ones.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dest := bundleFile(dir, td)
			if err := os.Remove(dest); err != nil {
				return fmt.Errorf("remove: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "no longer trusting trust domain %s: removed %s\n", td, dest)
			return nil
		},
	}
	cmd.Flags().StringVar(&td, "trust-domain", "", "the foreign trust domain (required)")
	cmd.Flags().StringVar(&dir, "dir", "", "the bundle directory (required)")
	_ = cmd.MarkFlagRequired("trust-domain")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

// fingerprints lists the SHA-256 fingerprints of certificates, short.
func fingerprints(cas []*x509.Certificate) string {
	var out []string
	for _, c := range cas {
		out = append(out, tokens.Fingerprint(c))
	}
	return strings.Join(out, ", ")
}
