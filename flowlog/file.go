package flowlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"
)

// FileConfig configures a flow file written by OpenFile.
type FileConfig struct {
	// Path is the live file; rotated files are Path.1 (the newest) to
	// Path.Keep, and the head is Path.head.
	Path string
	// MaxBytes rotates the file before a record would take it past this
	// size; 0 never rotates.
	MaxBytes int64
	// Keep is how many rotated files are kept (at least 1 when rotating).
	Keep int
	// Key signs the head (HMAC-SHA256); nil writes no head, and then a cut
	// tail cannot be detected. It is never written anywhere else.
	Key []byte
	// Now is the clock of the head's time (default time.Now).
	Now func() time.Time
	// Log receives the warning of a file that does not match its head
	// when opened (nil: discarded).
	Log *slog.Logger
}

// HeadPath is the head file of the flow file path.
func HeadPath(path string) string { return path + ".head" }

// RotatedPath is the n-th rotated file of path (1 is the newest).
func RotatedPath(path string, n int) string { return path + "." + strconv.Itoa(n) }

// fileSink is the file behind a Writer from OpenFile: its size for
// rotation, and the head.
type fileSink struct {
	cfg      FileConfig
	f        *os.File
	size     int64
	firstSeq uint64 // of the live file's first record; 0 while it has none
}

// OpenFile opens (appending) or creates the flow file cfg.Path and
// returns a Writer that continues the chain of the records already there,
// or of the newest rotated file when the live one is empty, so that a
// restarted enforcer and a rotation keep one chain. A last line cut short
// by a crash is ended with a newline and left as it is: verification
// reports it, and the chain continues from the last whole record.
func OpenFile(cfg FileConfig) (*Writer, io.Closer, error) {
	if cfg.MaxBytes < 0 || cfg.Keep < 0 {
		// Either would silently never rotate or keep nothing.
		return nil, nil, fmt.Errorf("flows file %s: max bytes %d and keep %d: want 0 or more", cfg.Path, cfg.MaxBytes, cfg.Keep)
	}
	if cfg.Keep < 1 {
		cfg.Keep = 1
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Key != nil {
		// Before anything is appended: the next head would vouch for
		// whatever the files hold now.
		if err := keepMismatchedHead(cfg); err != nil {
			return nil, nil, err
		}
	}
	f, err := os.OpenFile(cfg.Path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("open flows file: %w", err)
	}
	s := &fileSink{cfg: cfg, f: f}
	w := NewWriter(f)
	w.file = s
	if err := s.resume(w); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("flows file %s: %w", cfg.Path, err)
	}
	return w, closerFunc(func() error { return w.close() }), nil
}

type closerFunc func() error

func (c closerFunc) Close() error { return c() }

// close flushes and closes the live file.
func (w *Writer) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	ferr := w.w.Flush()
	return errors.Join(ferr, w.file.f.Close())
}

// keepMismatchedHead checks the files a writer is about to continue
// against their head. A head that does not verify, or that the files no
// longer match (records cut, changed or removed while no writer ran), is
// kept aside as Path.head.mismatch-UNIXNANO, with an error logged, before
// the writer's first batch replaces the head: the new head then vouches
// only for what it writes, and the old one still shows what was lost
// (`bireme flows verify --head` with it).
func keepMismatchedHead(cfg FileConfig) error {
	headPath := HeadPath(cfg.Path)
	head, err := ReadHead(headPath)
	if err == nil && head == nil {
		// Nothing to check against. Records without a head: the first
		// start with a key, or the head was removed with whatever else.
		if fi, err := os.Stat(cfg.Path); err == nil && fi.Size() > 0 {
			cfg.Log.Warn("flow records without a head: the first start with a flow key, or the head was removed; records before now are not covered",
				"file", cfg.Path, "head", headPath)
		}
		return nil
	}
	var why string
	if err != nil {
		why = err.Error()
	} else {
		// The head is of the live file, or of Path.1 when a rotation was
		// cut short before the new file got its first record.
		var files []ChainFile
		for _, p := range []string{RotatedPath(cfg.Path, 1), cfg.Path} {
			b, err := os.ReadFile(p)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("flows file: %w", err)
			}
			files = append(files, ChainFile{Name: p, Data: b})
		}
		if len(files) == 2 && len(bytes.TrimSpace(files[1].Data)) > 0 {
			files = files[1:] // the live file has records: the head is its
		}
		v := Verify(files, head, cfg.Key)
		switch {
		case v.Broken != nil:
			why = v.Broken.String()
		case !v.HeadChecked && v.Records > 0:
			why = strings.Join(v.Notes, "; ")
		}
	}
	if why == "" {
		return nil
	}
	aside := fmt.Sprintf("%s.mismatch-%d", headPath, cfg.Now().UnixNano())
	if err := os.Rename(headPath, aside); err != nil {
		return fmt.Errorf("keep mismatched flows head: %w", err)
	}
	cfg.Log.Error("flow records do not match their head: someone changed them, or a crash cut them; the head is kept aside and a new one starts",
		"file", cfg.Path, "kept", aside, "first-fault", why)
	return nil
}

