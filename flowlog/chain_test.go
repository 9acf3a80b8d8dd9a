package flowlog

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/internal/syncbuf"
)

func testRecord(i int) *Record {
	return &Record{
		Time: time.Unix(int64(1000+i), 0).UTC(), Node: "n1", Direction: "ingress", Stage: "syn", Protocol: "TCP",
		LocalAddr: "198.18.0.2:80", PeerAddr: "198.18.0.3:40000",
		Local:   &identity.Identity{Cluster: "c", Namespace: "x", Pod: "server"},
		Peer:    &identity.Identity{Cluster: "c", Namespace: "y", Pod: "client" + strings.Repeat("a", i%3)},
		Verdict: Allow, Policy: "x/allow", Reason: "allowed by x/allow",
	}
}

var testKey = bytes.Repeat([]byte{7}, KeySize)

// writeChain writes n records (in batches of 3) to dir/flows.jsonl with
// the test key, rotating at maxBytes, and returns the live file's path.
func writeChain(t *testing.T, dir string, n int, maxBytes int64) string {
	t.Helper()
	path := filepath.Join(dir, "flows.jsonl")
	w, c, err := OpenFile(FileConfig{Path: path, Key: testKey, MaxBytes: maxBytes, Keep: 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i += 3 {
		var batch []*Record
		for j := i; j < min(i+3, n); j++ {
			batch = append(batch, testRecord(j))
		}
		if err := w.WriteBatch(batch); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// verifyFiles verifies the chain of files with the head of the last one.
func verifyFiles(t *testing.T, key []byte, files ...string) *Verification {
	t.Helper()
	var cfs []ChainFile
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cfs = append(cfs, ChainFile{Name: filepath.Base(f), Data: b})
	}
	h, err := ReadHead(HeadPath(files[len(files)-1]))
	if err != nil {
		t.Fatal(err)
	}
	return Verify(cfs, h, key)
}

func lines(t *testing.T, path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.SplitAfter(strings.TrimSuffix(string(b), "\n"), "\n")
}

func writeLines(t *testing.T, path string, ls []string) {
	s := strings.Join(ls, "")
	if !strings.HasSuffix(s, "\n") && s != "" {
		s += "\n"
	}
	if err := os.WriteFile(path, []byte(s), 0o640); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyDetectsTampering: each way of changing the file is caught at
// the record it touched.
func TestVerifyDetectsTampering(t *testing.T) {
	cases := []struct {
		name     string
		tamper   func(t *testing.T, path string)
		key      []byte
		wantLine int
		wantWhy  string
	}{
		{name: "untouched", tamper: func(*testing.T, string) {}, key: testKey},
		{name: "flip a byte", key: testKey, wantLine: 5, wantWhy: "does not link", tamper: func(t *testing.T, p string) {
			ls := lines(t, p)
			ls[3] = strings.Replace(ls[3], `"pod":"server"`, `"pod":"servex"`, 1)
			writeLines(t, p, ls)
		}},
		{name: "flip a byte of the last record", key: testKey, wantLine: 10, wantWhy: "does not match the head", tamper: func(t *testing.T, p string) {
			ls := lines(t, p)
			ls[9] = strings.Replace(ls[9], `"verdict":"allow"`, `"verdict":"deny!"`, 1)
			writeLines(t, p, ls)
		}},
		{name: "flip a byte into bad JSON", key: testKey, wantLine: 2, wantWhy: "not a flow record", tamper: func(t *testing.T, p string) {
			ls := lines(t, p)
			ls[1] = strings.Replace(ls[1], `{`, `[`, 1)
			writeLines(t, p, ls)
		}},
		{name: "delete a record", key: testKey, wantLine: 4, wantWhy: "record 5 follows record 3", tamper: func(t *testing.T, p string) {
			ls := lines(t, p)
			writeLines(t, p, append(ls[:3:3], ls[4:]...))
		}},
		{name: "reorder", key: testKey, wantLine: 3, wantWhy: "record 4 follows record 2", tamper: func(t *testing.T, p string) {
			ls := lines(t, p)
			ls[2], ls[3] = ls[3], ls[2]
			writeLines(t, p, ls)
		}},
		{name: "truncate whole records", key: testKey, wantLine: 9, wantWhy: "truncated: the head names record 10, the file ends at record 8", tamper: func(t *testing.T, p string) {
			writeLines(t, p, lines(t, p)[:8])
		}},
		{name: "truncate mid-record", key: testKey, wantLine: 10, wantWhy: "not a flow record", tamper: func(t *testing.T, p string) {
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)-40], 0o640)
		}},
		{name: "rewrite the tail and its hashes", key: testKey, wantWhy: "does not match the head", wantLine: 10, tamper: func(t *testing.T, p string) {
			// Someone without the key recomputes the chain after a change:
			// the chain holds, the head does not.
			ls := lines(t, p)
			var out []string
			prev := ""
			for i, l := range ls {
				var r Record
				if err := json.Unmarshal([]byte(l), &r); err != nil {
					t.Fatal(err)
				}
				if i == 6 {
					r.Verdict = Deny
				}
				if i > 0 {
					r.Prev = prev
				}
				b, _ := json.Marshal(r)
				prev = LineHash(b)
				out = append(out, string(b)+"\n")
			}
			writeLines(t, p, out)
		}},
		{name: "forged head", key: testKey, wantLine: 11, wantWhy: "MAC does not verify", tamper: func(t *testing.T, p string) {
			h, _ := ReadHead(HeadPath(p))
			h.Seq = 8
			b, _ := json.Marshal(h)
			os.WriteFile(HeadPath(p), b, 0o640)
		}},
		{name: "wrong key", key: bytes.Repeat([]byte{8}, KeySize), wantLine: 11, wantWhy: "MAC does not verify", tamper: func(*testing.T, string) {}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeChain(t, t.TempDir(), 10, 0)
			tc.tamper(t, path)
			v := verifyFiles(t, tc.key, path)
			if tc.wantWhy == "" {
				if !v.Intact() || v.Records != 10 || v.Uncovered != 0 {
					t.Fatalf("want intact, 10 records: %+v broken %v", v, v.Broken)
				}
				return
			}
			if v.Intact() || v.Broken == nil {
				t.Fatalf("tampering not detected: %+v", v)
			}
			if v.Broken.Line != tc.wantLine || !strings.Contains(v.Broken.Why, tc.wantWhy) {
				t.Fatalf("broken %v, want line %d: %q", v.Broken, tc.wantLine, tc.wantWhy)
			}
		})
	}
}

