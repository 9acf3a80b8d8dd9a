package enforcer

import (
	"bytes"

	"testing"

	"github.com/bireme/bireme/marks"
)

// TestLateRetransmittedSYN: under load the client's kernel retransmits
// its SYN before the SYN-ACK to the first one arrives, and the copy
// reaches the server after the server already answered the first. The
// client completes the handshake it got the SYN-ACK of; the server must
// still accept that handshake's proof, and its retransmitted SYN-ACKs must
// still be ones the client recognizes. (Before the fix the second SYN
// replaced the server's handshake, the proof was rejected as bad-proof,
// and the connection hung: the client thinks it is established, the
// server drops all it sends.)
func TestLateRetransmittedSYN(t *testing.T) {
	auth := marks.DefaultAuthorized
	const sport = 7
	syn := seg(t, true, sport, true, false, linuxSYNOptions, nil)
	synack := seg(t, false, sport, true, true, linuxSYNOptions, nil)
	ackPkt := seg(t, true, sport, false, true, linuxACKOptions, nil)

	p := newPair(t, 0)
	first := pass(p.cli, syn, true)
	second := pass(p.cli, syn, true) // retransmitted before any SYN-ACK
	if w := pass(p.srv, first.packet, false); !w.accept {
		t.Fatal("server refused the first SYN")
	}
	sa1 := pass(p.srv, synack, true)
	if !sa1.accept {
		t.Fatal("server SYN-ACK dropped")
	}
	if w := pass(p.srv, second.packet, false); !w.accept {
		t.Fatal("server refused the retransmitted SYN")
	}
	// The server's kernel answers the duplicate SYN by retransmitting its
	// SYN-ACK; it crosses the first one, which the client takes.
	sa2 := pass(p.srv, synack, true)
	if !sa2.accept {
		t.Fatal("server's retransmitted SYN-ACK dropped")
	}
	if w := pass(p.cli, sa1.packet, false); !w.accept {
		t.Fatalf("client refused the SYN-ACK to its first SYN: %s", p.flows.String())
	}
	ack := pass(p.cli, ackPkt, true)
	if !ack.accept || ack.mark != auth {
		t.Fatalf("client ACK: %+v", ack)
	}
	if w := pass(p.srv, ack.packet, false); !w.accept || !authorizedAfter(w) {
		t.Fatalf("server rejected the proof of the handshake the client completed: %+v\n%s", w, p.flows.String())
	}
	// The retransmitted SYN-ACK arriving after the ACK is harmless.
	if w := pass(p.cli, sa2.packet, false); w.accept && w.mark == auth {
		t.Fatalf("late SYN-ACK authorized the client side: %+v", w)
	}

	// The other order: the client takes the SYN-ACK answering its second
	// SYN; its proof verifies too.
	q := newPair(t, 0)
	first = pass(q.cli, syn, true)
	second = pass(q.cli, syn, true)
	pass(q.srv, first.packet, false)
	pass(q.srv, synack, true)
	pass(q.srv, second.packet, false)
	sa2 = pass(q.srv, synack, true)
	if w := pass(q.cli, sa2.packet, false); !w.accept {
		t.Fatalf("client refused the SYN-ACK to its second SYN: %s", q.flows.String())
	}
	ack = pass(q.cli, ackPkt, true)
	if w := pass(q.srv, ack.packet, false); !w.accept || !authorizedAfter(w) {
		t.Fatalf("server rejected the proof of the second handshake: %+v\n%s", w, q.flows.String())
	}
}

// TestLostACKAfterLateSYN: as above, but the client's ACK is lost. The
// server's retransmitted SYN-ACK answers the newest SYN, not the one whose
// SYN-ACK the client took; the client must verify it and send that
// handshake's proof, or the connection hangs.
func TestLostACKAfterLateSYN(t *testing.T) {
	pending := marks.DefaultPending
	const sport = 8
	syn := seg(t, true, sport, true, false, linuxSYNOptions, nil)
	synack := seg(t, false, sport, true, true, linuxSYNOptions, nil)
	ackPkt := seg(t, true, sport, false, true, linuxACKOptions, nil)

	p := newPair(t, 0)
	first := pass(p.cli, syn, true)
	second := pass(p.cli, syn, true)
	pass(p.srv, first.packet, false)
	sa1 := pass(p.srv, synack, true)
	pass(p.srv, second.packet, false)
	if w := pass(p.cli, sa1.packet, false); !w.accept {
		t.Fatal("client refused the SYN-ACK to its first SYN")
	}
	pass(p.cli, ackPkt, true) // lost
	sa2 := pass(p.srv, synack, true)
	if !sa2.accept {
		t.Fatal("server's retransmitted SYN-ACK dropped")
	}
	w := pass(p.cli, sa2.packet, false)
	if !w.accept || w.mark != pending || !bytes.Equal(w.or(sa2.packet), synack) {
		t.Fatalf("client must take the SYN-ACK to its second SYN and go back to Pending: %+v\n%s", w, p.flows.String())
	}
	ack := pass(p.cli, ackPkt, true)
	if w := pass(p.srv, ack.packet, false); !w.accept || !authorizedAfter(w) {
		t.Fatalf("server rejected the proof sent after its retransmitted SYN-ACK: %+v\n%s", w, p.flows.String())
	}
	// A SYN-ACK answering no SYN the client sent is still refused.
	other := newPair(t, 0)
	o1 := pass(other.cli, syn, true)
	pass(other.srv, o1.packet, false)
	foreign := pass(other.srv, synack, true)
	if w := pass(p.cli, foreign.packet, false); w.accept {
		t.Fatal("client accepted a SYN-ACK answering a SYN it never sent")
	}
}
