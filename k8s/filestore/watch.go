package filestore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/policy"
)

// watchDir polls dir every interval. When the store's content changes and the
// new set is valid, it compiles it and calls onChange with the objects and
// the new Engine. On invalid input it logs the error (file, Kind
// namespace/name, field) to log once and keeps the previous set: onChange
// is not called. The first valid set found at start is reported too, so a
// caller may rely on watchDir alone. A change is acted on once the store has
// not changed for one interval (so a change takes effect within two
// intervals); writers should still replace files atomically (write a
// ".name" temporary, then rename), which LoadDir's skipping of dot files
// makes safe.
// It returns nil when ctx ends; an error only for a bad interval.
func watchDir(ctx context.Context, dir string, interval time.Duration, log *slog.Logger, onChange func(policy.Objects, *policy.Engine)) error {
	if interval <= 0 {
		return fmt.Errorf("watch %s: interval must be > 0, got %v", dir, interval)
	}
	return (&dirWatcher{dir: dir}).watch(ctx, interval, log, onChange)
}

// dirWatcher remembers what it last saw, to act only on changes.
type dirWatcher struct {
	dir  string
	opts policy.Options // how the engine is compiled

	seen    string   // stat stamp (names, sizes, mtimes) at the previous poll
	done    string   // stat stamp of the set last loaded or rejected
	content [32]byte // hash of names and contents last loaded or rejected
	started bool
}

// watch polls until ctx ends; see [watchDir].
func (w *dirWatcher) watch(ctx context.Context, interval time.Duration, log *slog.Logger, onChange func(policy.Objects, *policy.Engine)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		objs, eng, changed, err := w.check()
		switch {
		case err != nil:
			log.Error("policy store rejected; keeping the previous policy set", "dir", w.dir, "err", err)
		case changed:
			onChange(objs, eng)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// check does one cheap stat pass. A changed stamp is acted on only once it
// has stayed the same for one interval, so a file caught half-written (and
// perhaps still valid YAML, minus its last documents) is not put in force.
// Then contents are hashed, and only if they differ from what was last
// processed is the set loaded and compiled. It reports a new valid set
// (changed) or the error of a new invalid one, each once; the first check
// always loads.
func (w *dirWatcher) check() (objs policy.Objects, eng *policy.Engine, changed bool, err error) {
	stamp, files, err := w.stamp()
	prev := w.seen
	w.seen = stamp
	if w.started && (stamp == w.done || stamp != prev) {
		return policy.Objects{}, nil, false, nil
	}
	if err != nil {
		w.done, w.content, w.started = stamp, [32]byte{}, true
		return policy.Objects{}, nil, false, err
	}
	sum, err := hashFiles(files)
	if err != nil {
		return policy.Objects{}, nil, false, nil // a file vanished mid-read; the next pass sees the new state
	}
	if w.started && sum == w.content {
		w.done = stamp
		return policy.Objects{}, nil, false, nil
	}
	w.done, w.content, w.started = stamp, sum, true
	objs, err = LoadFiles(files...)
	if err == nil {
		eng, err = k8s.CompileWith(objs, w.opts)
	}
	if err != nil {
		return policy.Objects{}, nil, false, err
	}
	return objs, eng, true, nil
}

// stamp lists the store and returns its stat stamp.
func (w *dirWatcher) stamp() (string, []string, error) {
	files, err := storeFiles(w.dir)
	if err != nil {
		return "error: " + err.Error(), nil, err
	}
	var b strings.Builder
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return "error: " + err.Error(), nil, err
		}
		fmt.Fprintf(&b, "%s\x00%d\x00%d\x00", f, st.Size(), st.ModTime().UnixNano())
	}
	return b.String(), files, nil
}

// hashFiles hashes the names and contents of files.
func hashFiles(files []string) ([32]byte, error) {
	h := sha256.New()
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return [32]byte{}, err
		}
		io.WriteString(h, f)
		h.Write([]byte{0})
		_, err = io.Copy(h, fh)
		fh.Close()
		if err != nil {
			return [32]byte{}, errors.Join(fmt.Errorf("read %s", f), err)
		}
		h.Write([]byte{0})
	}
	var s [32]byte
	h.Sum(s[:0])
	return s, nil
}
