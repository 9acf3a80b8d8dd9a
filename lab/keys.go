package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/bireme/bireme/tokens"
)

// Key lifetimes in a lab: long enough for any session, short enough that
// stray lab keys are worthless soon.
const (
	caValidity   = 30 * 24 * time.Hour
	nodeValidity = 7 * 24 * time.Hour
)

// initKeys makes the cluster CA and the untrusted CA of forged nodes, in
// the layout of `bireme keys init-ca` (DIR/ca.crt, DIR/ca.key).
func (l *Lab) initKeys() error {
	for _, dir := range []string{"ca", "untrusted-ca"} {
		ca, err := tokens.NewCA(l.st.Options.Cluster, caValidity)
		if err != nil {
			return fmt.Errorf("lab keys: %w", err)
		}
		if err := os.MkdirAll(l.cfg.path("keys", dir), 0o700); err != nil {
			return fmt.Errorf("lab keys: %w", err)
		}
		if err := ca.Save(l.cfg.path("keys", dir, "ca.crt"), l.cfg.path("keys", dir, "ca.key")); err != nil {
			return fmt.Errorf("lab keys: %w", err)
		}
	}
	return nil
}

// issueNode gives node its credentials (as `bireme keys issue-node`) from
// the cluster CA, or from the untrusted CA for an untrusted node; it
// returns the directory of the issuing CA.
func (l *Lab) issueNode(node string) (caDir, keyDir string, err error) {
	caDir = l.cfg.path("keys", "ca")
	if l.untrusted(node) {
		caDir = l.cfg.path("keys", "untrusted-ca")
	}
	keyDir = l.cfg.path("keys", "nodes", node)
	ca, err := tokens.LoadCA(filepath.Join(caDir, "ca.crt"), filepath.Join(caDir, "ca.key"))
	if err != nil {
		return "", "", fmt.Errorf("node %s keys: %w", node, err)
	}
	creds, err := ca.IssueNode(node, nodeValidity)
	if err != nil {
		return "", "", fmt.Errorf("node %s keys: %w", node, err)
	}
	if err := os.MkdirAll(keyDir, 0o700); err != nil {
		return "", "", fmt.Errorf("node %s keys: %w", node, err)
	}
	if err := creds.Save(filepath.Join(keyDir, "node.crt"), filepath.Join(keyDir, "node.key")); err != nil {
		return "", "", fmt.Errorf("node %s keys: %w", node, err)
	}
	return caDir, keyDir, nil
}

func (l *Lab) untrusted(node string) bool {
	return slices.Contains(l.st.Options.UntrustedNodes, node)
}
