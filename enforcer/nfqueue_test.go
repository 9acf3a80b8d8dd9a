package enforcer

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// packetMsg builds an NFQNL_MSG_PACKET as the kernel sends it.
func packetMsg(id uint32, hook uint8, mark *uint32, payload []byte) []byte {
	s := &nfqSocket{queue: 7, wbuf: make([]byte, 0, 0x10000)}
	b := s.startMsg(nfqnlMsgPacket, 0, 0)
	var hdr [7]byte
	binary.BigEndian.PutUint32(hdr[0:4], id)
	binary.BigEndian.PutUint16(hdr[4:6], 0x0800)
	hdr[6] = hook
	b = appendAttr(b, nfqaPacketHdr, hdr[:])
	if mark != nil {
		var m [4]byte
		binary.BigEndian.PutUint32(m[:], *mark)
		b = appendAttr(b, nfqaMark, m[:])
	}
	if payload != nil {
		b = appendAttr(b, nfqaPayload, payload)
	}
	return bytes.Clone(finishMsg(b))
}

func TestParsePacketMsg(t *testing.T) {
	mark := uint32(0x00300001)
	pkt := []byte{0x45, 0, 0, 21, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17} // odd length: padded
	full := packetMsg(42, hookLocalOut, &mark, pkt)
	tests := []struct {
		name     string
		msg      []byte
		ok       bool
		id       uint32
		hasMark  bool
		payload  []byte
		wantHook uint8
	}{
		{"full", full, true, 42, true, pkt, hookLocalOut},
		{"no mark", packetMsg(7, hookLocalIn, nil, pkt), true, 7, false, pkt, hookLocalIn},
		{"no payload", packetMsg(9, hookLocalIn, nil, nil), true, 9, false, nil, hookLocalIn},
		{"header only", full[:nlmsgHdrLen+nfgenHdrLen], false, 0, false, nil, 0},
		{"too short", full[:10], false, 0, false, nil, 0},
		{"packet header cut", full[:nlmsgHdrLen+nfgenHdrLen+nlaHdrLen+3], false, 0, false, nil, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, ok := parsePacketMsg(tc.msg)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if p.id != tc.id || p.hook != tc.wantHook || p.hasMark != tc.hasMark || !bytes.Equal(p.payload, tc.payload) {
				t.Fatalf("got id %d hook %d mark %v/%#x payload %x", p.id, p.hook, p.hasMark, p.mark, p.payload)
			}
			if tc.hasMark && p.mark != mark {
				t.Fatalf("mark %#x, want %#x", p.mark, mark)
			}
		})
	}
}

func TestMessagesSplitsDatagram(t *testing.T) {
	a, b := packetMsg(1, hookLocalIn, nil, []byte{1, 2, 3}), packetMsg(2, hookLocalOut, nil, []byte{4})
	var ids []uint32
	for m := range messages(append(append([]byte(nil), a...), b...)) {
		p, ok := parsePacketMsg(m)
		if !ok {
			t.Fatal("message not parsed")
		}
		ids = append(ids, p.id)
	}
	if len(ids) != 2 || ids[0] != 1 || ids[1] != 2 {
		t.Fatalf("ids %v, want [1 2]", ids)
	}
	// A length beyond the datagram ends the walk instead of reading past it.
	bad := bytes.Clone(a)
	binary.NativeEndian.PutUint32(bad[0:4], uint32(len(bad)+100))
	for range messages(bad) {
		t.Fatal("message with a bad length yielded")
	}
}

func TestVerdictMessage(t *testing.T) {
	s := &nfqSocket{queue: 3, wbuf: make([]byte, 0, 0x10000)}
	b := s.startMsg(nfqnlMsgVerdict, 1, 0)
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[0:4], nfAccept)
	binary.BigEndian.PutUint32(hdr[4:8], 99)
	b = appendAttr(b, nfqaVerdictHdr, hdr[:])
	b = appendAttr(b, nfqaPayload, []byte{1, 2, 3, 4, 5})
	b = finishMsg(b)
	if got := binary.NativeEndian.Uint32(b[0:4]); int(got) != len(b) || len(b)%4 != 0 {
		t.Fatalf("length %d of a %d-byte message (must be 4-aligned)", got, len(b))
	}
	if typ := binary.NativeEndian.Uint16(b[4:6]); typ != nfnlSubsysQueue<<8|nfqnlMsgVerdict {
		t.Fatalf("type %#x", typ)
	}
	if q := binary.BigEndian.Uint16(b[18:20]); q != 3 {
		t.Fatalf("queue %d in nfgenmsg, want 3", q)
	}
}

// TestQueueReaderAllocatesNothing: parsing a queued packet and building
// its verdict reuse the socket's buffers.
func TestQueueReaderAllocatesNothing(t *testing.T) {
	mark := uint32(1)
	msg := packetMsg(5, hookLocalIn, &mark, make([]byte, 1000))
	s := &nfqSocket{queue: 1, wbuf: make([]byte, 0, 0x10000)}
	pkt := make([]byte, 1200)
	allocs := testing.AllocsPerRun(100, func() {
		for m := range messages(msg) {
			p, _ := parsePacketMsg(m)
			b := s.startMsg(nfqnlMsgVerdict, 1, 0)
			var hdr [8]byte
			binary.BigEndian.PutUint32(hdr[4:8], p.id)
			b = appendAttr(b, nfqaVerdictHdr, hdr[:])
			b = appendAttr(b, nfqaPayload, pkt)
			_ = finishMsg(b)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per packet, want 0", allocs)
	}
}

// FuzzPacketMsg: no datagram from the queue socket makes the reader panic
// or hand on a payload outside the datagram.
func FuzzPacketMsg(f *testing.F) {
	mark := uint32(0x00100000)
	f.Add(packetMsg(1, hookLocalIn, &mark, []byte{0x45, 0, 0, 20}))
	f.Add(packetMsg(2, hookLocalOut, nil, nil))
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		for m := range messages(b) {
			p, _ := parsePacketMsg(m)
			if len(p.payload) > len(m) {
				t.Fatal("payload longer than its message")
			}
		}
	})
}
