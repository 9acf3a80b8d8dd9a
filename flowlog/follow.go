package flowlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Follow calls fn with every whole line of the flow file path (without
// its newline), then with each line appended to it, until ctx ends or fn
// fails. It follows the name, as `tail -F` does: when the file is rotated
// (renamed away and a new one created) it reads the old file to its end
// and goes on with the new one from its start; a file truncated in place
// is read again from its start. It waits for a file that does not exist
// yet. Like tail -F it checks the name every poll: a follower that falls
// behind by a whole rotation (the file rotated twice between two looks)
// misses the file in between. The slice fn gets is valid only during the
// call.
func Follow(ctx context.Context, path string, poll time.Duration, fn func([]byte) error) error {
	if poll <= 0 {
		poll = 200 * time.Millisecond
	}
	var (
		f       *os.File
		offset  int64
		pending []byte
		buf     = make([]byte, 64*1024)
	)
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	// drain reads f to its end, handing out whole lines.
	drain := func() error {
		for {
			n, err := f.Read(buf)
			offset += int64(n)
			pending = append(pending, buf[:n]...)
			for {
				i := bytes.IndexByte(pending, '\n')
				if i < 0 {
					break
				}
				if line := bytes.TrimSpace(pending[:i]); len(line) > 0 {
					if err := fn(line); err != nil {
						return err
					}
				}
				pending = pending[i+1:]
			}
			if len(pending) > MaxLine {
				return fmt.Errorf("follow %s: a line longer than %d bytes", path, MaxLine)
			}
			if errors.Is(err, io.EOF) || n == 0 {
				return nil
			}
			if err != nil {
				return fmt.Errorf("follow %s: %w", path, err)
			}
		}
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		if f == nil {
			nf, err := os.Open(path)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("follow: %w", err)
			}
			if err == nil {
				f, offset, pending = nf, 0, pending[:0]
			}
		}
		if f != nil {
			if err := drain(); err != nil {
				return err
			}
			cur, statErr := f.Stat()
			named, err := os.Stat(path)
			switch {
			case err != nil || statErr != nil || !os.SameFile(cur, named):
				// Rotated (or removed): the old file is complete once its
				// writer moved on; read what is left, then the new one.
				if err := drain(); err != nil {
					return err
				}
				f.Close()
				f = nil
				continue
			case named.Size() < offset:
				// Truncated in place: start again.
				if _, err := f.Seek(0, io.SeekStart); err != nil {
					return fmt.Errorf("follow %s: %w", path, err)
				}
				offset, pending = 0, pending[:0]
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
