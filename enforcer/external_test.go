package enforcer

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// synCapture records, for each destination port, whether the SYNs that
// reached a namespace carried Bireme's token option or any payload, from
// a raw socket (which sees every TCP segment the namespace receives).
type synCapture struct {
	mu     sync.Mutex
	seen   map[uint16]int
	tokens map[uint16]int // SYNs with option kind 253 or with payload
}

func captureSYNs(t *testing.T, l *flowLab) *synCapture {
	t.Helper()
	var pc net.PacketConn
	if err := l.ext.Do(func() (err error) {
		pc, err = net.ListenPacket("ip4:tcp", "0.0.0.0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	c := &synCapture{seen: map[uint16]int{}, tokens: map[uint16]int{}}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := pc.ReadFrom(buf) // the TCP segment, without its IP header
			if err != nil {
				return
			}
			seg := buf[:n]
			if n < 20 || seg[13]&(flagSYN|flagACK) != flagSYN {
				continue
			}
			hdr := int(seg[12]>>4) * 4
			if hdr < 20 || hdr > n {
				continue
			}
			carries := n > hdr // payload: where the token rides
			for o := seg[20:hdr]; len(o) > 0; {
				if o[0] == 0 {
					break
				}
				if o[0] == 1 || len(o) < 2 || o[1] < 2 {
					o = o[1:]
					continue
				}
				if o[0] == optKindExperimental {
					carries = true
				}
				o = o[min(int(o[1]), len(o)):]
			}
			port := binary.BigEndian.Uint16(seg[2:4])
			c.mu.Lock()
			c.seen[port]++
			if carries {
				c.tokens[port]++
			}
			c.mu.Unlock()
		}
	}()
	return c
}

// settled returns the counts once at least one SYN to port has been
// read: the raw socket's reader may lag behind the connection it
// watches (the race detector slows it), so a count read right after
// connect() can miss a SYN that did arrive.
func (c *synCapture) settled(port uint16) (seen, withToken int) {
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if seen, withToken = c.counts(port); seen > 0 || time.Now().After(deadline) {
			return seen, withToken
		}
	}
}

func (c *synCapture) counts(port uint16) (seen, withToken int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[port], c.tokens[port]
}

const egressToExt = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-ext, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 198.18.21.0/24}}]
    ports: [{port: 9000}, {port: 9001}]
`

const egressDenyAll = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-deny-all, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
`

// TestTokensOnlyToIdentityNetworks: web dials the external host ext,
// which runs no enforcer. At 198.18.21.2, outside the identity networks,
// the SYN arrives plain and the connection is decided by web's egress
// ipBlock rule; at 198.18.21.3, declared an identity network, the SYN
// carries the token (which shows the capture sees one when it is there).
func TestTokensOnlyToIdentityNetworks(t *testing.T) {
	l := newFlowLab(t, egressToExt, func(c *Config) {
		c.IdentityNetworks = []netip.Prefix{netip.MustParsePrefix("198.18.20.0/24"), netip.MustParsePrefix("198.18.21.3/32")}
	})
	syns := captureSYNs(t, l)
	external := serve(t, l.ext, "198.18.21.2:9000")
	serve(t, l.ext, "198.18.21.3:9001")

	t.Run("external destination: plain SYN, allowed by ipBlock", func(t *testing.T) {
		c, err := dialFrom(l.web, "", "198.18.21.2:9000", 3*time.Second)
		if err != nil {
			t.Fatalf("egress ipBlock rule did not admit the external host: %v", err)
		}
		defer c.Close()
		if err := echoBytes(c, 10000); err != nil {
			t.Fatal(err)
		}
		if seen, withToken := syns.settled(9000); seen == 0 || withToken != 0 {
			t.Fatalf("SYNs to the external host: %d, %d of them with a token or payload; want some, none", seen, withToken)
		}
		rs := l.flows.records(t)
		r := findRecord(rs, "egress", "syn", "allow")
		if r == nil || r.PeerAddr != "198.18.21.2:9000" || r.Policy != "prod/egress-to-ext" ||
			!slices.Contains(r.SelectedBy, "prod/egress-to-ext") ||
			!strings.Contains(r.Reason, "outside the identity networks: plain SYN, no token") {
			t.Errorf("egress record: %+v", r)
		}
	})
	t.Run("identity network: SYN carries the token", func(t *testing.T) {
		c, err := dialFrom(l.web, "", "198.18.21.3:9001", 3*time.Second)
		if err != nil {
			t.Fatalf("host without enforcer in an identity network, allowed by ipBlock: %v", err)
		}
		c.Close()
		if seen, withToken := syns.settled(9001); seen == 0 || withToken != seen {
			t.Fatalf("SYNs to the identity network: %d, %d with a token; want all", seen, withToken)
		}
	})
	t.Run("without the ipBlock rule the external host is refused", func(t *testing.T) {
		l.live.Swap(compilePolicy(t, egressDenyAll))
		seenBefore, _ := syns.counts(9000)
		before := external.accepted.Load()
		if c, err := dialFrom(l.web, "", "198.18.21.2:9000", 2*time.Second); err == nil {
			c.Close()
			t.Fatal("connection to an external host no rule allows succeeded")
		}
		if external.accepted.Load() != before {
			t.Error("the external host accepted the refused connection")
		}
		if seen, _ := syns.counts(9000); seen != seenBefore {
			t.Errorf("%d SYNs of a denied connection reached the external host", seen-seenBefore)
		}
	})
}
