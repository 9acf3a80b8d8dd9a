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

// caDir is the directory of the CA that issues node's credentials: the
// cluster CA, or the untrusted CA for an untrusted node.
func (l *Lab) caDir(node string) string {
	if l.untrusted(node) {
		return l.cfg.path("keys", "untrusted-ca")
	}
	return l.clusterCADir(l.clusterOf(node))
}

// keyDir holds node's credentials, node.crt and node.key.
func (l *Lab) keyDir(node string) string { return l.cfg.path("keys", "nodes", node) }

// issueNode gives node fresh credentials (as `bireme keys issue-node`)
// from its CA, replacing any it had.
func (l *Lab) issueNode(node string) error {
	caDir, keyDir := l.caDir(node), l.keyDir(node)
	ca, err := tokens.LoadCA(filepath.Join(caDir, "ca.crt"), filepath.Join(caDir, "ca.key"))
	if err != nil {
		return fmt.Errorf("node %s keys: %w", node, err)
	}
	creds, err := ca.IssueNode(node, nodeValidity)
	if err != nil {
		return fmt.Errorf("node %s keys: %w", node, err)
	}
	if err := os.MkdirAll(keyDir, 0o700); err != nil {
		return fmt.Errorf("node %s keys: %w", node, err)
	}
	if err := creds.Save(filepath.Join(keyDir, "node.crt"), filepath.Join(keyDir, "node.key")); err != nil {
		return fmt.Errorf("node %s keys: %w", node, err)
	}
	return nil
}

// RenewNodeCredentials issues node new credentials from its CA, as an
// operator rotating a node's key would. A running enforcer picks the new
// files up at its next poll, without a restart; connections made before
// the rotation stay up.
func (l *Lab) RenewNodeCredentials(node string) error {
	if l.st.Options.NoEnforce || l.topo.Node(node) == nil {
		return fmt.Errorf("renew credentials: no enforced node %q in the lab", node)
	}
	return l.issueNode(node)
}

func (l *Lab) untrusted(node string) bool {
	return slices.Contains(l.st.Options.UntrustedNodes, node)
}
