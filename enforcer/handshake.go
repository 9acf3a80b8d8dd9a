package enforcer

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/tokens"
)

// connKey names a connection as its workload's namespace sees it.
type connKey struct {
	local, remote netip.AddrPort
}

// conn is the handshake state of one connection. Its fields are written
// by the queue goroutine that serves the connection (the kernel puts both
// directions of a flow on one queue), which reads them without a lock.
// The cleanup goroutine reads a server conn's fields in connTable.expire:
// server, noToken and expires are written before the conn is put in the
// table and never after, and peer, verified and authorized change only
// under the table's lock (connTable.complete). held is guarded by the
// table's lock too.
type conn struct {
	expires time.Time
	// plain: the workload dialed a destination outside the identity
	// networks; no token was sent and none may come back (external.go).
	plain bool

	// Client side (the workload sent the SYN). clients holds one
	// handshake per SYN transmission, newest last: the SYN-ACK says by its
	// echoed nonce which one it answers.
	clients []*tokens.ClientHandshake
	synack  []byte // the SYN-ACK token verified; a retransmission is recognized by its bytes
	// answered is the handshake that SYN-ACK completed.
	answered *tokens.ClientHandshake
	proof    []byte // the ACK proof to attach until the server answers

	// Server side (the workload received the SYN). server answers the
	// newest SYN; earlier holds the handshakes of earlier transmissions of
	// the SYN, still unfinished when it came: the client may have taken
	// the SYN-ACK to any of them, so the ACK's proof may be for any.
	server   *tokens.ServerHandshake
	earlier  []*tokens.ServerHandshake
	peer     *identity.Identity
	verified []byte // the client proof accepted

	// noToken: the peer presented no token (it runs no enforcer); policy
	// allowed it by address, so the connection is authorized at once.
	noToken bool
	// authorized: the handshake completed; later queued packets of the
	// connection (already in the queue when it was marked) pass.
	authorized bool

	// held are the server's queued packets of the connection that arrived
	// before the client's proof and wait for it without a verdict: the
	// client's first data can overtake its ACK on the way (the ACK is
	// re-injected by the client's enforcer on one CPU while the data,
	// already Authorized on the client, leaves from another). Dropping
	// them cost a 200 ms retransmission. Guarded by the table's lock.
	held []heldPacket
}

// heldPacket is a queued packet whose verdict waits for its connection's
// handshake to finish.
type heldPacket struct {
	q    *queue
	id   uint32
	mark uint32 // the packet's mark when it was queued
}

// Bounds on held packets: per connection (a sender has a window in
// flight, but only the first segments can overtake the ACK) and per
// workload (the kernel queue holds 4096 packets in all). Beyond them a
// packet is dropped and its sender retransmits.
const (
	maxHeldPerConn = 8
	maxHeld        = 512
)

// maxSYNRetries bounds the client handshakes kept for one connection.
const maxSYNRetries = 8

// clientFor returns the client handshake whose SYN carried nonce.
func (c *conn) clientFor(nonce [tokens.NonceSize]byte) *tokens.ClientHandshake {
	for _, ch := range c.clients {
		if ch.Nonce() == nonce {
			return ch
		}
	}
	return nil
}

// earlierAccepts returns the peer of the handshake of an earlier
// transmission of the SYN that proof completes, nil if none.
func (c *conn) earlierAccepts(proof []byte) *identity.Identity {
	for _, sh := range c.earlier {
		if sh.ConsumeACK(proof) == nil {
			return sh.Peer()
		}
	}
	return nil
}

// connTable holds the handshakes in progress of one workload, bounded
// per workload (limit) and over the node (node).
type connTable struct {
	mu    sync.Mutex
	m     map[connKey]*conn
	limit int
	node  *nodeHandshakes
	held  int // packets held in all of m's conns
}

// nodeHandshakes counts the handshakes of all the node's connTables
// against the node-wide limit.
type nodeHandshakes struct {
	n     atomic.Int64
	limit int
}

// reserve counts one more handshake if the node has room for it.
func (n *nodeHandshakes) reserve() bool {
	if n.n.Add(1) > int64(n.limit) {
		n.n.Add(-1)
		return false
	}
	return true
}

func newConnTable(limit int, node *nodeHandshakes) *connTable {
	return &connTable{m: map[connKey]*conn{}, limit: limit, node: node}
}

func (t *connTable) get(k connKey) *conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[k]
}

// put installs c for k, replacing any previous handshake of the tuple (a
// retransmitted SYN starts over; packets held for the tuple now wait for
// the new handshake). It refuses when the table is full.
func (t *connTable) put(k connKey, c *conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	old, ok := t.m[k]
	if !ok && (len(t.m) >= t.limit || !t.node.reserve()) {
		return false
	}
	if old != nil && old != c {
		c.held = append(c.held, old.held...)
		old.held = nil
	}
	t.m[k] = c
	return true
}

// hold keeps p waiting for the handshake of k. It says false when k has
// no handshake in progress or a bound is reached: the caller drops p.
func (t *connTable) hold(k connKey, p heldPacket) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.m[k]
	if c == nil || len(c.held) >= maxHeldPerConn || t.held >= maxHeld {
		return false
	}
	c.held = append(c.held, p)
	t.held++
	return true
}

// takeHeld returns the packets held for k, in arrival order, and forgets
// them.
func (t *connTable) takeHeld(k connKey) []heldPacket {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.m[k]
	if c == nil {
		return nil
	}
	ps := c.held
	c.held = nil
	t.held -= len(ps)
	return ps
}

// complete records that the server conn c accepted the client's proof
// from peer. Under the table's lock: expire reads these fields from the
// cleanup goroutine.
func (t *connTable) complete(c *conn, proof []byte, peer *identity.Identity) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c.authorized = true
	c.verified = proof
	c.peer = peer
}

// forgetAll empties the table (its workload is gone) and gives its
// handshakes back to the node's count. Held packets are not released:
// their queue is closed, and the kernel dropped them with it.
func (t *connTable) forgetAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.node.n.Add(-int64(len(t.m)))
	t.m = map[connKey]*conn{}
	t.held = 0
}

func (t *connTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// expire forgets handshakes whose time is up. It returns those in which
// this workload was the server, had accepted the SYN and never saw a valid
// client proof: the connection was half-open and never authorized, and the
// flow log must say so (its only other record is the SYN's allow). It also
// returns the packets still held for the forgotten handshakes, which must
// now be dropped.
func (t *connTable) expire(now time.Time) (unfinished []expiredHandshake, held []heldPacket) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, c := range t.m {
		if now.After(c.expires) {
			delete(t.m, k)
			t.node.n.Add(-1)
			held = append(held, c.held...)
			t.held -= len(c.held)
			// Only a server conn's fields are read here: a client conn's
			// change without the lock (see conn).
			if c.server != nil && c.verified == nil && !c.authorized && !c.noToken {
				unfinished = append(unfinished, expiredHandshake{key: k, peer: c.peer})
			}
		}
	}
	return unfinished, held
}

// expiredHandshake is a server-side handshake that timed out before the
// client proved its half.
type expiredHandshake struct {
	key  connKey
	peer *identity.Identity
}
