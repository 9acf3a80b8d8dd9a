package agent

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/bireme/bireme/tokens"
)

// NodeKeys names this node's credentials on disk, issued by the cluster CA.
// The agent reloads them when they change, so that a renewed certificate is
// picked up without a restart.
type NodeKeys struct {
	CertFile, KeyFile string
}

// keyReloader rotates the token engine's node credentials when the files
// change, logging a pair that does not load once per distinct error, not
// at every poll.
type keyReloader struct {
	files   *keyWatcher
	tokens  *tokens.Engine
	log     *slog.Logger
	lastErr string
}

func newKeyReloader(keys NodeKeys, engine *tokens.Engine, log *slog.Logger) *keyReloader {
	return &keyReloader{files: newKeyWatcher(keys.CertFile, keys.KeyFile), tokens: engine, log: log}
}

// reload checks the files once and rotates the credentials if they changed.
func (k *keyReloader) reload() {
	creds, changed, err := k.files.check()
	switch {
	case err != nil:
		if msg := err.Error(); msg != k.lastErr {
			k.lastErr = msg
			k.log.Error("reload node credentials; keeping the current ones", "err", err)
		}
	case changed:
		k.lastErr = ""
		if err := k.tokens.Rotate(creds); err != nil {
			k.log.Error("rotate node credentials; keeping the current ones", "err", err)
		} else {
			k.log.Info("node credentials rotated", "cert", k.files.certFile)
		}
	}
}

// keyWatcher notices when the node's certificate or key file changes on
// disk, so that a renewed certificate is picked up without a restart.
type keyWatcher struct {
	certFile, keyFile string
	last              [2]fileStamp
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func newKeyWatcher(certFile, keyFile string) *keyWatcher {
	w := &keyWatcher{certFile: certFile, keyFile: keyFile}
	w.last, _ = w.stamps()
	return w
}

func (w *keyWatcher) stamps() ([2]fileStamp, error) {
	var s [2]fileStamp
	for i, f := range []string{w.certFile, w.keyFile} {
		st, err := os.Stat(f)
		if err != nil {
			return s, fmt.Errorf("stat %s: %w", f, err)
		}
		s[i] = fileStamp{st.ModTime(), st.Size()}
	}
	return s, nil
}

// check returns the credentials when either file changed since the last
// successful load; a pair that does not load (for example the certificate
// written and the key not yet) is an error and is tried again next time.
func (w *keyWatcher) check() (*tokens.NodeCredentials, bool, error) {
	now, err := w.stamps()
	if err != nil {
		return nil, false, err
	}
	if now == w.last {
		return nil, false, nil
	}
	creds, err := tokens.LoadNodeCredentials(w.certFile, w.keyFile)
	if err != nil {
		return nil, false, err
	}
	w.last = now
	return creds, true, nil
}
