package agent

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bireme/bireme/tokens"
)

// TrustFiles names what a node trusts on disk: the local cluster's CA
// certificates and a directory of foreign trust bundles, one SPIFFE bundle
// per federated trust domain, named TRUST-DOMAIN.json (a Kubernetes
// ConfigMap mounted as a directory has this shape: its keys are the
// files). The agent reads them again when they change: a new bundle is
// trusted at the next poll, a removed one is distrusted at the next poll.
type TrustFiles struct {
	// CAFiles are PEM files of the local cluster's CAs (--ca-bundle).
	CAFiles []string
	// BundleDir is the directory of foreign bundles ("" for none).
	BundleDir string
	// LocalDomain is this node's trust domain: a bundle file for it is
	// refused, so that a foreign bundle never adds CAs for local workloads.
	LocalDomain string
	// OnRevoke, if set, is called with each trust domain whose bundle left
	// the directory, once the trust without it is in force (the datapath
	// then ends that domain's established connections).
	OnRevoke func(trustDomain string)
}

// trustSnapshot is the bytes of every trust file, to notice changes by
// content: a ConfigMap update swaps a symbolic link, and a file rewritten
// within one mtime tick keeps its stamp.
type trustSnapshot struct {
	cas     [][]byte
	bundles map[string][]byte // by trust domain
}

func (s trustSnapshot) equal(o trustSnapshot) bool {
	return slices.EqualFunc(s.cas, o.cas, bytes.Equal) && maps.EqualFunc(s.bundles, o.bundles, bytes.Equal)
}

// TrustReloader keeps the token engine's trust in step with TrustFiles.
// A bad file is logged and that part of the last good trust kept: a local
// CA file that does not load keeps the local CAs, a bundle that does not
// verify keeps that domain's last good bundle (or none, for a new one),
// while the other domains' changes (a removal above all) still apply.
type TrustReloader struct {
	files  TrustFiles
	engine *tokens.Engine
	log    *slog.Logger

	last    trustSnapshot
	local   *tokens.TrustBundle
	bundles map[string]*tokens.Bundle // in force, by trust domain
	errs    map[string]string         // last error logged per file
}

// LoadTrust reads the trust files once and returns the trust they give,
// failing on any bad file: at start, a node refuses to run on a trust it
// cannot read entirely. The returned reloader keeps it up to date (after
// it is given the engine built with that trust, see Attach).
func LoadTrust(files TrustFiles, log *slog.Logger) (*TrustReloader, *tokens.TrustBundle, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &TrustReloader{files: files, log: log, bundles: map[string]*tokens.Bundle{}, errs: map[string]string{}}
	snap, err := r.read()
	if err != nil {
		return nil, nil, err
	}
	local, err := tokens.LoadTrustBundle(files.CAFiles...)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA bundle: %w", err)
	}
	r.local = local
	for _, td := range slices.Sorted(maps.Keys(snap.bundles)) {
		b, err := r.parseBundle(td, snap.bundles[td])
		if err != nil {
			return nil, nil, err
		}
		r.bundles[td] = b
	}
	trust, err := r.trust()
	if err != nil {
		return nil, nil, err
	}
	r.last = snap
	return r, trust, nil
}

// Attach gives the reloader the engine whose trust it keeps.
func (r *TrustReloader) Attach(engine *tokens.Engine) { r.engine = engine }

// OnRevoke sets the function called with each trust domain whose bundle
// left the directory (TrustFiles.OnRevoke), before the agent runs.
func (r *TrustReloader) OnRevoke(fn func(trustDomain string)) { r.files.OnRevoke = fn }

// Domains lists the foreign trust domains in force, sorted.
func (r *TrustReloader) Domains() []string { return slices.Sorted(maps.Keys(r.bundles)) }

// read reads every trust file's bytes.
func (r *TrustReloader) read() (trustSnapshot, error) {
	s := trustSnapshot{bundles: map[string][]byte{}}
	for _, f := range r.files.CAFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			return s, fmt.Errorf("read CA bundle: %w", err)
		}
		s.cas = append(s.cas, data)
	}
	if r.files.BundleDir == "" {
		return s, nil
	}
	entries, err := os.ReadDir(r.files.BundleDir)
	if err != nil {
		return s, fmt.Errorf("read trust bundle directory: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		// ConfigMap volumes hold ..data and ..TIMESTAMP entries beside
		// the keys; editors leave dotted temporary files.
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(r.files.BundleDir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue // removed while listing: it is gone
		}
		if err != nil {
			return s, fmt.Errorf("read trust bundle: %w", err)
		}
		s.bundles[strings.TrimSuffix(name, ".json")] = data
	}
	return s, nil
}

// parseBundle checks a bundle file's bytes as the bundle of td.
func (r *TrustReloader) parseBundle(td string, data []byte) (*tokens.Bundle, error) {
	file := filepath.Join(r.files.BundleDir, td+".json")
	if td == r.files.LocalDomain {
		return nil, fmt.Errorf("trust bundle %s: %q is this cluster's own trust domain: its CAs come from the CA bundle, never from a foreign bundle", file, td)
	}
	return tokens.ParseSPIFFEBundle(file, data, td)
}

// trust builds the trust in force from the local CAs and the bundles.
func (r *TrustReloader) trust() (*tokens.TrustBundle, error) {
	var foreign []*tokens.Bundle
	for _, td := range slices.Sorted(maps.Keys(r.bundles)) {
		foreign = append(foreign, r.bundles[td])
	}
	t, err := r.local.WithBundles(foreign...)
	if err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	return t, nil
}

// logOnce logs err for key unless it was the last one logged for it.
func (r *TrustReloader) logOnce(key string, err error) {
	if err == nil {
		delete(r.errs, key)
		return
	}
	if msg := err.Error(); msg != r.errs[key] {
		r.errs[key] = msg
		r.log.Error("trust file refused; keeping the last good one", "file", key, "err", err)
	}
}

// Reload reads the trust files and, if they changed, puts the new trust in
// force and reports each domain that left. It returns the domains revoked.
func (r *TrustReloader) Reload() []string {
	snap, err := r.read()
	if err != nil {
		r.logOnce("read", err)
		return nil
	}
	r.logOnce("read", nil)
	if snap.equal(r.last) {
		return nil
	}
	if !slices.EqualFunc(snap.cas, r.last.cas, bytes.Equal) {
		local, err := tokens.LoadTrustBundle(r.files.CAFiles...)
		r.logOnce(strings.Join(r.files.CAFiles, ","), err)
		if err == nil {
			r.local = local
		}
	}
	var revoked []string
	for td := range r.bundles {
		if _, ok := snap.bundles[td]; !ok {
			delete(r.bundles, td)
			revoked = append(revoked, td)
		}
	}
	for td, data := range snap.bundles {
		if old, ok := r.last.bundles[td]; ok && bytes.Equal(old, data) {
			continue
		}
		b, err := r.parseBundle(td, data)
		r.logOnce(td, err)
		if err == nil {
			r.bundles[td] = b
		}
	}
	slices.Sort(revoked)
	trust, err := r.trust()
	if err != nil {
		r.logOnce("trust", err)
		return nil
	}
	r.logOnce("trust", nil)
	if r.engine != nil {
		if err := r.engine.SetTrust(trust); err != nil {
			r.logOnce("trust", err)
			return nil
		}
	}
	r.last = snap
	r.log.Info("trust changed", "trust_domains", strings.Join(trust.TrustDomains(), ","), "revoked", strings.Join(revoked, ","))
	if r.files.OnRevoke != nil {
		for _, td := range revoked {
			r.files.OnRevoke(td)
		}
	}
	return revoked
}
