package policy

import (
	"hash/maphash"
	"sync"
)

// cacheShards spreads lock contention between enforcer queues.
const cacheShards = 32

// boundedCache is a sharded map that never holds more than about its
// capacity: a full shard is emptied before an insert. Crude, but bounded,
// allocation-free on hits, and correct — entries never go stale because an
// Engine (and with it its caches) is immutable; policy changes replace it.
type boundedCache[K comparable, V any] struct {
	seed     maphash.Seed
	perShard int
	shards   [cacheShards]cacheShard[K, V]
}

type cacheShard[K comparable, V any] struct {
	mu sync.RWMutex
	m  map[K]V
}

func newBoundedCache[K comparable, V any](capacity int) *boundedCache[K, V] {
	c := &boundedCache[K, V]{seed: maphash.MakeSeed(), perShard: max(1, capacity/cacheShards)}
	for i := range c.shards {
		c.shards[i].m = make(map[K]V)
	}
	return c
}

func (c *boundedCache[K, V]) shard(k K) *cacheShard[K, V] {
	return &c.shards[maphash.Comparable(c.seed, k)%cacheShards]
}

func (c *boundedCache[K, V]) get(k K) (V, bool) {
	s := c.shard(k)
	s.mu.RLock()
	v, ok := s.m[k]
	s.mu.RUnlock()
	return v, ok
}

func (c *boundedCache[K, V]) put(k K, v V) {
	s := c.shard(k)
	s.mu.Lock()
	if len(s.m) >= c.perShard {
		clear(s.m)
	}
	s.m[k] = v
	s.mu.Unlock()
}