// TestVerifyWithoutHeadOrKey: a chain with no head or no key is never
// called intact, and says why.
func TestVerifyWithoutHeadOrKey(t *testing.T) {
	path := writeChain(t, t.TempDir(), 4, 0)
	if v := verifyFiles(t, nil, path); v.Intact() || v.Broken != nil || !strings.Contains(strings.Join(v.Notes, ";"), "no key") {
		t.Fatalf("no key: %+v", v)
	}
	os.Remove(HeadPath(path))
	if v := verifyFiles(t, testKey, path); v.Intact() || v.Broken != nil || !strings.Contains(strings.Join(v.Notes, ";"), "no head") {
		t.Fatalf("no head: %+v", v)
	}
}

// TestRotationKeepsChain: rotated files and the live one verify as one
// chain, whose links cross the files; a rotated file cut short is caught
// by its successor's first link, and the live file's start by the head.
func TestRotationKeepsChain(t *testing.T) {
	dir := t.TempDir()
	path := writeChain(t, dir, 20, 1500)
	files, _ := filepath.Glob(path + ".*[0-9]")
	if len(files) < 2 {
		t.Fatalf("want at least 2 rotated files, got %v", files)
	}
	all := append(files, path) // any order: Verify orders them
	v := verifyFiles(t, testKey, all...)
	if !v.Intact() || v.Records != 20 || v.FirstSeq != 1 || v.LastSeq != 20 {
		t.Fatalf("rotated chain: %+v %v", v, v.Broken)
	}
	// The newest rotated file and the live one alone: intact, and the
	// chain begins mid-way.
	if v := verifyFiles(t, testKey, RotatedPath(path, 1), path); !v.Intact() || v.FirstSeq == 1 {
		t.Fatalf("rotated pair: %+v %v", v, v.Broken)
	}
	// Cut the last record of the newest rotated file.
	r1 := RotatedPath(path, 1)
	ls := lines(t, r1)
	writeLines(t, r1, ls[:len(ls)-1])
	v = verifyFiles(t, testKey, all...)
	if v.Broken == nil || v.Broken.File != "flows.jsonl" || v.Broken.Line != 1 {
		t.Fatalf("cut rotated file: %+v %v", v, v.Broken)
	}
	// Remove the live file's first record: its head says where it began.
	ls = lines(t, path)
	writeLines(t, path, ls[1:])
	if v := verifyFiles(t, testKey, path); v.Broken == nil || !strings.Contains(v.Broken.Why, "removed from its start") {
		t.Fatalf("cut live start: %+v %v", v, v.Broken)
	}
}

