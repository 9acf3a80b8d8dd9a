package enforcer

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sort"
	"testing"
	"time"

	"github.com/bireme/bireme/netns"
	"github.com/bireme/bireme/netns/netnstest"
)

// TestVerdictBatchAppliesToTheRightPackets runs the reader's batching
// against the kernel: eight UDP datagrams wait in a real NFQUEUE queue,
// one recvmmsg takes several of them, and their verdicts, written
// together in one write, must each reach its own packet: the accepted
// ones arrive (one of them rewritten, one with a new mark), the dropped
// ones never do, and none is left waiting in the queue.
func TestVerdictBatchAppliesToTheRightPackets(t *testing.T) {
	netnstest.RequireNamespaces(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := netnstest.Prefix()
	snd, rcv := netnstest.NewNS(t, p+"-bs"), netnstest.NewNS(t, p+"-br")
	if err := netns.Veth(ctx, snd, p+"bs0", rcv, p+"br0"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ns   *netns.NS
		args []string
	}{
		{snd, []string{"ip", "addr", "add", "198.18.9.1/24", "dev", p + "bs0"}},
		{rcv, []string{"ip", "addr", "add", "198.18.9.2/24", "dev", p + "br0"}},
		// No --queue-bypass: without a verdict a packet waits (fails closed).
		{rcv, []string{"iptables", "-w", "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", "40000", "-j", "NFQUEUE", "--queue-num", "5"}},
		// Datagrams accepted with mark 0x42 are counted at the next hook.
		{rcv, []string{"iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", "40000", "-m", "mark", "--mark", "0x42"}},
	} {
		if err := c.ns.Exec(ctx, c.args[0], c.args[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	var conn net.PacketConn
	if err := rcv.Do(func() (err error) {
		conn, err = net.ListenPacket("udp4", "198.18.9.2:40000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sock, err := openNFQ(rcv.Path(), 5)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.close()

	// Eight datagrams, payload "0" to "7", all queued before we read.
	const n = 8
	if err := snd.Do(func() error {
		c, err := net.Dial("udp4", "198.18.9.2:40000")
		if err != nil {
			return err
		}
		defer c.Close()
		for i := range n {
			if _, err := fmt.Fprint(c, i); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Wait until all eight wait in the queue (softirq may lag on a busy
	// machine), so that a read can take several.
	for start := time.Now(); queueTotal(ctx, t, rcv, 5) < n; {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("only %d of %d datagrams reached the queue", queueTotal(ctx, t, rcv, 5), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%d datagrams queued before the first read", queueTotal(ctx, t, rcv, 5))

	// Read until all eight are decided: even ones accepted ("2" rewritten
	// to "X", "4" marked 0x42), odd ones dropped; each read's verdicts
	// written in one write.
	seen, most := 0, 0
	deadline := time.Now().Add(10 * time.Second)
	for seen < n && time.Now().Before(deadline) {
		if err := sock.file.SetReadDeadline(deadline); err != nil {
			t.Fatal(err)
		}
		k, err := sock.recvBatch()
		if err != nil {
			t.Fatalf("read after %d packets: %v", seen, err)
		}
		most = max(most, k)
		for i := range k {
			for msg := range messages(sock.rbufs[i][:sock.msgs[i].len]) {
				q, ok := parsePacketMsg(msg)
				if !ok {
					continue
				}
				pkt := q.payload
				ihl := int(pkt[0]&0x0f) * 4
				data := pkt[ihl+8:]
				switch v := data[0]; {
				case v == '2':
					out := bytes.Clone(pkt)
					out[ihl+8] = 'X'
					binary.BigEndian.PutUint16(out[ihl+6:], 0) // no UDP checksum (IPv4)
					err = sock.queueVerdict(q.id, true, 0, false, out)
				case v == '4':
					err = sock.queueVerdict(q.id, true, 0x42, true, nil)
				case (v-'0')%2 == 0:
					err = sock.queueVerdict(q.id, true, 0, false, nil)
				default:
					err = sock.queueVerdict(q.id, false, 0, false, nil)
				}
				if err != nil {
					t.Fatal(err)
				}
				seen++
			}
		}
		if err := sock.flush(); err != nil {
			t.Fatal(err)
		}
	}
	if seen != n {
		t.Fatalf("read %d of %d queued datagrams", seen, n)
	}
	if most < 2 {
		t.Fatalf("no read took more than one packet (largest batch %d): the batch path was not exercised", most)
	}

	var got []string
	buf := make([]byte, 64)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		m, _, err := conn.ReadFrom(buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:m]))
	}
	sort.Strings(got)
	if want := []string{"0", "4", "6", "X"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("received %q, want %q (accepted, one rewritten; odd ones dropped)", got, want)
	}
	out, err := rcv.Output(ctx, "iptables", "-w", "-L", "INPUT", "-v", "-n", "-x")
	if err != nil {
		t.Fatal(err)
	}
	if marked := markedCount(out); marked != 1 {
		t.Fatalf("%d datagrams carried mark 0x42 after their verdict, want 1:\n%s", marked, out)
	}
}

// markedCount is the packet counter of the INPUT rule matching mark 0x42.
func markedCount(listing []byte) int {
	for _, l := range bytes.Split(listing, []byte("\n")) {
		if bytes.Contains(l, []byte("mark match 0x42")) {
			var pkts int
			fmt.Sscan(string(l), &pkts)
			return pkts
		}
	}
	return -1
}

// queueTotal is how many packets wait in queue num of ns
// (/proc/net/netfilter/nfnetlink_queue: number, portid, total, ...).
func queueTotal(ctx context.Context, t *testing.T, ns *netns.NS, num int) int {
	t.Helper()
	out, err := ns.Output(ctx, "cat", "/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range bytes.Split(out, []byte("\n")) {
		var q, portid, total int
		if k, _ := fmt.Sscan(string(l), &q, &portid, &total); k == 3 && q == num {
			return total
		}
	}
	return 0
}
