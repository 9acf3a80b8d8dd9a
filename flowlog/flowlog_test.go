package flowlog

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bireme/bireme/identity"
)

func TestWriteRead(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := w.Write(&Record{
				Time: time.Unix(1, 0).UTC(), Node: "n1", Direction: "ingress", Stage: "syn",
				Local:   &identity.Identity{Cluster: "c", Namespace: "x", Pod: "a"},
				Verdict: Deny, Reason: "selected by x/deny-all; no rule allows",
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	recs, err := Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 50 || recs[0].Local.Pod != "a" || recs[0].Peer != nil {
		t.Fatalf("got %d records: %+v", len(recs), recs[0])
	}
	if _, err := Read(strings.NewReader("{\"verdict\":\"allow\"}\nnot json\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("want line 2 error, got %v", err)
	}
}

func TestWriteBatchKeepsOrder(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	var batch []*Record
	for _, pod := range []string{"a", "b", "c"} {
		batch = append(batch, &Record{Time: time.Unix(1, 0).UTC(), Node: "n1", Verdict: Allow,
			Local: &identity.Identity{Cluster: "c", Namespace: "x", Pod: pod}})
	}
	if err := w.WriteBatch(batch); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteBatch(nil); err != nil {
		t.Fatal(err)
	}
	recs, err := Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs {
		got = append(got, r.Local.Pod)
	}
	if strings.Join(got, ",") != "a,b,c" {
		t.Fatalf("records %v, want a,b,c in order", got)
	}
}

// The handshake fields survive a write and a read, and a record without
// them does not mention them.
func TestHandshakeFieldsRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, r := range []*Record{
		{Node: "n1", Verdict: Allow, Handshake: TwoMessage},
		{Node: "n1", Verdict: Allow, Handshake: ThreeMessage, Fallback: "stale-timestamp"},
		{Node: "n1", Verdict: Deny},
	} {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 || strings.Contains(lines[2], "handshake") || strings.Contains(lines[2], "fallback") {
		t.Fatalf("lines:\n%s", buf.String())
	}
	recs, err := Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if recs[0].Handshake != TwoMessage || recs[0].Fallback != "" ||
		recs[1].Handshake != ThreeMessage || recs[1].Fallback != "stale-timestamp" || recs[2].Handshake != "" {
		t.Fatalf("read back: %+v", recs)
	}
}