// TestResumeAfterRestart: a writer opened on an existing file (and on a
// file a crash left with half a line) continues its chain.
func TestResumeAfterRestart(t *testing.T) {
	dir := t.TempDir()
	path := writeChain(t, dir, 5, 0)
	path2 := writeChain(t, dir, 4, 0)
	if path != path2 {
		t.Fatal(path, path2)
	}
	if v := verifyFiles(t, testKey, path); !v.Intact() || v.Records != 9 {
		t.Fatalf("resumed: %+v %v", v, v.Broken)
	}
	// A crash cut the last line: the chain goes on from the last whole
	// record, and verification points at the half line.
	b, _ := os.ReadFile(path)
	os.WriteFile(path, b[:len(b)-20], 0o640)
	writeChain(t, dir, 2, 0)
	v := verifyFiles(t, testKey, path)
	if v.Broken == nil || v.Broken.Line != 9 || !strings.Contains(v.Broken.Why, "not a flow record") {
		t.Fatalf("half line: %+v %v", v, v.Broken)
	}
	ls := lines(t, path)
	var last Record
	json.Unmarshal([]byte(ls[len(ls)-1]), &last)
	if last.Seq != 10 {
		t.Fatalf("after the half line (record 9), want record 10, got %d", last.Seq)
	}
}

// TestReopenKeepsMismatchedHead: records cut while no writer ran are not
// covered up by the next writer's head: the old head is kept aside, an
// error is logged, and the old head still shows the cut.
func TestReopenKeepsMismatchedHead(t *testing.T) {
	dir := t.TempDir()
	path := writeChain(t, dir, 6, 0)
	writeLines(t, path, lines(t, path)[:4])
	var logged syncbuf.Buffer
	w, c, err := OpenFile(FileConfig{Path: path, Key: testKey, Log: slog.New(slog.NewTextHandler(&logged, nil))})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(testRecord(7))
	c.Close()
	aside, _ := filepath.Glob(HeadPath(path) + ".mismatch-*")
	if len(aside) != 1 || !strings.Contains(logged.String(), "truncated: the head names record 6") {
		t.Fatalf("kept %v; logged %s", aside, logged.String())
	}
	// The new head vouches for what the new writer wrote after the cut...
	if v := verifyFiles(t, testKey, path); !v.Intact() || v.LastSeq != 5 {
		t.Fatalf("new head: %+v %v", v, v.Broken)
	}
	// ...and the old one still shows the cut.
	b, _ := os.ReadFile(path)
	old, _ := ReadHead(aside[0])
	if v := Verify([]ChainFile{{Name: "f", Data: b}}, old, testKey); v.Broken == nil || !strings.Contains(v.Broken.Why, "truncated: the head names record 6") {
		t.Fatalf("old head: %+v %v", v, v.Broken)
	}
	// An honest restart keeps no head aside.
	writeChain(t, dir, 2, 0)
	if again, _ := filepath.Glob(HeadPath(path) + ".mismatch-*"); len(again) != 1 {
		t.Fatalf("honest restart kept a head aside: %v", again)
	}
}

