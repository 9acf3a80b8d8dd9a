package policy

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
)

// WatchDir polls dir every interval. When the store's content changes and
// the new set is valid, it compiles it and calls onChange with the objects
// and the new Engine (typically to [Live.Swap] it). On invalid input it logs
// the error (file, Kind namespace/name, field) to slog's default logger and
// keeps the previous set: onChange is not called. The first valid set found
// at start is reported too, so a caller may rely on WatchDir alone. A change
// is acted on once the store has not changed for one interval (so a change
// takes effect within two intervals); writers should still replace files
// atomically (write a ".name" temporary, then rename), which LoadDir's
// skipping of dot files makes safe.
// It returns nil when ctx ends; an error only for a bad interval.
func WatchDir(ctx context.Context, dir string, interval time.Duration, onChange func(Objects, *Engine)) error {
	return WatchDirLog(ctx, dir, interval, slog.Default(), onChange)
}

// WatchDirLog is [WatchDir] with an explicit logger.
func WatchDirLog(ctx context.Context, dir string, interval time.Duration, log *slog.Logger, onChange func(Objects, *Engine)) error {
	if interval <= 0 {
		return fmt.Errorf("watch %s: interval must be > 0, got %v", dir, interval)
	}
	w := &dirWatcher{dir: dir, log: log, onChange: onChange}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		w.poll()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// dirWatcher remembers what it last saw, to act only on changes.
type dirWatcher struct {
	dir      string
	log      *slog.Logger
	onChange func(Objects, *Engine)

	seen    string   // stat stamp (names, sizes, mtimes) at the previous poll
	done    string   // stat stamp of the set last loaded or rejected
	content [32]byte // hash of names and contents last loaded or rejected
	started bool
}

// poll does one cheap stat pass. A changed stamp is acted on only once it
// has stayed the same for one interval, so a file caught half-written (and
// perhaps still valid YAML, minus its last documents) is not put in force.
// Then contents are hashed, and only if they differ from what was last
// processed is the set loaded and compiled.
func (w *dirWatcher) poll() {
	stamp, files, err := w.stamp()
	prev := w.seen
	w.seen = stamp
	if w.started && (stamp == w.done || stamp != prev) {
		return
	}
	if err != nil {
		w.reject(stamp, [32]byte{}, err)
		return
	}
	sum, err := hashFiles(files)
	if err != nil {
		return // a file vanished mid-read; the next pass sees the new state
	}
	if w.started && sum == w.content {
		w.done = stamp
		return
	}
	objs, err := LoadFiles(files...)
	var eng *Engine
	if err == nil {
		eng, err = Compile(objs)
	}
	if err != nil {
		w.reject(stamp, sum, err)
		return
	}
	w.done, w.content, w.started = stamp, sum, true
	w.onChange(objs, eng)
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

// reject logs a bad store once and keeps the previous set.
func (w *dirWatcher) reject(stamp string, sum [32]byte, err error) {
	w.done, w.content, w.started = stamp, sum, true
	w.log.Error("policy store rejected; keeping the previous policy set", "dir", w.dir, "err", err)
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
