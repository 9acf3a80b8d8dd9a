package flowlog

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sync"
)

// The records a Writer writes form a hash chain: each carries its number
// (Seq) and the SHA-256 of the previous record's line (Prev), so a record
// changed, removed, inserted or moved breaks the link of the record after
// it. The chain alone cannot show that records were cut from the end, nor
// stop someone from rewriting a whole tail with fresh hashes: a file
// writer (OpenFile) also keeps a head, the last record's number and hash
// under an HMAC with a node-local key (head.go), and Verify checks the
// chain against it.

// Writer appends records as JSON lines, chaining them. It is safe for
// concurrent use.
type Writer struct {
	mu   sync.Mutex
	w    *bufio.Writer
	buf  bytes.Buffer
	enc  *json.Encoder
	seq  uint64 // of the last record written
	prev string // hex hash of the last record's line; "" before the first
	file *fileSink
}

// NewWriter returns a Writer on w that starts a new chain. Records are
// flushed after every write so that a reader tailing the output sees them
// at once.
func NewWriter(w io.Writer) *Writer {
	cw := &Writer{w: bufio.NewWriter(w)}
	cw.enc = json.NewEncoder(&cw.buf)
	return cw
}

// Write appends one record.
func (w *Writer) Write(r *Record) error { return w.WriteBatch([]*Record{r}) }

// WriteBatch appends records in order with one flush at the end, for a
// writer that collects records and writes them periodically. The records
// are not modified: each is written with the chain's next Seq and Prev.
func (w *Writer) WriteBatch(rs []*Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range rs {
		c := *r
		c.Seq, c.Prev = w.seq+1, w.prev
		w.buf.Reset()
		if err := w.enc.Encode(&c); err != nil {
			return fmt.Errorf("encode flow record: %w", err)
		}
		line := w.buf.Bytes() // ends with the newline Encode adds
		if w.file != nil {
			if err := w.file.beforeWrite(w, len(line), c.Seq); err != nil {
				return err
			}
		}
		if _, err := w.w.Write(line); err != nil {
			return fmt.Errorf("write flow record: %w", err)
		}
		w.seq, w.prev = c.Seq, LineHash(line[:len(line)-1])
	}
	if err := w.w.Flush(); err != nil {
		return fmt.Errorf("write flow records: %w", err)
	}
	if w.file != nil && len(rs) > 0 {
		return w.file.writeHead(w.seq, w.prev)
	}
	return nil
}

// LineHash is the chain's hash of one record line (without its newline):
// hex SHA-256.
func LineHash(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}
