package tokens

import (
	"sync"
	"time"
)

// byteCache is a bounded map keyed by byte strings (token bytes, public key
// bytes) whose entries expire. Lookups take a []byte and do not allocate.
// When full it drops expired entries, then an arbitrary eighth of the rest:
// a cache miss only costs a verification, never correctness.
type byteCache[V any] struct {
	mu  sync.RWMutex
	max int
	m   map[string]cacheEntry[V]
}

type cacheEntry[V any] struct {
	v       V
	expires time.Time // zero: never
}

func newByteCache[V any](max int) *byteCache[V] {
	if max < 1 {
		max = 1
	}
	return &byteCache[V]{max: max, m: make(map[string]cacheEntry[V])}
}

func (c *byteCache[V]) get(key []byte, now time.Time) (V, bool) {
	c.mu.RLock()
	e, ok := c.m[string(key)]
	c.mu.RUnlock()
	if !ok || (!e.expires.IsZero() && now.After(e.expires)) {
		var zero V
		return zero, false
	}
	return e.v, true
}

func (c *byteCache[V]) put(key []byte, v V, expires, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[string(key)]; !ok && len(c.m) >= c.max {
		c.evictLocked(now)
	}
	c.m[string(key)] = cacheEntry[V]{v: v, expires: expires}
}

func (c *byteCache[V]) evictLocked(now time.Time) {
	for k, e := range c.m {
		if !e.expires.IsZero() && now.After(e.expires) {
			delete(c.m, k)
		}
	}
	drop := len(c.m) - c.max + 1
	if drop <= 0 {
		return
	}
	if eighth := c.max / 8; drop < eighth {
		drop = eighth
	}
	for k := range c.m { // map order is random: an arbitrary victim set
		if drop == 0 {
			break
		}
		delete(c.m, k)
		drop--
	}
}

func (c *byteCache[V]) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

// replayCache remembers client nonces until the token they came with
// expires: after that the token itself is rejected, so the nonce need not be
// remembered. Nonces are grouped in buckets by expiry time so that
// forgetting is one map deletion per bucket. Memory is bounded by max
// nonces; when full, the bucket expiring first is dropped early. That only
// re-opens a replay of a SYN whose answer (the SYN-ACK) the replayer still
// cannot complete without the client node's key.
type replayCache struct {
	mu      sync.Mutex
	max     int
	width   int64 // bucket width in seconds
	n       int
	buckets map[int64]map[[NonceSize]byte]struct{}
	// lostAt is when the cache last knew nothing or forgot nonces before
	// their time: its creation (the engine's start), or the last early
	// eviction. A nonce recorded before it may be forgotten, so the
	// two-message handshake accepts only SYNs sent after it
	// (Engine.freshTimestamp): a lost register cannot admit a replay.
	lostAt time.Time
}

func newReplayCache(max int, width time.Duration, now time.Time) *replayCache {
	w := int64(width / time.Second)
	if w < 1 {
		w = 1
	}
	return &replayCache{max: max, width: w, buckets: map[int64]map[[NonceSize]byte]struct{}{}, lostAt: now}
}

// horizon returns the time before which the cache may have forgotten
// nonces it recorded (see lostAt).
func (r *replayCache) horizon() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lostAt
}

// seen reports whether nonce is remembered, without recording it.
func (r *replayCache) seen(nonce [NonceSize]byte, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	nowIdx := floorDiv(now.Unix(), r.width)
	for i, b := range r.buckets {
		if _, ok := b[nonce]; ok && i > nowIdx {
			return true
		}
	}
	return false
}

// check records nonce, to be remembered until expires, and reports whether
// it was already there.
func (r *replayCache) check(nonce [NonceSize]byte, expires, now time.Time) (replayed bool) {
	// Whole seconds: Unix() is defined for every time, UnixNano() is not.
	idx := floorDiv(expires.Unix(), r.width) + 1 // the bucket ends at idx*width > expires
	r.mu.Lock()
	defer r.mu.Unlock()
	nowIdx := floorDiv(now.Unix(), r.width)
	for i, b := range r.buckets {
		if i <= nowIdx { // every nonce in it expired
			r.n -= len(b)
			delete(r.buckets, i)
			continue
		}
		if _, ok := b[nonce]; ok {
			return true
		}
	}
	for r.n >= r.max && len(r.buckets) > 0 {
		oldest := int64(-1)
		for i := range r.buckets {
			if oldest == -1 || i < oldest {
				oldest = i
			}
		}
		r.n -= len(r.buckets[oldest])
		delete(r.buckets, oldest)
		if now.After(r.lostAt) {
			r.lostAt = now
		}
	}
	b := r.buckets[idx]
	if b == nil {
		b = make(map[[NonceSize]byte]struct{})
		r.buckets[idx] = b
	}
	b[nonce] = struct{}{}
	r.n++
	return false
}

func (r *replayCache) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}
