package flowlog

import (
	"bufio"
	"encoding/json"
	"io"
	"path/filepath"
	"testing"
)

// BenchmarkWriteBatch: what the chain and the head cost per record, in
// batches of 64 (the flow writer's batches every 20 ms). "plain" is the
// writer before the chain (JSON lines, one flush per batch): the baseline
// the others are read against, measured in the same run.
func BenchmarkWriteBatch(b *testing.B) {
	batch := make([]*Record, 64)
	for i := range batch {
		batch[i] = testRecord(i)
	}
	run := func(b *testing.B, write func([]*Record) error) {
		b.ReportAllocs()
		for b.Loop() {
			if err := write(batch); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/record")
	}
	b.Run("plain", func(b *testing.B) {
		bw := bufio.NewWriter(io.Discard)
		enc := json.NewEncoder(bw)
		run(b, func(rs []*Record) error {
			for _, r := range rs {
				if err := enc.Encode(r); err != nil {
					return err
				}
			}
			return bw.Flush()
		})
	})
	b.Run("chained", func(b *testing.B) {
		run(b, NewWriter(io.Discard).WriteBatch)
	})
	b.Run("file-with-head", func(b *testing.B) {
		w, c, err := OpenFile(FileConfig{Path: filepath.Join(b.TempDir(), "f.jsonl"), Key: testKey, MaxBytes: 64 << 20, Keep: 1})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, w.WriteBatch)
	})
}