// TestFollowAcrossRotation: a follower sees every record once, in order,
// while the writer rotates under it.
func TestFollowAcrossRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "flows.jsonl")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var (
		mu   sync.Mutex
		seqs []uint64
	)
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, path, 5*time.Millisecond, func(b []byte) error {
			r, err := ParseLine(b)
			if err != nil {
				return err
			}
			mu.Lock()
			seqs = append(seqs, r.Seq)
			mu.Unlock()
			return nil
		})
	}()
	w, c, err := OpenFile(FileConfig{Path: path, MaxBytes: 2000, Keep: 50})
	if err != nil {
		t.Fatal(err)
	}
	seen := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seqs)
	}
	// Each record is written once the follower has the one before, so
	// that the follower is never a whole file behind (a follower that
	// falls behind by a whole rotation misses that file, as tail -F
	// would; see Follow).
	const n = 40
	for i := 0; i < n; i++ {
		if err := w.Write(testRecord(i)); err != nil {
			t.Fatal(err)
		}
		for seen() < i+1 && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
	}
	c.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if rotated, _ := filepath.Glob(path + ".*[0-9]"); len(rotated) < 3 {
		t.Fatalf("the writer rotated only %d times", len(rotated))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seqs) != n {
		t.Fatalf("followed %d records, want %d: %v", len(seqs), n, seqs)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("record %d has seq %d: %v", i, s, seqs)
		}
	}
}

func TestKeyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "flow.key")
	k1, err := LoadOrCreateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadOrCreateKey(p)
	if err != nil || !bytes.Equal(k1, k2) || len(k1) != KeySize {
		t.Fatalf("key not kept: %v", err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", fi.Mode())
	}
	os.WriteFile(p, []byte("short"), 0o600)
	if _, err := LoadKey(p); err == nil || strings.Contains(err.Error(), "short") {
		t.Fatalf("short key: %v", err)
	}
}

// FuzzParseLine: no input makes the record parser or the verifier panic,
// and a parsed record encodes to a line that parses to the same record.
func FuzzParseLine(f *testing.F) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.Write(testRecord(1))
	f.Add(bytes.TrimSpace(buf.Bytes()))
	f.Add([]byte(`{"verdict":"deny","seq":3,"prev":"00","local":null,"peer":{"labels":{"a":"b"}}}`))
	f.Add([]byte(`{"verdict":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		Verify([]ChainFile{{Name: "f", Data: b}}, &Head{Seq: 1}, testKey)
		r, err := ParseLine(b)
		if err != nil {
			return
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		r2, err := ParseLine(out)
		if err != nil {
			t.Fatalf("re-parse %s: %v", out, err)
		}
		out2, _ := json.Marshal(r2)
		if !bytes.Equal(out, out2) {
			t.Fatalf("round trip differs:\n%s\n%s", out, out2)
		}
	})
}

// A negative size or count is refused before any file is made (it would
// silently never rotate).
func TestOpenFileRefusesNegativeLimits(t *testing.T) {
	for _, cfg := range []FileConfig{{MaxBytes: -1}, {MaxBytes: 100, Keep: -2}} {
		cfg.Path = filepath.Join(t.TempDir(), "flows.jsonl")
		if _, _, err := OpenFile(cfg); err == nil || !strings.Contains(err.Error(), "want 0 or more") {
			t.Errorf("OpenFile(MaxBytes %d, Keep %d): %v, want a refusal", cfg.MaxBytes, cfg.Keep, err)
		}
		if _, err := os.Stat(cfg.Path); !os.IsNotExist(err) {
			t.Errorf("OpenFile(MaxBytes %d, Keep %d) created the file (%v)", cfg.MaxBytes, cfg.Keep, err)
		}
	}
}