// tailScan is how much of a file's end is read to find its last record.
const tailScan = 1 << 20

// resume finds the chain's last record (in the live file, else in the
// newest rotated one) and the live file's size and first record.
func (s *fileSink) resume(w *Writer) error {
	fi, err := s.f.Stat()
	if err != nil {
		return err
	}
	s.size = fi.Size()
	last, partial, err := lastLine(s.f, s.size)
	if err != nil {
		return err
	}
	if partial {
		// A write cut short: end the line so the next record starts its own.
		if _, err := s.f.Write([]byte{'\n'}); err != nil {
			return err
		}
		s.size++
	}
	if last != nil {
		first, err := firstLine(s.f)
		if err != nil {
			return err
		}
		s.firstSeq = seqOf(first)
	} else if r, err := os.Open(RotatedPath(s.cfg.Path, 1)); err == nil {
		fi, err := r.Stat()
		if err == nil {
			last, _, err = lastLine(r, fi.Size())
		}
		r.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", RotatedPath(s.cfg.Path, 1), err)
		}
	}
	if last != nil {
		w.seq, w.prev = seqOf(last), LineHash(last)
	}
	return nil
}

// seqOf is the Seq of a record line, 0 if it has none.
func seqOf(line []byte) uint64 {
	var v struct {
		Seq uint64 `json:"seq"`
	}
	_ = json.Unmarshal(line, &v)
	return v.Seq
}

// lastLine returns the last whole line of f (size bytes long), nil if it
// has none, and whether a partial line follows it.
func lastLine(f io.ReaderAt, size int64) (line []byte, partial bool, err error) {
	n := min(size, tailScan)
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, size-n); err != nil && err != io.EOF {
		return nil, false, err
	}
	partial = n > 0 && buf[n-1] != '\n'
	end := bytes.LastIndexByte(buf, '\n')
	for end > 0 {
		start := bytes.LastIndexByte(buf[:end], '\n') + 1
		if start == 0 && size > n {
			return nil, false, fmt.Errorf("last record longer than %d bytes", tailScan)
		}
		if l := bytes.TrimSpace(buf[start:end]); len(l) > 0 {
			return l, partial, nil
		}
		end = start - 1
	}
	return nil, partial, nil
}

// firstLine returns the first line of f.
func firstLine(f io.ReaderAt) ([]byte, error) {
	br := bufio.NewReaderSize(io.NewSectionReader(f, 0, tailScan), 64*1024)
	line, err := br.ReadBytes('\n')
	if err != nil && err != io.EOF {
		return nil, err
	}
	return bytes.TrimSpace(line), nil
}

// beforeWrite rotates the live file if a line of n bytes would take it
// past MaxBytes, and accounts for the line. seq is the line's record.
func (s *fileSink) beforeWrite(w *Writer, n int, seq uint64) error {
	if s.cfg.MaxBytes > 0 && s.size > 0 && s.size+int64(n) > s.cfg.MaxBytes {
		if err := w.w.Flush(); err != nil {
			return fmt.Errorf("write flow records: %w", err)
		}
		if err := s.rotate(); err != nil {
			return err
		}
		w.w.Reset(s.f)
	}
	if s.firstSeq == 0 {
		s.firstSeq = seq
	}
	s.size += int64(n)
	return nil
}

// rotate closes the live file, shifts Path.i to Path.i+1 (the oldest
// beyond Keep is overwritten) and Path to Path.1, and opens a new Path.
// The chain goes on: the new file's first record links to the old file's
// last.
func (s *fileSink) rotate() error {
	if err := s.f.Close(); err != nil {
		return fmt.Errorf("rotate flows file: %w", err)
	}
	for i := s.cfg.Keep - 1; i >= 1; i-- {
		if err := os.Rename(RotatedPath(s.cfg.Path, i), RotatedPath(s.cfg.Path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotate flows file: %w", err)
		}
	}
	if err := os.Rename(s.cfg.Path, RotatedPath(s.cfg.Path, 1)); err != nil {
		return fmt.Errorf("rotate flows file: %w", err)
	}
	f, err := os.OpenFile(s.cfg.Path, os.O_RDWR|os.O_CREATE|os.O_APPEND|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("rotate flows file: %w", err)
	}
	s.f, s.size, s.firstSeq = f, 0, 0
	return nil
}

// writeHead replaces the head with one naming record seq of hash hash
// (the live file's last), when there is a key. The file is written whole
// and renamed over the old head, so a reader sees one or the other.
func (s *fileSink) writeHead(seq uint64, hash string) error {
	if s.cfg.Key == nil {
		return nil
	}
	h := Head{FirstSeq: s.firstSeq, Seq: seq, Hash: hash, Time: s.cfg.Now().UTC()}
	h.MAC = h.mac(s.cfg.Key)
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	tmp := HeadPath(s.cfg.Path) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o640); err != nil {
		return fmt.Errorf("write flows head: %w", err)
	}
	if err := os.Rename(tmp, HeadPath(s.cfg.Path)); err != nil {
		return fmt.Errorf("write flows head: %w", err)
	}
	return nil
}
