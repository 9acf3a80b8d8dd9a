package flowlog

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// Head names the last record of a live flow file under an HMAC with the
// node's flow key. Whoever can change the file but does not hold the key
// cannot make a head for a file they cut short or rewrote.
type Head struct {
	FirstSeq uint64    `json:"firstSeq"` // the live file's first record
	Seq      uint64    `json:"seq"`      // its last record when the head was written
	Hash     string    `json:"hash"`     // LineHash of that record
	Time     time.Time `json:"time"`
	MAC      string    `json:"mac"` // hex HMAC-SHA256 over the fields above
}

// KeySize is the length of a flow key.
const KeySize = 32

// mac is the head's HMAC under key, over a fixed encoding of its fields
// with a label of its own, so the key signs nothing else by accident.
func (h Head) mac(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("bireme flow head v1\x00"))
	m.Write([]byte(strconv.FormatUint(h.FirstSeq, 10) + "\x00" + strconv.FormatUint(h.Seq, 10) + "\x00" +
		h.Hash + "\x00" + h.Time.UTC().Format(time.RFC3339Nano)))
	return hex.EncodeToString(m.Sum(nil))
}

// Valid reports whether the head's MAC is right under key.
func (h Head) Valid(key []byte) bool {
	got, err := hex.DecodeString(h.MAC)
	if err != nil {
		return false
	}
	want, _ := hex.DecodeString(h.mac(key))
	return hmac.Equal(got, want)
}

// ReadHead reads a head file; it returns nil and no error when there is
// none.
func ReadHead(path string) (*Head, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var h Head
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("flows head %s: %w", path, err)
	}
	return &h, nil
}

// LoadKey reads a flow key file: KeySize random bytes.
func LoadKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("flow key: %w", err)
	}
	if len(b) != KeySize {
		// Say the size, never the bytes.
		return nil, fmt.Errorf("flow key %s: %d bytes, want %d", path, len(b), KeySize)
	}
	return b, nil
}

// LoadOrCreateKey reads the flow key at path, creating it (KeySize random
// bytes, readable by the owner only) if it does not exist.
func LoadOrCreateKey(path string) ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return LoadKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("create flow key: %w", err)
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create flow key: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("create flow key: %w", err)
	}
	return key, nil
}
