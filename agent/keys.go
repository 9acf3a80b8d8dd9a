package agent

import (
	"fmt"
	"os"
	"time"

	"github.com/bireme/bireme/tokens"
)

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
